"""The risk rule on the default pack's calibrated curves: thresholds per rung, the ladder, the
duplicate threshold, and failing closed where the curves cannot show a rate."""

from __future__ import annotations

from dataclasses import replace

import pytest

from models.manifest import ScoreCurves, bundled_manifests
from server.matching.risk import (
    RUNGS,
    RiskTargets,
    Rung,
    duplicate_threshold,
    false_duplicate_chance,
    ladder,
    per_rung,
    rung_risk,
)

CALIBRATION = bundled_manifests()["dlib-resnet-v1"].calibration
assert CALIBRATION is not None and CALIBRATION.curves is not None
CURVES: ScoreCurves = CALIBRATION.curves
BASE = CALIBRATION.threshold(1e-3)
TARGETS = RiskTargets()
SIZES = (0, 1, 10, 1_000, 100_000, 1_000_000, 5_000_000)


@pytest.mark.parametrize("size", SIZES)
def test_every_available_rung_meets_every_target(size: int) -> None:
    for option in per_rung(CURVES, size, TARGETS, base_threshold=BASE).values():
        if option.risk is None:
            assert option.threshold is None
            continue
        assert option.risk.stranger <= TARGETS.stranger
        assert option.risk.wrong_wallet <= TARGETS.wrong_wallet
        assert option.risk.targeted <= TARGETS.targeted


@pytest.mark.parametrize("size", SIZES)
def test_narrowing_never_lowers_the_bar_below_the_base_threshold(size: int) -> None:
    for option in per_rung(CURVES, size, TARGETS, base_threshold=BASE).values():
        assert option.threshold is None or option.threshold >= BASE


def test_a_million_shoppers_ask_for_the_whole_phone_number_within_every_bar() -> None:
    chosen = ladder(CURVES, 1_000_000, TARGETS, base_threshold=BASE)
    assert chosen.rung is Rung.PHONE and chosen.risk is not None
    assert chosen.risk.stranger <= 1e-4
    assert chosen.risk.wrong_wallet <= 1e-5
    assert chosen.risk.targeted <= 1e-2
    assert chosen.risk.completion >= 0.98
    assert duplicate_threshold(CURVES, 1_000_000, TARGETS) is None  # no face duplicates


def test_the_face_alone_is_not_enough_for_ten_shoppers() -> None:
    # The measured fact: beyond about ten shoppers a face alone cannot meet the
    # targets at a threshold honest shoppers pass.
    assert ladder(CURVES, 10, TARGETS, base_threshold=BASE).rung is not Rung.FACE
    assert ladder(CURVES, 1_000, TARGETS, base_threshold=BASE).rung is Rung.PHONE_LAST4


def test_the_ladder_never_weakens_as_the_gallery_grows() -> None:
    rungs = [ladder(CURVES, size, TARGETS, base_threshold=BASE).rung for size in SIZES]
    positions = [RUNGS.index(rung) for rung in rungs]
    assert positions == sorted(positions)


def test_even_one_shopper_is_too_many_for_a_face_alone_at_the_default_targets() -> None:
    # One comparison at a threshold honest shoppers pass (FMR about 1e-3) already exceeds the
    # stranger target of 1e-4 per attempt.
    assert ladder(CURVES, 1, TARGETS, base_threshold=BASE).rung is Rung.PHONE_LAST4


def test_the_minimum_rung_is_respected() -> None:
    lenient = replace(TARGETS, stranger=1e-2)
    assert ladder(CURVES, 1, lenient, base_threshold=BASE).rung is Rung.FACE
    chosen = ladder(CURVES, 1, lenient, base_threshold=BASE, minimum=Rung.PHONE_LAST4)
    assert chosen.rung is Rung.PHONE_LAST4


def test_a_larger_candidate_set_needs_a_stricter_threshold() -> None:
    small = rung_risk(CURVES, Rung.PHONE_LAST4, 1_000, TARGETS, base_threshold=BASE)
    large = rung_risk(CURVES, Rung.PHONE_LAST4, 1_000_000, TARGETS, base_threshold=BASE)
    assert small.threshold is not None and large.threshold is not None
    assert large.threshold > small.threshold


def test_stricter_targets_raise_the_threshold() -> None:
    strict = replace(TARGETS, targeted=1e-3)
    loose = rung_risk(CURVES, Rung.PHONE, 1_000_000, TARGETS, base_threshold=BASE)
    tight = rung_risk(CURVES, Rung.PHONE, 1_000_000, strict, base_threshold=BASE)
    assert loose.threshold is not None and tight.threshold is not None
    assert tight.threshold > loose.threshold
    assert tight.risk is not None and tight.risk.targeted <= 1e-3


def test_rates_below_the_curves_resolution_fail_closed() -> None:
    coarse = replace(CURVES, resolution=0.5)
    for rung in RUNGS:
        assert rung_risk(coarse, rung, 1_000, TARGETS, base_threshold=BASE).threshold is None
    chosen = ladder(coarse, 1_000, TARGETS, base_threshold=BASE)
    assert chosen.rung is Rung.PHONE and chosen.threshold is None
    assert duplicate_threshold(coarse, 1_000, TARGETS) is None


def test_the_duplicate_threshold_keeps_false_duplicates_within_target() -> None:
    for size in (1, 100, 1_000, 10_000):
        threshold = duplicate_threshold(CURVES, size, TARGETS)
        assert threshold is not None
        assert false_duplicate_chance(CURVES, threshold, size) <= TARGETS.false_duplicate
        # one grid step lower would break the target
        below = round(threshold - CURVES.step, 6)
        if below >= CURVES.start:
            assert false_duplicate_chance(CURVES, below, size) > TARGETS.false_duplicate


def test_more_failures_a_day_make_the_targeted_risk_larger() -> None:
    generous = replace(TARGETS, failures_per_day=100)
    option = rung_risk(CURVES, Rung.PHONE, 1_000, generous, base_threshold=BASE)
    usual = rung_risk(CURVES, Rung.PHONE, 1_000, TARGETS, base_threshold=BASE)
    assert option.threshold is not None and usual.threshold is not None
    assert option.threshold > usual.threshold
