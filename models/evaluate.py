"""Verification accuracy on a labelled photo set, and operating points from it.

Scores are cosine similarities of unit embeddings; a pair is accepted as "same person" when its
score is at or above the threshold.
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from models.engine import Embedding, FaceEngine
from models.errors import FaceEngineError, ImageError
from models.images import load_image
from models.manifest import Calibration, OperatingPoint

logger = logging.getLogger(__name__)

CALIBRATION_FMRS = (1e-3, 1e-4, 1e-5)
Pair = tuple[str, str, bool]
Scores = npt.NDArray[np.float64]


def read_identities(path: Path) -> dict[str, str]:
    """`file,identity` rows into {file: identity}."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file", "identity"} <= set(rows[0]):
        raise ImageError(f"{path}: expected columns file,identity", code="bad_labels")
    return {row["file"]: row["identity"] for row in rows}


def pairs_from_identities(identities: Mapping[str, str]) -> list[Pair]:
    """Every unordered pair of labelled photos: same identity is genuine, else impostor."""
    files = sorted(identities)
    return [(a, b, identities[a] == identities[b]) for a, b in itertools.combinations(files, 2)]


def read_pairs(path: Path) -> list[Pair]:
    """`file_x,file_y,Decision` rows (Decision Yes or No)."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file_x", "file_y", "Decision"} <= set(rows[0]):
        raise ImageError(f"{path}: expected columns file_x,file_y,Decision", code="bad_labels")
    pairs = []
    for row in rows:
        decision = row["Decision"].strip().lower()
        if decision not in ("yes", "no"):
            raise ImageError(
                f"{path}: Decision must be Yes or No, not {row['Decision']!r}", code="bad_labels"
            )
        pairs.append((row["file_x"], row["file_y"], decision == "yes"))
    return pairs


@dataclass
class EmbeddedSet:
    embeddings: dict[str, Embedding] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # file -> reason


def embed_files(engine: FaceEngine, folder: Path, files: Iterable[str]) -> EmbeddedSet:
    """The largest face of each photo; photos without a face, or unreadable, are failures."""
    result = EmbeddedSet()
    for name in sorted(set(files)):
        try:
            image = load_image(folder / name)
            faces = engine.analyse(image)
        except FaceEngineError as exc:
            result.failures[name] = exc.code
            continue
        if not faces:
            result.failures[name] = "no_face"
            continue
        result.embeddings[name] = engine.embed(image, faces[0])
    return result


@dataclass(frozen=True)
class PairScores:
    genuine: Scores
    impostor: Scores
    skipped_pairs: int


def score_pairs(embedded: EmbeddedSet, pairs: Sequence[Pair]) -> PairScores:
    genuine: list[float] = []
    impostor: list[float] = []
    skipped = 0
    for a, b, same in pairs:
        if a not in embedded.embeddings or b not in embedded.embeddings:
            skipped += 1
            continue
        score = embedded.embeddings[a].similarity(embedded.embeddings[b])
        (genuine if same else impostor).append(score)
    return PairScores(np.array(genuine), np.array(impostor), skipped)


def roc_auc(genuine: Scores, impostor: Scores) -> float:
    """Probability that a genuine pair outscores an impostor pair (ties count half)."""
    if genuine.size == 0 or impostor.size == 0:
        return math.nan
    scores = np.concatenate([genuine, impostor])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    start = 0
    while start < scores.size:
        end = start
        while end + 1 < scores.size and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    genuine_rank_sum = ranks[: genuine.size].sum()
    u = genuine_rank_sum - genuine.size * (genuine.size + 1) / 2.0
    return float(u / (genuine.size * impostor.size))


def threshold_at_fmr(impostor: Scores, fmr: float) -> float:
    """The lowest threshold at which at most `fmr` of the impostor pairs are accepted."""
    allowed = math.floor(fmr * impostor.size + 1e-9)
    ordered = np.sort(impostor)[::-1]
    if allowed >= ordered.size:
        return -math.inf
    return float(np.nextafter(ordered[allowed], math.inf))


def fnmr_at(genuine: Scores, threshold: float) -> float:
    return float(np.mean(genuine < threshold)) if genuine.size else math.nan


def fmr_at(impostor: Scores, threshold: float) -> float:
    return float(np.mean(impostor >= threshold)) if impostor.size else math.nan


def equal_error_rate(genuine: Scores, impostor: Scores) -> float:
    candidates = np.unique(np.concatenate([genuine, impostor]))
    best = (math.inf, math.nan)
    for threshold in candidates:
        fnmr, fmr = fnmr_at(genuine, threshold), fmr_at(impostor, threshold)
        gap = abs(fnmr - fmr)
        if gap < best[0]:
            best = (gap, (fnmr + fmr) / 2.0)
    return float(best[1])


@dataclass(frozen=True)
class Report:
    pack: str
    photos: int
    detection_failures: dict[str, str]
    genuine_pairs: int
    impostor_pairs: int
    skipped_pairs: int
    roc_auc: float
    eer: float
    fnmr_at_fmr: dict[str, float]
    largest_impostor: float
    smallest_genuine: float
    default_threshold: float | None
    at_default: dict[str, float] | None

    def as_dict(self) -> dict[str, object]:
        return {
            "pack": self.pack,
            "photos": self.photos,
            "detection_failures": self.detection_failures,
            "genuine_pairs": self.genuine_pairs,
            "impostor_pairs": self.impostor_pairs,
            "skipped_pairs": self.skipped_pairs,
            "roc_auc": self.roc_auc,
            "eer": self.eer,
            "fnmr_at_fmr": self.fnmr_at_fmr,
            "largest_impostor_similarity": self.largest_impostor,
            "smallest_genuine_similarity": self.smallest_genuine,
            "default_threshold": self.default_threshold,
            "at_default_threshold": self.at_default,
        }


def evaluate(engine: FaceEngine, folder: Path, pairs: Sequence[Pair]) -> Report:
    files = {name for a, b, _ in pairs for name in (a, b)}
    embedded = embed_files(engine, folder, files)
    scores = score_pairs(embedded, pairs)
    calibration = engine.manifest.calibration
    default = calibration.default_threshold if calibration else None
    at_default = None
    if default is not None:
        at_default = {
            "fmr": fmr_at(scores.impostor, default),
            "fnmr": fnmr_at(scores.genuine, default),
            "impostors_accepted": int(np.sum(scores.impostor >= default)),
            "genuine_rejected": int(np.sum(scores.genuine < default)),
        }
    return Report(
        pack=engine.pack,
        photos=len(files),
        detection_failures=embedded.failures,
        genuine_pairs=int(scores.genuine.size),
        impostor_pairs=int(scores.impostor.size),
        skipped_pairs=scores.skipped_pairs,
        roc_auc=roc_auc(scores.genuine, scores.impostor),
        eer=equal_error_rate(scores.genuine, scores.impostor),
        fnmr_at_fmr={
            f"{fmr:g}": fnmr_at(scores.genuine, threshold_at_fmr(scores.impostor, fmr))
            for fmr in (1e-2, 1e-3)
        },
        largest_impostor=float(scores.impostor.max(initial=-1.0)),
        smallest_genuine=float(scores.genuine.min(initial=1.0)),
        default_threshold=default,
        at_default=at_default,
    )


def calibrate(
    scores: PairScores,
    *,
    dataset: str,
    date: str,
    fmrs: Sequence[float] = CALIBRATION_FMRS,
) -> Calibration:
    """Operating points: observed where the impostor set is large enough, extrapolated beyond.

    An FMR below 1/impostor-pairs cannot be observed; there the threshold comes from a normal
    fitted to the impostor scores, and never sits below the highest impostor score seen. The
    default threshold is the lowest that accepts no impostor pair of the set.
    """
    impostor = scores.impostor
    if impostor.size < 2 or scores.genuine.size == 0:
        raise ImageError(
            "calibration needs genuine and at least two impostor pairs", code="too_few_pairs"
        )
    fitted = NormalDist(float(impostor.mean()), float(impostor.std(ddof=1)))
    highest = float(np.nextafter(impostor.max(), math.inf))
    points = []
    for fmr in fmrs:
        if fmr * impostor.size >= 1.0:
            points.append(
                OperatingPoint(fmr, _round_up(threshold_at_fmr(impostor, fmr)), "empirical")
            )
        else:
            tail = fitted.inv_cdf(1.0 - fmr)
            points.append(OperatingPoint(fmr, _round_up(max(tail, highest)), "extrapolated"))
    return Calibration(
        dataset=dataset,
        date=date,
        genuine_pairs=int(scores.genuine.size),
        impostor_pairs=int(impostor.size),
        points=tuple(points),
        default_threshold=_round_up(highest),
        default_rule="no_impostor",
    )


def _round_up(threshold: float) -> float:
    """Six decimals for the manifest, rounded up so that rounding never admits an impostor."""
    return math.ceil(threshold * 1e6) / 1e6
