"""The match decision rules (server/matching/decision.py), one by one and at their edges."""

from __future__ import annotations

import dataclasses

import pytest

from server.matching.decision import REASONS, Decision, decide
from server.matching.index import Candidate

# Binary fractions, so that differences such as 0.75 - 0.5 are exact.
POLICY = {"threshold": 0.5, "margin": 0.125, "fmr": 1 / 1024, "target_fpir": 1 / 64}
SMALL = 8  # 8 / 1024 <= 1 / 64: the FPIR estimate is within the target
LARGE = 32  # 32 / 1024 > 1 / 64


def _c(*pairs: tuple[str, float]) -> list[Candidate]:
    return [Candidate(shopper, score) for shopper, score in pairs]


def _decide(candidates: list[Candidate], gallery_size: int, restricted: bool = False) -> Decision:
    return decide(candidates, gallery_size=gallery_size, restricted=restricted, **POLICY)


@pytest.mark.parametrize("restricted", [False, True])
def test_no_candidate_is_no_match(restricted: bool) -> None:
    assert _decide([], 0, restricted) == Decision("no_match", None, "empty_gallery")
    assert _decide([], LARGE, restricted) == Decision("no_match", None, "empty_gallery")


@pytest.mark.parametrize("restricted", [False, True])
def test_below_threshold_is_no_match(restricted: bool) -> None:
    assert _decide(_c(("a", 0.4375)), SMALL, restricted) == Decision(
        "no_match", None, "below_threshold"
    )
    # Below the threshold wins over a thin margin and over the FPIR estimate.
    assert _decide(_c(("a", 0.4375), ("b", 0.4375)), LARGE, restricted).reason == (
        "below_threshold"
    )
    assert _decide(_c(("a", float("nan"))), SMALL, restricted).reason == "below_threshold"


def test_a_clear_best_in_a_small_gallery_is_a_match() -> None:
    assert _decide(_c(("a", 0.75), ("b", 0.5)), SMALL) == Decision("match", "a", "matched")
    # At the threshold exactly, and a lone candidate (no competitor).
    assert _decide(_c(("a", 0.5), ("b", 0.375)), SMALL) == Decision("match", "a", "matched")
    assert _decide(_c(("a", 0.5)), SMALL) == Decision("match", "a", "matched")


def test_thin_margin_asks_for_step_up() -> None:
    thin = _decide(_c(("a", 0.75), ("b", 0.6875)), SMALL)
    assert thin == Decision("step_up", None, "thin_margin")
    # The margin exactly is enough.
    assert _decide(_c(("a", 0.75), ("b", 0.625)), SMALL).outcome == "match"
    # A runner-up below the threshold still counts against the margin.
    assert _decide(_c(("a", 0.5), ("b", 0.4375)), SMALL).reason == "thin_margin"
    # A thin margin is reported before the FPIR estimate.
    assert _decide(_c(("a", 0.75), ("b", 0.6875)), LARGE).reason == "thin_margin"


def test_thin_margin_after_step_up_is_ambiguous() -> None:
    narrowed = _decide(_c(("a", 0.75), ("b", 0.6875)), 2, restricted=True)
    assert narrowed == Decision("no_match", None, "ambiguous")
    assert _decide(_c(("a", 0.75), ("b", 0.625)), 2, restricted=True).outcome == "match"


def test_fpir_above_target_asks_for_step_up() -> None:
    crowded = _decide(_c(("a", 0.75), ("b", 0.25)), LARGE)
    assert crowded == Decision("step_up", None, "fpir_above_target")
    # At the target exactly: a match.
    assert _decide(_c(("a", 0.75), ("b", 0.25)), 16).outcome == "match"


def test_fpir_does_not_turn_a_narrowed_match_into_a_decline() -> None:
    # After step-up the caller passes the narrowed gallery's size; narrowing is the
    # mitigation, so the threshold and the margin decide.
    assert _decide(_c(("a", 0.75)), 3, restricted=True) == Decision("match", "a", "matched")
    assert _decide(_c(("a", 0.75), ("b", 0.25)), LARGE, restricted=True) == Decision(
        "match", "a", "matched"
    )
    assert _decide(_c(("a", 0.4375)), LARGE, restricted=True).reason == "below_threshold"


def test_only_the_first_two_candidates_matter() -> None:
    assert _decide(_c(("a", 0.75), ("b", 0.5), ("c", 0.7)), SMALL).outcome == "match"


def test_a_decision_never_carries_a_score() -> None:
    names = {field.name for field in dataclasses.fields(Decision)}
    assert names == {"outcome", "shopper_id", "reason"}
    decision = _decide(_c(("a", 0.75)), SMALL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.outcome = "no_match"  # type: ignore[misc]
    assert "0.75" not in repr(decision)


def test_reasons_are_the_documented_codes() -> None:
    cases = [
        _decide([], 0),
        _decide(_c(("a", 0.25)), SMALL),
        _decide(_c(("a", 0.75), ("b", 0.6875)), SMALL),
        _decide(_c(("a", 0.75), ("b", 0.6875)), SMALL, restricted=True),
        _decide(_c(("a", 0.75)), LARGE),
        _decide(_c(("a", 0.75)), SMALL),
    ]
    assert {decision.reason for decision in cases} == REASONS
    assert all(
        (decision.shopper_id is not None) == (decision.outcome == "match") for decision in cases
    )


@pytest.mark.parametrize(
    ("threshold", "margin", "fmr", "target_fpir"),
    [
        (float("nan"), 0.125, 1 / 1024, 1 / 64),
        (0.5, -0.125, 1 / 1024, 1 / 64),
        (0.5, 0.125, 1.5, 1 / 64),
        (0.5, 0.125, -1e-6, 1 / 64),
        (0.5, 0.125, 1 / 1024, float("inf")),
    ],
)
def test_an_invalid_policy_is_refused(
    threshold: float, margin: float, fmr: float, target_fpir: float
) -> None:
    with pytest.raises(ValueError):
        decide(
            _c(("a", 0.75)),
            threshold=threshold,
            margin=margin,
            gallery_size=SMALL,
            fmr=fmr,
            target_fpir=target_fpir,
        )


def test_a_negative_gallery_size_is_refused() -> None:
    with pytest.raises(ValueError):
        _decide(_c(("a", 0.75)), -1)
