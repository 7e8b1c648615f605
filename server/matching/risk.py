"""The risk rule: for every way a face is matched, what could go wrong and how often, from the
pack's calibrated score curves; and the step-up ladder chosen from it.

Pure: numbers in, numbers out. The payment, deletion and enrollment routes call `ladder` and
`duplicate_threshold`; `facepay server risk` runs the gallery simulator through the same
functions. No score of a real probe ever comes here: only the gallery's size and settings.

The rungs (`Rung`), weakest first:

- ``face``: the face alone, searched against all N shoppers;
- ``phone_last4``: the face among the shoppers whose phone ends in the four digits typed
  (about N / 10,000 of them, plus the shopper's own record);
- ``phone``: the face against the one shopper with that phone number (1:1).

For a rung at threshold t, with f(t) the chance that a probe scores at or above t against one
other person's enrolled template (`ScoreCurves.impostor_survival`), and G(t) the chance that a
shopper's own probe scores below t (`genuine_below`):

- **stranger** (a person never enrolled, their own live face, random digits of the asked
  format), per attempt: candidates x f(t), with candidates N (face), N / 10^4 (last four
  digits) or N / `phone_space` (a full number; at most 1);
- **honest wrong wallet**, per payment: another shopper wins only when their score is at or
  above t and ahead of the shopper's own by the margin (`decide`'s rules), chance
  w(t) = sum over scores s >= t of P(impostor = s) x G(s - margin) per other candidate. With
  the digits mistyped (`mistype_rate`) the shopper's own record is not among the candidates
  and any other above t wins: f(t) per candidate;
- **targeted**, per victim per day: someone who knows the victim's phone number tries their
  own face on the victim's record, p = f(t) per attempt, for `failures_per_day` failed
  attempts: 1 - (1 - p)^failures_per_day. (Independent attempts bound a single attacker's
  correlated ones from above.)
- **honest completion**: the shopper's own face passes, (1 - G(t)), and, where digits are
  asked, typed right within `tries` attempts, (1 - mistype_rate^tries).

Each rung's threshold is the lowest on the curves' grid at which stranger, wrong wallet and
targeted risks are all within their targets, and never below the pack's base threshold (the
narrowing never lowers the bar for the face). A rate below the curves' resolution is unknown
and counted as the resolution: a rung that would need a smaller one is not available. The
ladder takes the weakest available rung whose honest completion reaches `min_completion` (at
least `minimum`, e.g. ``phone_last4`` for a large amount); if none does, the strongest rung.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from models.manifest import ScoreCurves

__all__ = [
    "Risk",
    "RiskTargets",
    "Rung",
    "RungRisk",
    "duplicate_threshold",
    "false_duplicate_chance",
    "ladder",
    "rung_risk",
]

LAST4_SPACE: Final = 10_000


class Rung(StrEnum):
    FACE = "face"
    PHONE_LAST4 = "phone_last4"
    PHONE = "phone"


RUNGS: Final = (Rung.FACE, Rung.PHONE_LAST4, Rung.PHONE)


@dataclass(frozen=True)
class RiskTargets:
    """What the operator accepts (settings), and the facts about people the rule assumes."""

    wrong_wallet: float = 1e-5  # per honest payment
    stranger: float = 1e-4  # per attempt
    targeted: float = 1e-2  # per victim per day
    false_duplicate: float = 1e-3  # per enrollment
    min_completion: float = 0.98  # honest payments approved
    margin: float = 0.05  # the best must lead the next shopper by this much
    failures_per_day: int = 10  # failed step-ups a shopper's record allows a day
    tries: int = 1  # digit entries a challenge allows (FACEPAY_STEP_UP_TRIES)
    mistype_rate: float = 0.01  # an honest shopper mistypes the digits asked
    phone_space: int = 1_000_000_000  # phone numbers a random full number is drawn from


@dataclass(frozen=True)
class Risk:
    stranger: float
    wrong_wallet: float
    targeted: float
    completion: float


@dataclass(frozen=True)
class RungRisk:
    """A rung at a gallery size: its threshold (None: no threshold meets the targets) and the
    risks there."""

    rung: Rung
    threshold: float | None
    risk: Risk | None

    @property
    def available(self) -> bool:
        return self.threshold is not None


class _Curves:
    """The pack's curves with the rates the rule needs, per grid point."""

    def __init__(self, curves: ScoreCurves, margin: float) -> None:
        # Held so that the object stays alive while cached: the cache's key is its id, which a
        # new object could otherwise reuse.
        self.curves = curves
        self.thresholds = curves.thresholds
        floor = curves.resolution
        self.impostor = tuple(max(v, floor) for v in curves.impostor_survival)
        self.genuine_below = curves.genuine_below
        self.duplicate = tuple(max(v, floor) for v in curves.duplicate_survival)
        self.resolution = floor
        shift = round(margin / curves.step)
        # w(t): an impostor at s >= t with the genuine below s - margin. Impostor mass per
        # bin from the survival's differences (unfloored), the genuine CDF `shift` bins down.
        raw = curves.impostor_survival
        count = len(raw)
        mass = [raw[i] - (raw[i + 1] if i + 1 < count else 0.0) for i in range(count)]
        beaten = [
            mass[i] * (self.genuine_below[i - shift] if i >= shift else 0.0) for i in range(count)
        ]
        total, outranks = 0.0, [0.0] * count
        for i in range(count - 1, -1, -1):
            total += beaten[i]
            outranks[i] = max(total, floor * (self.genuine_below[i - shift] if i >= shift else 0))
        self.outranks = tuple(outranks)


