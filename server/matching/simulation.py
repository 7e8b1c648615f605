"""Identification risk at a chain's scale, measured: the pack's gallery simulator run through the
server's own decision code (`risk.ladder`, `index.fuse`, `GalleryIndex`,
`decision.search_and_decide`), beside the rates the risk rule computes.

A simulated gallery is N shoppers, each enrolled from one visit's frames (fused, as the server
keeps them), with a phone number drawn at random from `phone_space` numbers (its last four
digits the step-up's). Trials:

- **honest**: an enrolled shopper at the till, a new capture of their face; they type the
  digits asked, mistyped at `mistype_rate` (one digit changed), for at most `tries` entries:
  completion (approved on their own wallet) and wrong wallet (approved on another's);
- **stranger**: a person never enrolled, their own face, random digits of the asked format:
  success is any approval;
- **targeted**: a person never enrolled who knows a victim's phone number tries their face
  on the victim's record `failures_per_day` times (a new capture each): success is any
  approval on the victim, per victim and day;
- **duplicate**: a new person enrolls: a false duplicate is their face matching an enrolled
  shopper at the duplicate threshold (`risk.duplicate_threshold`; none in a large gallery).

Rates too small for the trials to show are given as 0 with the 95% upper bound (3 / trials)
beside the computed rate. Everything is seeded: the same arguments give the same figures.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.manifest import Calibration
from models.simulate import GallerySimulator, SimulatorModel, genuine_scores, impostor_scores
from server.matching.decision import search_and_decide
from server.matching.index import GalleryIndex, fuse_by_owner
from server.matching.risk import (
    LAST4_SPACE,
    RiskTargets,
    Rung,
    RungRisk,
    duplicate_threshold,
    false_duplicate_chance,
    ladder,
    per_rung,
)

_CHUNK = 100_000
ENROL_FRAMES = 3


@dataclass(frozen=True)
class Trials:
    honest: int = 20_000
    stranger: int = 100_000
    targeted: int = 20_000
    duplicate: int = 2_000


class SimulatedGallery:
    """N simulated shoppers in a real `GalleryIndex`, with their phone numbers."""

    def __init__(
        self,
        simulator: GallerySimulator,
        size: int,
        phone_space: int,
        rng: np.random.Generator,
    ) -> None:
        self.simulator = simulator
        self.size = size
        self.phone_space = phone_space
        self.index = GalleryIndex(simulator.model.dimension)
        centres, fused = [], []
        for first in range(0, size, _CHUNK):
            count = min(_CHUNK, size - first)
            block = simulator.identities(count, rng)
            centres.append(block)
            frames = simulator.captures(block, rng, frames=ENROL_FRAMES)
            fused.append(simulator.fuse(frames))
        self.centres = np.concatenate(centres) if centres else np.empty((0, 0), np.float32)
        rows = np.concatenate(fused) if fused else np.empty((0, simulator.model.dimension))
        self.ids = [f"s{i:07d}" for i in range(size)]
        if size:
            self.index.bulk_load(self.ids, rows, np.arange(size))
        self.phones = _unique_numbers(size, phone_space, rng)
        self._by_phone = {int(p): i for i, p in enumerate(self.phones)}
        self._by_last4: dict[int, list[int]] = defaultdict(list)
        for i, phone in enumerate(self.phones):
            self._by_last4[int(phone) % LAST4_SPACE].append(i)

    def narrowed(self, rung: Rung, typed: int) -> set[str] | None:
        """The shoppers a step-up answer names (None: the open search)."""
        if rung is Rung.FACE:
            return None
        if rung is Rung.PHONE_LAST4:
            return {self.ids[i] for i in self._by_last4.get(typed % LAST4_SPACE, ())}
        found = self._by_phone.get(typed)
        return set() if found is None else {self.ids[found]}


def _unique_numbers(count: int, space: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    if count > space:
        raise ValueError("more shoppers than phone numbers")
    numbers = np.unique(rng.integers(0, space, size=count + count // 100 + 16))
    while numbers.size < count:
        more = rng.integers(0, space, size=count - numbers.size + 16)
        numbers = np.unique(np.concatenate([numbers, more]))
    return rng.permutation(numbers)[:count]


def _mistyped(phone: int, rung: Rung, rng: np.random.Generator, space: int) -> int:
    """The number with one of its typed digits changed (of the last four, or of them all)."""
    digits = 4 if rung is Rung.PHONE_LAST4 else max(4, len(str(space - 1)))
    position = 10 ** int(rng.integers(0, digits))
    old = (phone // position) % 10
    new = (old + int(rng.integers(1, 10))) % 10
    return int((phone + (new - old) * position) % space)


def _rate(hits: int, trials: int, computed: float) -> dict[str, Any]:
    measured = hits / trials if trials else 0.0
    return {
        "measured": measured,
        "hits": hits,
        "trials": trials,
        "upper_95": (3 / trials if hits == 0 else None) if trials else None,
        "computed": computed,
    }


class Runner:
    """Trials at one gallery size for one pack's calibration."""

    def __init__(
        self,
        calibration: Calibration,
        targets: RiskTargets,
        *,
        base_threshold: float,
        seed: int = 7,
    ) -> None:
        if calibration.simulator is None or calibration.curves is None:
            raise ValueError("this pack has no gallery simulator: run `facepay models calibrate`")
        self.curves = calibration.curves
        self.model = SimulatorModel.from_mapping(calibration.simulator)
        self.targets = targets
        self.base_threshold = base_threshold
        self.seed = seed
        self.simulator = GallerySimulator(self.model, seed=seed)

    def fit_summary(self) -> dict[str, float]:
        rng = np.random.default_rng(self.seed + 1)
        impostor = impostor_scores(self.simulator, 2_000, rng)
        genuine = genuine_scores(self.simulator, 20_000, rng)
        return {
            "impostor_mean": float(impostor.mean()),
            "impostor_sd": float(impostor.std()),
            "genuine_mean": float(genuine.mean()),
            "genuine_sd": float(genuine.std()),
            "impostor_at_or_above_0.9307": float(np.mean(impostor >= 0.9307)),
        }

    def run(self, size: int, trials: Trials = Trials()) -> dict[str, Any]:
        rng = np.random.default_rng(self.seed)
        gallery = SimulatedGallery(self.simulator, size, self.targets.phone_space, rng)
        chosen = ladder(self.curves, size, self.targets, base_threshold=self.base_threshold)
        options = per_rung(self.curves, size, self.targets, base_threshold=self.base_threshold)
        rungs: dict[str, Any] = {
            rung.value: self._rung_figures(gallery, option, trials, rng)
            for rung, option in options.items()
        }
        figures = rungs[chosen.rung.value]
        duplicate = self._false_duplicates(gallery, trials.duplicate, rng)
        return {
            "gallery": size,
            "rung": chosen.rung.value,
            "threshold": chosen.threshold,
            "step_up_share": 0.0 if chosen.rung is Rung.FACE else 1.0,
            "asks": {chosen.rung.value: 1.0},
            "honest_wrong_wallet_per_payment": figures["honest_wrong_wallet_per_payment"],
            "stranger_success_per_attempt": figures["stranger_success_per_attempt"],
            "targeted_success_per_day": figures["targeted_success_per_day"],
            "honest_completion": figures["honest_completion"],
            "false_duplicate_per_enrollment": duplicate,
            "per_rung": rungs,
        }

    # ------------------------------------------------------------ trials

    def _rung_figures(
        self, gallery: SimulatedGallery, option: RungRisk, trials: Trials, rng: np.random.Generator
    ) -> dict[str, Any]:
        risk = option.risk
        if option.threshold is None or risk is None or gallery.size == 0:
            return {"available": False, "threshold": None}
        # An open search of a large gallery costs a full scan a trial: fewer trials there.
        scale = 1.0 if option.rung is not Rung.FACE else min(1.0, 20_000 / max(gallery.size, 1))
        honest = max(1, int(trials.honest * scale))
        stranger = max(1, int(trials.stranger * scale))
        completed, wrong = self._honest(gallery, option, honest, rng)
        return {
            "available": True,
            "threshold": option.threshold,
            "honest_completion": _rate(completed, honest, risk.completion),
            "honest_wrong_wallet_per_payment": _rate(wrong, honest, risk.wrong_wallet),
            "stranger_success_per_attempt": _rate(
                self._strangers(gallery, option, stranger, rng), stranger, risk.stranger
            ),
            "targeted_success_per_day": _rate(
                self._targeted(gallery, option, trials.targeted, rng),
                trials.targeted,
                risk.targeted,
            ),
        }

    def _decide(
        self, gallery: SimulatedGallery, option: RungRisk, probe: Any, typed: int
    ) -> str | None:
        decision = search_and_decide(
            gallery.index,
            probe,
            option,
            margin=self.targets.margin,
            restrict_to=gallery.narrowed(option.rung, typed),
        )
        return decision.shopper_id if decision.outcome == "match" else None

    def _honest(
        self, gallery: SimulatedGallery, option: RungRisk, count: int, rng: np.random.Generator
    ) -> tuple[int, int]:
        who = rng.integers(0, gallery.size, size=count)
        probes = self.simulator.probes(gallery.centres[who], rng)
        completed = wrong = 0
        tries = 1 if option.rung is Rung.FACE else self.targets.tries
        for probe, shopper in zip(probes, who, strict=True):
            phone = int(gallery.phones[shopper])
            for _ in range(tries):
                typed = phone
                if rng.random() < self.targets.mistype_rate:
                    typed = _mistyped(phone, option.rung, rng, gallery.phone_space)
                found = self._decide(gallery, option, probe, typed)
                if found is not None:
                    completed += found == gallery.ids[shopper]
                    wrong += found != gallery.ids[shopper]
                    break
                if typed == phone:  # the face itself failed: typing again will not help
                    break
        return completed, wrong

    def _strangers(
        self, gallery: SimulatedGallery, option: RungRisk, count: int, rng: np.random.Generator
    ) -> int:
        probes = self.simulator.probes(self.simulator.identities(count, rng), rng)
        typed = rng.integers(0, gallery.phone_space, size=count)
        return sum(
            self._decide(gallery, option, probe, int(number)) is not None
            for probe, number in zip(probes, typed, strict=True)
        )

    def _targeted(
        self, gallery: SimulatedGallery, option: RungRisk, count: int, rng: np.random.Generator
    ) -> int:
        attempts = self.targets.failures_per_day
        attackers = self.simulator.identities(count, rng)
        victims = rng.integers(0, gallery.size, size=count)
        successes = 0
        for attacker, victim in zip(attackers, victims, strict=True):
            probes = self.simulator.probes(np.repeat(attacker[None, :], attempts, axis=0), rng)
            phone = int(gallery.phones[victim])
            successes += any(
                self._decide(gallery, option, probe, phone) == gallery.ids[victim]
                for probe in probes
            )
        return successes

    def _false_duplicates(
        self, gallery: SimulatedGallery, count: int, rng: np.random.Generator
    ) -> dict[str, Any]:
        threshold = duplicate_threshold(self.curves, gallery.size, self.targets)
        computed = (
            0.0
            if threshold is None
            else false_duplicate_chance(self.curves, threshold, gallery.size)
        )
        if threshold is None or gallery.size == 0:
            return {**_rate(0, count, computed), "threshold": None}
        frames = self.simulator.captures(self.simulator.identities(count, rng), rng, ENROL_FRAMES)
        fused, _ = fuse_by_owner(
            frames.reshape(-1, frames.shape[-1]), np.repeat(np.arange(count), ENROL_FRAMES)
        )
        hits = 0
        for row in fused:
            found = gallery.index.search(row, k=1, exhaustive_below=threshold)
            hits += bool(found) and found[0].score >= threshold
        return {**_rate(hits, count, computed), "threshold": threshold}


def risk_report(
    calibration: Calibration,
    targets: RiskTargets,
    sizes: list[int],
    *,
    base_threshold: float,
    trials: Trials = Trials(),
    seed: int = 7,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """`facepay server risk`'s JSON: the simulator's fit and the figures per gallery size."""
    runner = Runner(calibration, targets, base_threshold=base_threshold, seed=seed)
    galleries = []
    for size in sizes:
        if progress is not None:
            progress(f"simulating {size} shoppers")
        galleries.append(runner.run(size, trials))
    report: dict[str, Any] = {
        "simulator": runner.fit_summary(),
        "targets": {
            "wrong_wallet": targets.wrong_wallet,
            "stranger": targets.stranger,
            "targeted": targets.targeted,
            "false_duplicate": targets.false_duplicate,
            "min_completion": targets.min_completion,
        },
        "assumptions": {
            "mistype_rate": targets.mistype_rate,
            "failures_per_day": targets.failures_per_day,
            "tries": targets.tries,
            "phone_space": targets.phone_space,
            "session_share": runner.model.session_share,
            "enrolment_frames": ENROL_FRAMES,
        },
        "seed": seed,
        "galleries": galleries,
    }
    if len(galleries) == 1:
        report.update(galleries[0])
    return report
