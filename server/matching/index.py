"""An in-memory gallery index for one pack: exact cosine (dot product) search, per shopper.

A shopper has several templates; a search returns the best score per shopper, top-k shoppers.
Writers take a lock; searches read a consistent snapshot.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]

MAX_TEMPLATES_PER_SHOPPER = 8


@dataclass(frozen=True)
class Candidate:
    shopper_id: str
    score: float


class GalleryIndex:
    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._lock = threading.Lock()
        self._vectors: Vectors = np.zeros((0, dimension), np.float32)
        self._owners = np.zeros(0, np.int64)
        self._alive = np.zeros(0, bool)
        self._count = 0
        self._shopper_ids: list[str] = []
        self._rows: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, shopper_id: object) -> bool:
        return shopper_id in self._rows

    @property
    def template_count(self) -> int:
        return sum(len(rows) for rows in self._rows.values())

    def _check(self, vectors: npt.NDArray[np.generic]) -> Vectors:
        array = np.asarray(vectors)
        if array.ndim != 2 or array.shape[1] != self.dimension or array.shape[0] == 0:
            raise ValueError(f"templates must be a non-empty (k, {self.dimension}) array")
        if not np.all(np.isfinite(array)):
            raise ValueError("templates must be finite")
        return np.ascontiguousarray(array, dtype=np.float32)

    def _grow(self, extra: int) -> None:
        needed = self._count + extra
        if needed <= self._vectors.shape[0]:
            return
        capacity = max(needed, 2 * self._vectors.shape[0], 1024)
        vectors = np.zeros((capacity, self.dimension), np.float32)
        vectors[: self._count] = self._vectors[: self._count]
        owners = np.full(capacity, -1, np.int64)
        owners[: self._count] = self._owners[: self._count]
        alive = np.zeros(capacity, bool)
        alive[: self._count] = self._alive[: self._count]
        self._vectors, self._owners, self._alive = vectors, owners, alive

    def add(self, shopper_id: str, vectors: npt.NDArray[np.generic]) -> None:
        rows = self._check(vectors)
        if rows.shape[0] > MAX_TEMPLATES_PER_SHOPPER:
            raise ValueError(f"at most {MAX_TEMPLATES_PER_SHOPPER} templates per shopper")
        with self._lock:
            self._remove_locked(shopper_id)
            self._grow(rows.shape[0])
            owner = len(self._shopper_ids)
            self._shopper_ids.append(shopper_id)
            start = self._count
            self._vectors[start : start + rows.shape[0]] = rows
            self._owners[start : start + rows.shape[0]] = owner
            self._alive[start : start + rows.shape[0]] = True
            self._count += rows.shape[0]
            self._rows[shopper_id] = list(range(start, self._count))

    def bulk_load(
        self,
        shopper_ids: Sequence[str],
        vectors: npt.NDArray[np.generic],
        owners: npt.NDArray[np.integer],
    ) -> None:
        """Replace the contents: `owners[i]` indexes `shopper_ids` for row `i` of `vectors`."""
        rows = self._check(vectors)
        owner_index = np.asarray(owners, dtype=np.int64)
        if (
            owner_index.shape != (rows.shape[0],)
            or owner_index.min() < 0
            or owner_index.max() >= len(shopper_ids)
        ):
            raise ValueError("owners must index shopper_ids, one per template")
        grouped: dict[str, list[int]] = {}
        for row, owner in enumerate(owner_index.tolist()):
            grouped.setdefault(shopper_ids[owner], []).append(row)
        with self._lock:
            self._vectors = rows.copy()
            self._owners = owner_index.copy()
            self._alive = np.ones(rows.shape[0], bool)
            self._count = rows.shape[0]
            self._shopper_ids = list(shopper_ids)
            self._rows = grouped

    def remove(self, shopper_id: str) -> bool:
        with self._lock:
            return self._remove_locked(shopper_id)

    def _remove_locked(self, shopper_id: str) -> bool:
        rows = self._rows.pop(shopper_id, None)
        if rows is None:
            return False
        self._alive[rows] = False
        self._vectors[rows] = 0.0
        return True

    def search(
        self, probe: npt.NDArray[np.generic], k: int = 2, restrict_to: Collection[str] | None = None
    ) -> list[Candidate]:
        query = np.asarray(probe, dtype=np.float32).reshape(-1)
        if query.shape != (self.dimension,) or not np.all(np.isfinite(query)):
            raise ValueError(f"a probe must be a finite vector of {self.dimension} values")
        with self._lock:
            count = self._count
            vectors, owners, alive = self._vectors, self._owners, self._alive
            ids = self._shopper_ids
            if restrict_to is not None:
                subset = np.array(
                    [r for s in restrict_to for r in self._rows.get(s, [])], dtype=np.int64
                )
        if count == 0:
            return []
        if restrict_to is not None:
            if subset.size == 0:
                return []
            scores = vectors[subset] @ query
            rows = subset
        else:
            scores = vectors[:count] @ query
            scores[~alive[:count]] = -np.inf
            rows = np.arange(count)
        take = min(scores.size, k * MAX_TEMPLATES_PER_SHOPPER)
        top = (
            np.argpartition(-scores, take - 1)[:take]
            if take < scores.size
            else np.arange(scores.size)
        )
        top = top[np.argsort(-scores[top], kind="stable")]
        found: dict[int, float] = {}
        for position in top.tolist():
            score = float(scores[position])
            if score == -np.inf:
                break
            owner = int(owners[rows[position]])
            if owner not in found:
                found[owner] = score
                if len(found) == k:
                    break
        return [Candidate(ids[owner], score) for owner, score in found.items()]
