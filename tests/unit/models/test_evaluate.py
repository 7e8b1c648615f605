"""The accuracy metrics, on scores whose answers are known by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from models import evaluate
from models.errors import ImageError


def test_auc_perfect_and_reversed_and_ties() -> None:
    genuine, impostor = np.array([0.9, 0.8]), np.array([0.1, 0.2, 0.3])
    assert evaluate.roc_auc(genuine, impostor) == 1.0
    assert evaluate.roc_auc(impostor, genuine) == 0.0
    assert evaluate.roc_auc(np.array([0.5]), np.array([0.5])) == 0.5
    # One of six genuine/impostor orderings is wrong.
    assert evaluate.roc_auc(np.array([0.9, 0.25]), np.array([0.1, 0.2, 0.3])) == pytest.approx(
        5 / 6
    )


def test_threshold_at_fmr_accepts_at_most_that_share() -> None:
    impostor = np.linspace(0.0, 0.999, 1000)
    threshold = evaluate.threshold_at_fmr(impostor, 1e-2)
    assert np.sum(impostor >= threshold) == 10
    zero = evaluate.threshold_at_fmr(impostor, 1e-4)
    assert np.sum(impostor >= zero) == 0 and zero > impostor.max()


def test_eer_and_fnmr() -> None:
    genuine = np.array([0.2, 0.6, 0.7, 0.8])
    impostor = np.array([0.1, 0.3, 0.4, 0.65])
    assert evaluate.fnmr_at(genuine, 0.65) == 0.5
    assert evaluate.fmr_at(impostor, 0.65) == 0.25
    assert evaluate.equal_error_rate(genuine, impostor) == pytest.approx(0.25)


def test_pairs_from_identities_counts() -> None:
    identities = {"a": "1", "b": "1", "c": "2", "d": "2", "e": "2"}
    pairs = evaluate.pairs_from_identities(identities)
    assert len(pairs) == 10
    assert sum(same for _, _, same in pairs) == 1 + 3


def test_calibration_is_empirical_then_extrapolated() -> None:
    rng = np.random.default_rng(7)
    scores = evaluate.PairScores(
        genuine=rng.normal(0.8, 0.05, 200), impostor=rng.normal(0.2, 0.1, 2000), skipped_pairs=0
    )
    calibration = evaluate.calibrate(scores, dataset="synthetic", date="2026-11-26")
    methods = {p.fmr: p.method for p in calibration.points}
    assert methods == {1e-3: "empirical", 1e-4: "extrapolated", 1e-5: "extrapolated"}
    by_fmr = {p.fmr: p.threshold for p in calibration.points}
    assert by_fmr[1e-3] < by_fmr[1e-4] < by_fmr[1e-5]
    assert by_fmr[1e-4] > scores.impostor.max()
    # Normal tail: mean + 3.72 sigma for 1e-4, within sampling error.
    assert by_fmr[1e-4] == pytest.approx(0.2 + 3.719 * 0.1, abs=0.03)
    assert calibration.default_threshold > scores.impostor.max()
    assert calibration.default_threshold == pytest.approx(scores.impostor.max(), abs=2e-6)


def test_calibration_needs_pairs() -> None:
    with pytest.raises(ImageError):
        evaluate.calibrate(
            evaluate.PairScores(np.array([0.9]), np.array([0.1]), 0), dataset="x", date="y"
        )


def test_read_pairs_rejects_bad_decisions(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text("file_x,file_y,Decision\na.jpg,b.jpg,Maybe\n", encoding="utf-8")
    with pytest.raises(ImageError):
        evaluate.read_pairs(path)
    path.write_text("file_x,file_y,Decision\na.jpg,b.jpg,Yes\nc.jpg,d.jpg,No\n", encoding="utf-8")
    assert evaluate.read_pairs(path) == [("a.jpg", "b.jpg", True), ("c.jpg", "d.jpg", False)]


def test_nan_auc_without_pairs() -> None:
    assert math.isnan(evaluate.roc_auc(np.array([]), np.array([0.1])))
