"""The match decision rules (server/matching/decision.py), one by one and at their edges, and
the search that feeds them at a rung's threshold."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from server.matching.decision import REASONS, Decision, decide, search_and_decide
from server.matching.index import Candidate, GalleryIndex
from server.matching.risk import Rung, RungRisk

# Binary fractions, so that differences such as 0.75 - 0.5 are exact.
POLICY = {"threshold": 0.5, "margin": 0.125}


def _c(*pairs: tuple[str, float]) -> list[Candidate]:
    return [Candidate(shopper, score) for shopper, score in pairs]


def _decide(candidates: list[Candidate], restricted: bool = False) -> Decision:
    return decide(candidates, restricted=restricted, **POLICY)


@pytest.mark.parametrize("restricted", [False, True])
def test_no_candidate_is_no_match(restricted: bool) -> None:
    assert _decide([], restricted) == Decision("no_match", None, "empty_gallery")


@pytest.mark.parametrize("restricted", [False, True])
def test_below_threshold_is_no_match(restricted: bool) -> None:
    # A narrowed search names its closest candidate (for the guess limits); an open one never.
    closest = "a" if restricted else None
    assert _decide(_c(("a", 0.4375)), restricted) == Decision(
        "no_match", None, "below_threshold", closest
    )
    # Below the threshold wins over a thin margin.
    assert _decide(_c(("a", 0.4375), ("b", 0.4375)), restricted).reason == "below_threshold"
    assert _decide(_c(("a", float("nan"))), restricted).reason == "below_threshold"


def test_a_clear_best_is_a_match() -> None:
    assert _decide(_c(("a", 0.75), ("b", 0.5))) == Decision("match", "a", "matched")
    # At the threshold exactly, and a lone candidate (no competitor).
    assert _decide(_c(("a", 0.5), ("b", 0.375))) == Decision("match", "a", "matched")
    assert _decide(_c(("a", 0.5))) == Decision("match", "a", "matched")


def test_thin_margin_asks_for_step_up() -> None:
    thin = _decide(_c(("a", 0.75), ("b", 0.6875)))
    assert thin == Decision("step_up", None, "thin_margin")
    # The margin exactly is enough.
    assert _decide(_c(("a", 0.75), ("b", 0.625))).outcome == "match"
    # A runner-up below the threshold still counts against the margin.
    assert _decide(_c(("a", 0.5), ("b", 0.4375))).reason == "thin_margin"


def test_thin_margin_after_step_up_is_ambiguous() -> None:
    narrowed = _decide(_c(("a", 0.75), ("b", 0.6875)), restricted=True)
    assert narrowed == Decision("no_match", None, "ambiguous", candidate="a")
    assert _decide(_c(("a", 0.75), ("b", 0.625)), restricted=True).outcome == "match"


def test_only_the_first_two_candidates_matter() -> None:
    assert _decide(_c(("a", 0.75), ("b", 0.5), ("c", 0.7))).outcome == "match"


def test_a_decision_never_carries_a_score() -> None:
    names = {field.name for field in dataclasses.fields(Decision)}
    assert names == {"outcome", "shopper_id", "reason", "candidate"}
    decision = _decide(_c(("a", 0.75)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.outcome = "no_match"  # type: ignore[misc]
    assert "0.75" not in repr(decision)


def _index() -> GalleryIndex:
    index = GalleryIndex(4)
    index.add("a", np.array([[1.0, 0.0, 0.0, 0.0]], np.float32))
    index.add("b", np.array([[0.0, 1.0, 0.0, 0.0]], np.float32))
    return index


def test_the_search_uses_the_rungs_threshold() -> None:
    probe = np.array([0.8, 0.6, 0.0, 0.0], np.float32)  # 0.8 to a, 0.6 to b
    lenient = RungRisk(Rung.PHONE_LAST4, 0.75, None)
    strict = RungRisk(Rung.PHONE_LAST4, 0.85, None)
    assert search_and_decide(_index(), probe, lenient, margin=0.125).outcome == "match"
    assert search_and_decide(_index(), probe, strict, margin=0.125).reason == "below_threshold"
    narrowed = search_and_decide(_index(), probe, lenient, margin=0.125, restrict_to={"b"})
    assert narrowed.reason == "below_threshold"


def test_a_rung_without_a_safe_threshold_matches_nobody() -> None:
    exact = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    unsafe = RungRisk(Rung.PHONE, None, None)
    decision = search_and_decide(_index(), exact, unsafe, margin=0.125, restrict_to={"a"})
    assert decision == Decision("no_match", None, "no_safe_threshold")


def test_reasons_are_the_documented_codes() -> None:
    exact = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    cases = [
        _decide([]),
        _decide(_c(("a", 0.25))),
        _decide(_c(("a", 0.75), ("b", 0.6875))),
        _decide(_c(("a", 0.75), ("b", 0.6875)), restricted=True),
        _decide(_c(("a", 0.75))),
        search_and_decide(_index(), exact, RungRisk(Rung.PHONE, None, None), margin=0.125),
    ]
    assert {decision.reason for decision in cases} == REASONS
    assert all(
        (decision.shopper_id is not None) == (decision.outcome == "match") for decision in cases
    )


@pytest.mark.parametrize(("threshold", "margin"), [(float("nan"), 0.125), (0.5, -0.125)])
def test_an_invalid_policy_is_refused(threshold: float, margin: float) -> None:
    with pytest.raises(ValueError):
        decide(_c(("a", 0.75)), threshold=threshold, margin=margin)
