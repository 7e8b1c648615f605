"""The match decision: a pure function of the top candidates and the rung's threshold.

`decide` takes the best shoppers of a search (best first, as `GalleryIndex.search` returns
them; at most the first two are read) and applies these rules, in this order:

1. No candidate: ``no_match`` / ``empty_gallery``.
2. The best score below `threshold`: ``no_match`` / ``below_threshold``.
3. The best less than `margin` above the second best shopper (a lone candidate has no
   competitor; its margin is unlimited):
   - an open search: ``step_up`` / ``thin_margin`` (the kiosk asks for something that narrows
     the gallery, e.g. the phone number, and searches again);
   - a search already narrowed by step-up (`restricted`): ``no_match`` / ``ambiguous``.
4. Otherwise: ``match`` / ``matched``, with the best shopper's id.

Whether the face may be searched at all at a rung, and at which threshold, is the risk rule's
(`server.matching.risk`): the threshold passed here already meets the risk targets for the
number of shoppers searched, so a narrowed search never gets a lower bar than its risk allows.

Only ``match`` carries a shopper id; a narrowed ``no_match`` names its closest candidate for
the guess limits, inside the server only. A `Decision` never carries a score: scores do not
leave the matching layer (they would help an attacker climb towards a threshold).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from server.matching.index import Candidate, GalleryIndex
from server.matching.risk import RungRisk

__all__ = ["REASONS", "Decision", "Outcome", "decide", "search_and_decide"]

Outcome = Literal["match", "no_match", "step_up"]

REASONS: Final = frozenset(
    {
        "empty_gallery",
        "below_threshold",
        "thin_margin",
        "ambiguous",
        "matched",
        "no_safe_threshold",  # the rung has no threshold within the risk targets
    }
)


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    shopper_id: str | None
    reason: str
    # A narrowed search that matched nobody: the closest shopper among those searched, whom
    # the failed attempt is counted against (guess limits). Never sent to a kiosk.
    candidate: str | None = None


def decide(
    candidates: Sequence[Candidate],
    *,
    threshold: float,
    margin: float,
    restricted: bool = False,
) -> Decision:
    """Apply the rules of the module docstring. Raises `ValueError` for an invalid policy."""
    if not all(math.isfinite(value) for value in (threshold, margin)):
        raise ValueError("the matching policy must be finite")
    if margin < 0:
        raise ValueError("the matching policy is out of range")
    if not candidates:
        return Decision("no_match", None, "empty_gallery")
    best = candidates[0]
    closest = best.shopper_id if restricted else None
    if not best.score >= threshold:  # also a NaN score
        return Decision("no_match", None, "below_threshold", closest)
    if len(candidates) > 1 and best.score - candidates[1].score < margin:
        if restricted:
            return Decision("no_match", None, "ambiguous", closest)
        return Decision("step_up", None, "thin_margin")
    return Decision("match", best.shopper_id, "matched")


def search_and_decide(
    index: GalleryIndex,
    probe: npt.NDArray[np.float32],
    rung: RungRisk,
    *,
    margin: float,
    restrict_to: Collection[str] | None = None,
) -> Decision:
    """A top-2 search at the rung's threshold, then `decide`: what the server does for every
    match attempt, and what the gallery simulator runs (`server.matching.simulation`). A rung
    without a threshold (none meets the risk targets) matches nobody."""
    if rung.threshold is None:
        return Decision("no_match", None, "no_safe_threshold")
    candidates = index.search(probe, k=2, restrict_to=restrict_to, exhaustive_below=rung.threshold)
    return decide(
        candidates, threshold=rung.threshold, margin=margin, restricted=restrict_to is not None
    )
