"""An in-memory gallery index for one pack: cosine (dot product) search, best score per shopper.

A shopper has several templates; a search returns the best score per shopper, top-k shoppers.
Small galleries are searched exhaustively with one matrix product. From IVF_MIN_TEMPLATES on,
an inverted-file index (faiss IndexIVFFlat) narrows each search to the templates of the
`nprobe` cells nearest the probe; it stores the vectors themselves, so every returned score is
an exact dot product; when the best score found that way is below the operating threshold, an
exhaustive search confirms it, so a genuine probe whose shopper sat in an unprobed cell is
still found (`bench/bench_gallery.py` checks top-1 against an exhaustive search). The inverted
file is built in the background; until it is ready, searches are exhaustive.
Writers take a lock; searches read a consistent snapshot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]

MAX_TEMPLATES_PER_SHOPPER = 8
IVF_MIN_TEMPLATES = 50_000
IVF_PROBES = 32


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
        self._ivf: Any = None
        self._ivf_built_at = 0
        self._building = False
        self._generation = 0  # bumped by bulk_load: a build of older contents is discarded
        self.ivf_thread: threading.Thread | None = None

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
            if self._ivf is not None:
                self._ivf.add_with_ids(rows, np.arange(start, self._count, dtype=np.int64))
            if self._count >= max(IVF_MIN_TEMPLATES, 2 * self._ivf_built_at):
                self._start_ivf_build()  # first time past the threshold, or the gallery doubled

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
            self._ivf = None
            self._ivf_built_at = 0
            self._generation += 1
            self._building = False
            if self._count >= IVF_MIN_TEMPLATES:
                self._start_ivf_build()

    def _start_ivf_build(self) -> None:
        """Build the inverted file in the background (the caller holds the lock): until it is
        ready, searches are exhaustive, so a cold start does not wait for the clustering."""
        if self._building:
            return
        self._building = True
        self._ivf_built_at = self._count
        live = np.flatnonzero(self._alive[: self._count])
        snapshot = np.ascontiguousarray(self._vectors[live])
        thread = threading.Thread(
            target=self._build_ivf,
            args=(live, snapshot, self._generation),
            name="gallery-ivf",
            daemon=True,
        )
        thread.start()
        self.ivf_thread = thread

    def _build_ivf(self, live: npt.NDArray[np.int64], vectors: Vectors, generation: int) -> None:
        """Cluster a snapshot into about 1 cell per 1,000 templates (k-means on a sample), then
        install it with whatever changed since the snapshot."""
        import faiss

        try:
            cells = int(min(4096, max(64, live.size // 1000)))
            quantizer = faiss.IndexFlatIP(self.dimension)
            ivf = faiss.IndexIVFFlat(quantizer, self.dimension, cells, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            sample = (
                np.arange(live.size)
                if live.size <= 40 * cells
                else np.sort(rng.choice(live.size, 40 * cells, replace=False))
            )
            ivf.cp.niter = 10
            ivf.train(vectors[sample])
            ivf.add_with_ids(vectors, live.astype(np.int64))
            ivf.nprobe = IVF_PROBES
            with self._lock:
                if generation != self._generation:
                    return  # the contents were replaced while this was built
                gone = live[~self._alive[live]]
                if gone.size:
                    ivf.remove_ids(faiss.IDSelectorArray(gone.astype(np.int64)))
                last = int(live[-1]) + 1 if live.size else 0
                newer = np.arange(last, self._count)[self._alive[last : self._count]]
                if newer.size:
                    ivf.add_with_ids(
                        np.ascontiguousarray(self._vectors[newer]), newer.astype(np.int64)
                    )
                self._ivf = ivf
                self._building = False
        except Exception:
            logger.exception(
                "building the gallery's inverted file failed; searches stay exhaustive"
            )
            with self._lock:
                self._building = False

    def remove(self, shopper_id: str) -> bool:
        with self._lock:
            return self._remove_locked(shopper_id)

    def _remove_locked(self, shopper_id: str) -> bool:
        rows = self._rows.pop(shopper_id, None)
        if rows is None:
            return False
        self._alive[rows] = False
        self._vectors[rows] = 0.0
        if self._ivf is not None:
            import faiss

            self._ivf.remove_ids(faiss.IDSelectorArray(np.asarray(rows, dtype=np.int64)))
        return True

    def search(
        self,
        probe: npt.NDArray[np.generic],
        k: int = 2,
        restrict_to: Collection[str] | None = None,
        exhaustive_below: float | None = None,
    ) -> list[Candidate]:
        """The k best shoppers. With an inverted file, a best score below `exhaustive_below`
        (the operating threshold) is confirmed by an exhaustive search, so a probe is never
        declined because its shopper's templates sat in a cell that was not probed."""
        found = self._search(probe, k, restrict_to, use_ivf=True)
        if (
            restrict_to is None
            and self._ivf is not None
            and exhaustive_below is not None
            and (not found or found[0].score < exhaustive_below)
        ):
            found = self._search(probe, k, None, use_ivf=False)
        return found

    def _search(
        self,
        probe: npt.NDArray[np.generic],
        k: int,
        restrict_to: Collection[str] | None,
        *,
        use_ivf: bool,
    ) -> list[Candidate]:
        query = np.asarray(probe, dtype=np.float32).reshape(-1)
        if query.shape != (self.dimension,) or not np.all(np.isfinite(query)):
            raise ValueError(f"a probe must be a finite vector of {self.dimension} values")
        with self._lock:
            count = self._count
            vectors, owners, alive = self._vectors, self._owners, self._alive
            ids = self._shopper_ids
            ivf = self._ivf if use_ivf else None
            if restrict_to is None and ivf is not None:
                scores_2d, found_rows = ivf.search(query[None, :], k * MAX_TEMPLATES_PER_SHOPPER)
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
        elif ivf is not None:
            keep = found_rows[0] >= 0
            rows = found_rows[0][keep]
            scores = scores_2d[0][keep].astype(np.float32)
            if rows.size == 0:
                return []
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
