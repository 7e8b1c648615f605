"""The match decision: a pure function of the top candidates and the matching policy.

`decide` takes the best shoppers of a 1:N search (best first, as `GalleryIndex.search` returns
them; at most the first two are read) and applies these rules, in this order:

1. No candidate: ``no_match`` / ``empty_gallery``.
2. The best score below `threshold`: ``no_match`` / ``below_threshold``.
3. The best less than `margin` above the second best shopper (a lone candidate has no
   competitor; its margin is unlimited):
   - an open search: ``step_up`` / ``thin_margin`` (the kiosk asks for something that narrows
     the gallery, e.g. the last digits of the phone number, and searches again);
   - a search already narrowed by step-up (`restricted`): ``no_match`` / ``ambiguous``.
4. The estimated false-positive identification rate, FPIR = `gallery_size` x `fmr` (the
   false match rate at the threshold used, a union bound over the gallery), above
   `target_fpir`:
   - an open search: ``step_up`` / ``fpir_above_target`` (the gallery is too large for a
     face alone at this threshold);
   - a restricted search: the caller passes the size of the *restricted* gallery, so this is
     the estimate for the narrowed search, and the narrowing itself (a few shoppers chosen by
     something the face does not give) is the mitigation for that risk; there is nothing
     left to narrow, so the rule does not apply (the threshold and the margin still do).
5. Otherwise: ``match`` / ``matched``, with the best shopper's id.

Only ``match`` carries a shopper id. A `Decision` never carries a score: scores do not leave
the matching layer (they would help an attacker climb towards a threshold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from server.matching.index import Candidate

__all__ = ["REASONS", "Decision", "Outcome", "decide"]

Outcome = Literal["match", "no_match", "step_up"]

REASONS: Final = frozenset(
    {"empty_gallery", "below_threshold", "thin_margin", "ambiguous", "fpir_above_target", "matched"}
)


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
    """Apply the rules of the module docstring. Raises `ValueError` for an invalid policy."""
    if not all(math.isfinite(value) for value in (threshold, margin, fmr, target_fpir)):
        raise ValueError("the matching policy must be finite")
    if margin < 0 or gallery_size < 0 or not 0 <= fmr <= 1 or target_fpir < 0:
        raise ValueError("the matching policy is out of range")
    if not candidates:
        return Decision("no_match", None, "empty_gallery")
    best = candidates[0]
    if not best.score >= threshold:  # also a NaN score
        return Decision("no_match", None, "below_threshold")
    if len(candidates) > 1 and best.score - candidates[1].score < margin:
        if restricted:
            return Decision("no_match", None, "ambiguous")
        return Decision("step_up", None, "thin_margin")
    if not restricted and gallery_size * fmr > target_fpir:
        return Decision("step_up", None, "fpir_above_target")
    return Decision("match", best.shopper_id, "matched")
