"""The match decision, as a pure function of the top candidates and the matching policy.

- No candidate, or the best below the threshold: no match.
- The best above the threshold but less than `margin` above the best other shopper: step-up
  (the phone's last four digits narrow the gallery); within an already narrowed gallery, an
  ambiguous result is a no match.
- The estimated false-positive identification rate, FPIR ≈ gallery size × FMR at the
  threshold used, above the target: step-up. After step-up the gallery is already narrowed to
  the shoppers whose phone ends in the digits typed, which is the mitigation for that risk;
  there the threshold and the margin still apply, the FPIR target does not.
- Otherwise: a match. The decision never carries the score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from server.matching.index import Candidate

Outcome = Literal["match", "no_match", "step_up"]


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    shopper_id: str | None
    reason: str


def decide(
    candidates: Sequence[Candidate],
    *,
    threshold: float,
    margin: float,
    gallery_size: int,
    fmr: float,
    target_fpir: float,
    restricted: bool = False,
) -> Decision:
    if not candidates:
        return Decision("no_match", None, "empty_gallery")
    best = candidates[0]
    if best.score < threshold:
        return Decision("no_match", None, "below_threshold")
    second = candidates[1].score if len(candidates) > 1 else -1.0
    if best.score - second < margin:
        return (
            Decision("no_match", None, "ambiguous")
            if restricted
            else Decision("step_up", None, "thin_margin")
        )
    if gallery_size * fmr > target_fpir and not restricted:
        return Decision("step_up", None, "fpir_above_target")
    return Decision("match", best.shopper_id, "matched")
