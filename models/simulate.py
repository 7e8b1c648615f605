"""A gallery simulator calibrated to a pack: synthetic identities whose templates collide as the
pack's real embeddings do.

Why: random unit vectors in 128 dimensions have cosine 0 +/- 0.09, while two *different* real
faces under the default pack have cosine 0.83 +/- 0.034. A gallery of random vectors never
produces a false match, so it cannot test identification at scale. This one can.

The model
---------
Every embedding is a unit vector ``x = normalize(c + s_k * n)`` where

- ``c`` is the identity's centre: ``normalize(a_i * m + u_i)``. ``m`` is one mean direction
  shared by every face (real embeddings of different people are far from orthogonal). The
  identity's own part ``u_i`` lies in the complement of ``m`` with a decaying variance
  spectrum (variance of component k proportional to ``exp(-k / spectrum_decay)``, total 1):
  identities differ along a few dominant directions, which sets the spread of impostor scores.
  ``a_i = mean_weight * exp(mean_weight_spread * z)`` varies per identity: some faces lie
  nearer the average face than others and resemble everyone more (the "lambs" of Doddington's
  zoo). That is what gives the impostor scores their heavy upper tail.
- ``n`` is capture noise, isotropic in every dimension, of typical size ``capture_noise``;
  ``s_k = capture_noise * exp(capture_noise_spread * z)`` varies per capture (a poorly lit or
  turned face is noisier), which gives the genuine scores their long lower tail. Frames of one
  session (one visit to the camera) share ``session_share`` of their noise variance: averaging
  frames of one session removes only the rest. Photos of a labelled set are one session each.

Fitting (`fit`) matches the labelled set's impostor mean and spread, its genuine mean, spread
and low quantile, and upper-tail anchors (the share of impostor pairs at or above given
scores). `session_share` cannot be measured on still photos; it is an assumption, stated with
every figure. All draws come from a seeded generator: the same seed gives the same gallery.

Nothing here knows about shoppers, phones or the server: it makes vectors and scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
Scores = npt.NDArray[np.float64]

# Upper-tail anchor of the default pack's impostor scores, measured on 3,002 impostor pairs of
# 80 faces of 22 people (shared/notes/identification-risk.md): the share of pairs at or above
# the score. (One pair of those 3,002 also reached 0.9578; a single pair bounds that share
# only to between 8e-6 and 2e-3, so it is reported beside the fit, not fitted.)
DEFAULT_TAIL_ANCHORS: Final = ((0.9307, 4 / 3002),)
# Frames of one visit share this much of their noise variance (an assumption: not measurable
# on still photos; closer to 1 makes averaging a visit's frames worth less).
DEFAULT_SESSION_SHARE: Final = 0.75
# Identities fall into this many look-alike groups (a stand-in for families and for the
# demographic structure of real faces): two people of one group share `lookalike_share` of
# their identity part, so 1 pair in this many impostor pairs is a look-alike pair.
LOOKALIKE_GROUPS: Final = 64


@dataclass(frozen=True)
class SimulatorModel:
    """The fitted parameters (stored in a pack's manifest, under calibration.simulator)."""

    dimension: int
    mean_weight: float
    mean_weight_spread: float
    spectrum_decay: float
    capture_noise: float
    capture_noise_spread: float
    lookalike_share: float = 0.0
    session_share: float = DEFAULT_SESSION_SHARE

    def __post_init__(self) -> None:
        values = (
            self.mean_weight,
            self.mean_weight_spread,
            self.spectrum_decay,
            self.capture_noise,
            self.capture_noise_spread,
            self.lookalike_share,
            self.session_share,
        )
        if self.dimension < 2 or not all(math.isfinite(v) for v in values):
            raise ValueError("simulator parameters must be finite, dimension at least 2")
        if min(self.mean_weight, self.spectrum_decay, self.capture_noise) <= 0:
            raise ValueError("mean_weight, spectrum_decay and capture_noise must be positive")
        if min(self.mean_weight_spread, self.capture_noise_spread) < 0:
            raise ValueError("spreads must not be negative")
        if not 0 <= self.session_share < 1 or not 0 <= self.lookalike_share < 1:
            raise ValueError("session_share and lookalike_share must be in [0, 1)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> SimulatorModel:
        return cls(
            dimension=int(raw["dimension"]),
            mean_weight=float(raw["mean_weight"]),
            mean_weight_spread=float(raw["mean_weight_spread"]),
            spectrum_decay=float(raw["spectrum_decay"]),
            capture_noise=float(raw["capture_noise"]),
            capture_noise_spread=float(raw["capture_noise_spread"]),
            lookalike_share=float(raw.get("lookalike_share", 0.0)),
            session_share=float(raw.get("session_share", DEFAULT_SESSION_SHARE)),
        )


def _normalized(rows: npt.NDArray[np.float64]) -> Vectors:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    unit: Vectors = (rows / norms).astype(np.float32)
    return unit


class GallerySimulator:
    """Draws identities and their captures under a `SimulatorModel`.

    The geometry (mean direction and identity basis) is fixed by `seed`; each call takes the
    generator to draw from, so callers control which draws are shared.
    """

    def __init__(self, model: SimulatorModel, seed: int = 0) -> None:
        self.model = model
        d = model.dimension
        geometry = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(geometry.standard_normal((d, d)))
        self._mean = basis[:, 0]
        # The identity part: components along the other directions, variance decaying.
        variances = np.exp(-np.arange(d - 1) / model.spectrum_decay)
        scales = np.sqrt(variances / variances.sum())
        self._identity_basis = basis[:, 1:] * scales  # (d, d-1), columns scaled
        self._groups = geometry.standard_normal((LOOKALIKE_GROUPS, d - 1))

    def identities(self, count: int, rng: np.random.Generator) -> Vectors:
        """`count` identity centres (unit rows)."""
        model = self.model
        weights = model.mean_weight * np.exp(
            model.mean_weight_spread * rng.standard_normal((count, 1))
        )
        group = self._groups[rng.integers(0, LOOKALIKE_GROUPS, size=count)]
        share = model.lookalike_share
        own = math.sqrt(share) * group + math.sqrt(1 - share) * rng.standard_normal(
            (count, model.dimension - 1)
        )
        own = own @ self._identity_basis.T
        return _normalized(weights * self._mean + own)

    def captures(self, centres: Vectors, rng: np.random.Generator, frames: int = 1) -> Vectors:
        """One visit per centre: `frames` captures each, shape (count, frames, dimension)."""
        model = self.model
        count, d = centres.shape
        size = model.capture_noise * np.exp(
            model.capture_noise_spread * rng.standard_normal((count, 1, 1))
        )
        shared = rng.standard_normal((count, 1, d)) * math.sqrt(model.session_share)
        own = rng.standard_normal((count, frames, d)) * math.sqrt(1 - model.session_share)
        noise = (shared + own) * (size / math.sqrt(d))
        return _normalized(centres[:, None, :].astype(np.float64) + noise)

    def probes(self, centres: Vectors, rng: np.random.Generator) -> Vectors:
        """One capture per centre (a visit to the camera), shape (count, dimension)."""
        return self.captures(centres, rng, frames=1)[:, 0, :]

    @staticmethod
    def fuse(frames: Vectors) -> Vectors:
        """Templates of one shopper (or frames of one visit) as one unit vector: their mean."""
        return _normalized(frames.astype(np.float64).mean(axis=-2))


# ---------------------------------------------------------------- score distributions


def _upper_pairs(scores: npt.NDArray[np.floating[Any]]) -> Scores:
    rows, cols = np.triu_indices(scores.shape[0], 1)
    return scores[rows, cols].astype(np.float64)


def impostor_scores(
    simulator: GallerySimulator, identities: int, rng: np.random.Generator
) -> Scores:
    """Every pair of one capture each of `identities` different people (photo against photo)."""
    shots = simulator.probes(simulator.identities(identities, rng), rng)
    return _upper_pairs(shots @ shots.T)


def genuine_scores(simulator: GallerySimulator, pairs: int, rng: np.random.Generator) -> Scores:
    """One pair of captures (two visits) of each of `pairs` people."""
    centres = simulator.identities(pairs, rng)
    first, second = simulator.probes(centres, rng), simulator.probes(centres, rng)
    scores: Scores = np.einsum("ij,ij->i", first, second).astype(np.float64)
    return scores


@dataclass(frozen=True)
class ScoreSummary:
    """What the fit matches, and what the docs print side by side with the labelled set."""

    impostor_mean: float
    impostor_sd: float
    genuine_mean: float
    genuine_sd: float
    impostor_quantiles: tuple[float, ...]
    genuine_quantiles: tuple[float, ...]
    tail: tuple[float, ...]  # share of impostor scores at or above each anchor's score


IMPOSTOR_QUANTILES: Final = (0.5, 0.9, 0.99, 0.999)
GENUINE_QUANTILES: Final = (0.01, 0.05, 0.1, 0.5)


def summarize(
    impostor: Scores, genuine: Scores, anchors: Sequence[tuple[float, float]] = ()
) -> ScoreSummary:
    return ScoreSummary(
        impostor_mean=float(impostor.mean()),
        impostor_sd=float(impostor.std()),
        genuine_mean=float(genuine.mean()),
        genuine_sd=float(genuine.std()),
        impostor_quantiles=tuple(float(q) for q in np.quantile(impostor, IMPOSTOR_QUANTILES)),
        genuine_quantiles=tuple(float(q) for q in np.quantile(genuine, GENUINE_QUANTILES)),
        tail=tuple(float(np.mean(impostor >= score)) for score, _ in anchors),
    )


def labelled_scores(vectors: Vectors, identities: Sequence[str]) -> tuple[Scores, Scores]:
    """Impostor and genuine scores of every pair of a labelled set's embeddings."""
    labels = np.asarray(identities)
    rows, cols = np.triu_indices(len(labels), 1)
    scores = (vectors @ vectors.T)[rows, cols].astype(np.float64)
    same = labels[rows] == labels[cols]
    return scores[~same], scores[same]


# ---------------------------------------------------------------- fitting


@dataclass(frozen=True)
class FitTargets:
    """The labelled set's figures the simulator is fitted to."""

    impostor_mean: float
    impostor_sd: float
    genuine_mean: float
    genuine_sd: float
    genuine_low: float  # the genuine scores' 1% quantile
    anchors: tuple[tuple[float, float], ...]  # (score, share of impostors at or above it)

    @classmethod
    def of(
        cls,
        impostor: Scores,
        genuine: Scores,
        anchors: Sequence[tuple[float, float]] = DEFAULT_TAIL_ANCHORS,
    ) -> FitTargets:
        return cls(
            impostor_mean=float(impostor.mean()),
            impostor_sd=float(impostor.std()),
            genuine_mean=float(genuine.mean()),
            genuine_sd=float(genuine.std()),
            genuine_low=float(np.quantile(genuine, 0.01)),
            anchors=tuple((float(s), float(share)) for s, share in anchors),
        )


# How far each fitted figure may sit from its target before it costs as much as the others:
# scores to a few thousandths, tail shares to a factor of about 1.25.
_TOLERANCE: Final = {"mean": 0.002, "sd": 0.001, "low": 0.003, "tail_log10": 0.1}
_FIT_IMPOSTOR_IDS: Final = 3_000
_FIT_GENUINE_PAIRS: Final = 20_000


def _model_from(vector: Sequence[float], dimension: int, session_share: float) -> SimulatorModel:
    log_a, spread, log_decay, log_noise, noise_spread, lookalike = vector
    return SimulatorModel(
        dimension=dimension,
        mean_weight=math.exp(log_a),
        mean_weight_spread=float(abs(spread)),
        spectrum_decay=math.exp(log_decay),
        capture_noise=math.exp(log_noise),
        capture_noise_spread=float(abs(noise_spread)),
        lookalike_share=1 / (1 + math.exp(-lookalike)),
        session_share=session_share,
    )


def fit_loss(model: SimulatorModel, targets: FitTargets, seed: int = 1) -> float:
    """Squared misfit in tolerance units; the same draws for every model (common random
    numbers), so that the loss is smooth enough to minimise."""
    simulator = GallerySimulator(model, seed=seed)
    impostor = impostor_scores(simulator, _FIT_IMPOSTOR_IDS, np.random.default_rng(seed))
    genuine = genuine_scores(simulator, _FIT_GENUINE_PAIRS, np.random.default_rng(seed + 1))
    misfit = [
        (impostor.mean() - targets.impostor_mean) / _TOLERANCE["mean"],
        (impostor.std() - targets.impostor_sd) / _TOLERANCE["sd"],
        (genuine.mean() - targets.genuine_mean) / _TOLERANCE["mean"],
        (genuine.std() - targets.genuine_sd) / _TOLERANCE["sd"],
        (np.quantile(genuine, 0.01) - targets.genuine_low) / _TOLERANCE["low"],
    ]
    floor = 1 / impostor.size
    for score, share in targets.anchors:
        seen = max(float(np.mean(impostor >= score)), floor)
        misfit.append((math.log10(seen) - math.log10(share)) / _TOLERANCE["tail_log10"])
    return float(np.sum(np.square(misfit)))


def fit(
    targets: FitTargets,
    dimension: int,
    *,
    session_share: float = DEFAULT_SESSION_SHARE,
    seed: int = 1,
    start_from: SimulatorModel | None = None,
    evaluations: int = 600,
) -> SimulatorModel:
    """The model whose scores best match `targets` (Nelder-Mead from `start_from`, or from a
    moment-matched start)."""
    from scipy.optimize import minimize  # type: ignore[import-untyped]

    # Start: noise from the genuine mean (cosine of two noisy copies ~ 1 / (1 + s^2)), the mean
    # weight from the impostor mean; a spectrum and look-alike share that gave the default
    # pack's spread and tail.
    noise = math.sqrt(max(1 / targets.genuine_mean - 1, 1e-4))
    shared = max(targets.impostor_mean / targets.genuine_mean, 0.05)
    weight = math.sqrt(shared / max(1 - shared, 1e-3))
    start = [math.log(weight), 0.02, math.log(20.0), math.log(noise), 0.2, 0.4]
    if start_from is not None:
        start = [
            math.log(start_from.mean_weight),
            start_from.mean_weight_spread,
            math.log(start_from.spectrum_decay),
            math.log(start_from.capture_noise),
            start_from.capture_noise_spread,
            math.log(start_from.lookalike_share / (1 - start_from.lookalike_share)),
        ]

    def loss(vector: npt.NDArray[np.float64]) -> float:
        try:
            model = _model_from(list(vector), dimension, session_share)
        except ValueError:
            return math.inf
        return fit_loss(model, targets, seed)

    result = minimize(
        loss,
        np.asarray(start),
        method="Nelder-Mead",
        options={"maxfev": evaluations, "xatol": 1e-3, "fatol": 1e-2},
    )
    return _model_from(list(result.x), dimension, session_share)


# ---------------------------------------------------------------- curves for the risk rule

CURVE_START: Final = 0.80
CURVE_STEP: Final = 0.0005
CURVE_POINTS: Final = 401  # 0.80 ... 1.00
_BLOCK: Final = 2_048


def _survival(counts: npt.NDArray[np.int64], pairs: int) -> tuple[float, ...]:
    """Counts per bin (bin 0: below the grid) into the share at or above each threshold."""
    at_or_above = np.cumsum(counts[::-1])[::-1][1:]
    return tuple(float(v) for v in at_or_above / pairs)


def _bin(scores: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """Bin 0 below the grid's first threshold, bin i+1 from threshold i up to the next."""
    index = np.floor((scores.astype(np.float64) - CURVE_START) / CURVE_STEP).astype(np.int64)
    return np.clip(index, -1, CURVE_POINTS - 1).ravel() + 1


def _pair_counts(rows: Vectors, columns: Vectors, *, upper_only: bool) -> tuple[Any, int]:
    """Binned scores of every (row, column) pair of different people (row i and column i are
    the same person; with `upper_only`, each unordered pair once)."""
    counts = np.zeros(CURVE_POINTS + 1, dtype=np.int64)
    pairs = 0
    for first in range(0, rows.shape[0], _BLOCK):
        block = rows[first : first + _BLOCK] @ columns.T
        own = np.arange(block.shape[0])
        if upper_only:
            keep = np.arange(columns.shape[0])[None, :] > (own + first)[:, None]
            scores = block[keep]
        else:
            block[own, own + first] = -np.inf  # never the same person
            scores = block[np.isfinite(block)]
        counts += np.bincount(_bin(scores), minlength=CURVE_POINTS + 1)
        pairs += scores.size
    return counts, pairs


@dataclass(frozen=True)
class Curves:
    """`models.manifest.ScoreCurves` fields, as drawn; `as_dict` is what the manifest keeps."""

    impostor_survival: tuple[float, ...]
    genuine_below: tuple[float, ...]
    duplicate_survival: tuple[float, ...]
    resolution: float
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": CURVE_START,
            "step": CURVE_STEP,
            "impostor_survival": [float(f"{v:.4g}") for v in self.impostor_survival],
            "genuine_below": [float(f"{v:.4g}") for v in self.genuine_below],
            "duplicate_survival": [float(f"{v:.4g}") for v in self.duplicate_survival],
            "resolution": float(f"{self.resolution:.4g}"),
            "source": self.source,
        }


def draw_curves(
    simulator: GallerySimulator,
    *,
    identities: int = 24_000,
    enroll_frames: int = 3,
    seed: int = 11,
) -> Curves:
    """The score curves of a pack from its simulator: probes against enrolled (fused) templates
    of `identities` people, every pair of different people (about identities^2 pairs)."""
    rng = np.random.default_rng(seed)
    centres = simulator.identities(identities, rng)
    enrolled = simulator.fuse(simulator.captures(centres, rng, frames=enroll_frames))
    probes = simulator.probes(centres, rng)
    impostor, impostor_pairs = _pair_counts(probes, enrolled, upper_only=False)
    duplicate, duplicate_pairs = _pair_counts(enrolled, enrolled, upper_only=True)
    genuine = np.einsum("ij,ij->i", probes, enrolled)
    below = np.bincount(_bin(genuine), minlength=CURVE_POINTS + 1)
    genuine_below = np.cumsum(below)[:-1] / genuine.size
    return Curves(
        impostor_survival=_survival(impostor, impostor_pairs),
        genuine_below=tuple(float(v) for v in genuine_below),
        duplicate_survival=_survival(duplicate, duplicate_pairs),
        resolution=3 / min(impostor_pairs, duplicate_pairs),
        source=(
            f"gallery simulator: {identities} identities, {enroll_frames} enrolment frames, "
            f"{impostor_pairs} impostor and {identities} genuine probe pairs, seed {seed}"
        ),
    )