_CACHE: dict[tuple[int, float], _Curves] = {}


def _prepared(curves: ScoreCurves, margin: float) -> _Curves:
    key = (id(curves), margin)
    found = _CACHE.get(key)
    if found is None or len(_CACHE) > 64:
        _CACHE.clear()
        found = _CACHE[key] = _Curves(curves, margin)
    return found


def _candidates(rung: Rung, gallery_size: int, targets: RiskTargets) -> float:
    """Other shoppers a probe is compared with at this rung (random digits for a stranger)."""
    if rung is Rung.FACE:
        return float(gallery_size)
    if rung is Rung.PHONE_LAST4:
        return gallery_size / LAST4_SPACE
    return min(1.0, gallery_size / targets.phone_space)


def _risk_at(
    prepared: _Curves, index: int, rung: Rung, gallery_size: int, targets: RiskTargets
) -> Risk:
    f = prepared.impostor[index]
    others = _candidates(rung, gallery_size, targets)
    stranger = min(1.0, others * f)
    if rung is Rung.FACE:
        wrong = min(1.0, max(gallery_size - 1, 0) * prepared.outranks[index])
        digits_ok = 1.0
    else:
        honest_others = others if rung is Rung.PHONE_LAST4 else 0.0
        mistyped = targets.mistype_rate * others * f
        wrong = min(1.0, (1 - targets.mistype_rate) * honest_others * prepared.outranks[index])
        wrong = min(1.0, wrong + mistyped)
        digits_ok = 1 - targets.mistype_rate**targets.tries
    targeted = _any_of(f, targets.failures_per_day)
    completion = (1 - prepared.genuine_below[index]) * digits_ok
    return Risk(stranger, wrong, targeted, completion)


def _any_of(rate: float, tries: int) -> float:
    """The chance that at least one of `tries` independent events of this rate happens."""
    return 1 - (1 - min(1.0, rate)) ** max(tries, 0)


def _within(risk: Risk, targets: RiskTargets) -> bool:
    return (
        risk.stranger <= targets.stranger
        and risk.wrong_wallet <= targets.wrong_wallet
        and risk.targeted <= targets.targeted
    )


def rung_risk(
    curves: ScoreCurves,
    rung: Rung,
    gallery_size: int,
    targets: RiskTargets,
    *,
    base_threshold: float,
) -> RungRisk:
    """The lowest threshold (at or above `base_threshold`) meeting the targets at this rung."""
    prepared = _prepared(curves, targets.margin)
    for index, threshold in enumerate(prepared.thresholds):
        if threshold < base_threshold - 1e-12:
            continue
        risk = _risk_at(prepared, index, rung, gallery_size, targets)
        if _within(risk, targets):
            return RungRisk(rung, round(threshold, 6), risk)
    return RungRisk(rung, None, None)


def ladder(
    curves: ScoreCurves,
    gallery_size: int,
    targets: RiskTargets,
    *,
    base_threshold: float,
    minimum: Rung = Rung.FACE,
) -> RungRisk:
    """The rung to ask for: the weakest available one, at least `minimum`, whose honest
    completion reaches the target; else the strongest available; else the strongest rung with
    no threshold (which declines every face: fail closed)."""
    considered = [
        rung_risk(curves, rung, gallery_size, targets, base_threshold=base_threshold)
        for rung in RUNGS[RUNGS.index(minimum) :]
    ]
    for option in considered:
        if option.risk is not None and option.risk.completion >= targets.min_completion:
            return option
    available = [option for option in considered if option.available]
    return available[-1] if available else considered[-1]


def false_duplicate_chance(curves: ScoreCurves, threshold: float, gallery_size: int) -> float:
    """The chance a new shopper's enrolled face matches any of `gallery_size` others."""
    prepared = _prepared(curves, 0.0)
    index = min(
        range(len(prepared.thresholds)), key=lambda i: abs(prepared.thresholds[i] - threshold)
    )
    return _any_of(prepared.duplicate[index], gallery_size)


def duplicate_threshold(
    curves: ScoreCurves, gallery_size: int, targets: RiskTargets
) -> float | None:
    """The lowest threshold at which a face duplicate may be declared at this gallery size
    (false-duplicate chance within target); None when the curves cannot show one."""
    prepared = _prepared(curves, 0.0)
    for threshold, rate in zip(prepared.thresholds, prepared.duplicate, strict=True):
        if _any_of(rate, gallery_size) <= targets.false_duplicate:
            if rate <= prepared.resolution and gallery_size * rate > targets.false_duplicate:
                return None
            return round(threshold, 6)
    return None


def per_rung(
    curves: ScoreCurves, gallery_size: int, targets: RiskTargets, *, base_threshold: float
) -> dict[Rung, RungRisk]:
    """Every rung at this gallery size (for `facepay server risk` and the docs)."""
    return {
        rung: rung_risk(curves, rung, gallery_size, targets, base_threshold=base_threshold)
        for rung in RUNGS
    }
