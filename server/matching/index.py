"""An in-memory gallery index for one pack: cosine (dot product) search, best score per shopper.

Pure: no Flask, no database. Templates are float32 rows of the pack's dimension, each owned by
a shopper; a shopper has a few (3-5). `search` returns the best score per *shopper*, the k
best shoppers, highest first; every score it returns is the exact dot product of the probe
with a stored float32 template (accumulated in float64, rounded once to float32, so the same
whichever path found it).

How a search runs
-----------------
- Small galleries (fewer than `EXACT_MAX_TEMPLATES` live templates): one matrix product over
  every template. Exact.
- Larger galleries: a *shortlist then exact re-rank*. A product-quantised copy of the templates
  (faiss `IndexPQFastScan`, one 4-bit code per pair of dimensions, 32 bytes per 128-d
  template: 1/16 of the float32 size) is scanned in full, with SIMD lookup tables, for the
  `SHORTLIST` templates with the highest *approximate* scores (a few ms at a million
  templates on one core). Every template of the shoppers who own one of them is then scored
  exactly against the float32 rows and the best per shopper is kept. On random 128-d vectors
  (impostors at cosine 0 +/- 0.09) the genuine shopper is always in the shortlist; on faces
  as the pack's simulator draws them (impostors at 0.83 +/- 0.034, a new capture about 0.97
  to its shopper) the shortlist's top-1 equals an exhaustive search's for 951 of 1,000 probes
  at a million shoppers (`bench/bench_matching.py`; a shortlist of 8,192 gives 999). The risk
  rule never lets a face alone search a gallery that large: step-up searches (a few shoppers,
  or one) are always exact, and so is every search below `EXACT_MAX_TEMPLATES` rows. There is
  no clustering step: an inverted file (IVF) needs many probed cells to be reliable on weakly
  clustered embeddings, and its k-means costs more at cold start than encoding does.
- `exhaustive_below` (optional): when the best score found through the shortlist is below it
  (say the operating threshold), the search is redone exhaustively, so a probe is never
  declined because of the approximation. This costs a full scan for every probe that matches
  nobody.
- `restrict_to` (step-up: a handful of shoppers) always scores those shoppers' templates
  exactly.

Changes
-------
One writer at a time (a lock serialises `add`, `remove` and `bulk_load`); any number of
concurrent searches, which take no lock for the common path: all the state a search reads
hangs off one immutable snapshot object that writers replace atomically. Arrays shared between
snapshots are only ever appended to beyond the rows an older snapshot can see; the liveness
mask is copied on removal. So:

- `add` is searchable at once: the new rows go to an exactly searched *tail* (rows past those
  the quantised index covers). When the tail exceeds `TAIL_MAX` rows the quantised index is
  cloned, the tail encoded into the clone and the clone published (tens of ms at a million);
  when the gallery has doubled since the quantiser was trained, it is retrained.
- `remove` takes effect at once: the shopper's rows are marked dead (a tombstone mask) and are
  skipped when re-ranking. When a quarter of the rows are dead, the storage is compacted and
  the quantised index rebuilt.
- `add` for a shopper already present replaces their templates.

Cold start (`bulk_load`) trains the quantiser on a sample and encodes every row in worker
threads (faiss releases the GIL); about 2-3 s per million 128-d templates on 2 cores. With
``background=True`` it returns as soon as the rows are in place, searchable exhaustively (exact,
about 50 ms a search at a million), and a thread builds the quantised index and publishes it
unless a compaction renumbered the rows meanwhile (then the compaction's own index stands).
A `RowBuffer` filled block by block becomes the index's storage without a copy.

Validation raises `ValueError` naming what is wrong, never quoting values; nothing here logs a
vector or a score.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
RowIndex = npt.NDArray[np.int64]

# Below this many live templates a search is one exhaustive matrix product (about 0.5 ms).
EXACT_MAX_TEMPLATES: Final = 20_000
# Templates taken from the quantised scan for exact re-ranking (their shoppers' templates all).
SHORTLIST: Final = 512
# Rows added after the quantised index was built, searched exactly until merged into it.
TAIL_MAX: Final = 8_192
# Quantiser training: rows sampled, k-means iterations (16 centroids per pair of dimensions).
TRAIN_SAMPLE: Final = 16_384
TRAIN_ITERATIONS: Final = 10
# `add` refuses more templates than this for one shopper (bulk_load only tracks the largest).
MAX_TEMPLATES_PER_SHOPPER: Final = 8

_ENCODE_CHUNK: Final = 65_536
_FUSE_CHUNK: Final = 65_536
_FINITE_CHUNK: Final = 65_536
_GROWTH_MIN: Final = 1_024
_FLOOR_SLACK: Final = 1e-4


@dataclass(frozen=True)
class Candidate:
    """A shopper and their best score against the probe (stays inside the matching layer)."""

    shopper_id: str
    score: float


@dataclass(frozen=True)
class _Quantised:
    """The product-quantised copy of rows ``[0, rows)``; never mutated once published."""

    index: Any  # faiss.IndexPQFastScan
    rows: int
    trained_on: int  # live templates when the quantiser was trained


@dataclass(frozen=True)
class _Snapshot:
    """Everything a search reads. Rows ``[0, count)`` of the arrays are valid and never
    change while this snapshot is current or referenced, except `alive`, which a removal
    replaces by a copy."""

    count: int
    vectors: Vectors  # (capacity, d)
    owners: npt.NDArray[np.int32]  # row -> slot
    alive: npt.NDArray[np.bool_]  # row -> not removed
    starts: npt.NDArray[np.int64]  # slot -> first row (a slot's rows are contiguous)
    lengths: npt.NDArray[np.int32]  # slot -> number of rows
    ids: list[str]  # slot -> shopper id (append-only; index only below `slots`)
    slots: int
    shoppers: int
    live_rows: int
    per_shopper_max: int
    quantised: _Quantised | None

    @property
    def dead_rows(self) -> int:
        return self.count - self.live_rows


def _empty_snapshot(dimension: int) -> _Snapshot:
    return _Snapshot(
        count=0,
        vectors=np.zeros((0, dimension), np.float32),
        owners=np.zeros(0, np.int32),
        alive=np.zeros(0, np.bool_),
        starts=np.zeros(0, np.int64),
        lengths=np.zeros(0, np.int32),
        ids=[],
        slots=0,
        shoppers=0,
        live_rows=0,
        per_shopper_max=0,
        quantised=None,
    )


def _load_faiss() -> Any:
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a server dependency
        return None
    return faiss


@contextmanager
def _one_omp_thread(faiss: Any) -> Iterator[None]:
    """faiss k-means spins OpenMP threads that stall when another process holds a core; our
    own worker threads parallelise instead. (libgomp keeps this setting per thread.)"""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _all_finite(array: npt.NDArray[np.floating[Any]]) -> bool:
    return all(
        bool(np.isfinite(array[start : start + _FINITE_CHUNK]).all())
        for start in range(0, array.shape[0], _FINITE_CHUNK)
    )


def _worker_count() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    return max(1, min(4, available))


def _with_spare(rows: int) -> int:
    """Capacity for ``rows`` plus room for enrollments before the storage grows."""
    return rows + max(_GROWTH_MIN, rows // 16)


class RowBuffer:
    """Templates gathered block by block (a cold start's decrypted chunks) for
    `GalleryIndex.bulk_load`, which keeps this storage rather than copying it.

    ``expected_rows`` sizes the storage (plus spare room for enrollments); more rows than that
    are accepted, at the cost of a copy. After `bulk_load` took it, the buffer is empty.
    """

    def __init__(self, dimension: int, expected_rows: int = 0) -> None:
        if dimension <= 0 or expected_rows < 0:
            raise ValueError("the dimension must be positive and the expected rows not negative")
        self.dimension = dimension
        self._storage: Vectors = np.empty((_with_spare(expected_rows), dimension), np.float32)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, rows: bytes | bytearray | npt.ArrayLike) -> None:
        """Append rows: little-endian float32 bytes, or a (k, dimension) array."""
        if isinstance(rows, bytes | bytearray):
            if len(rows) % (4 * self.dimension):
                raise ValueError(f"templates must be a whole number of {self.dimension}-d rows")
            block = np.frombuffer(rows, dtype="<f4").reshape(-1, self.dimension)
        else:
            block = np.asarray(rows)
            if not np.issubdtype(block.dtype, np.floating):
                raise ValueError("templates must be floating point")
            if block.ndim != 2 or block.shape[1] != self.dimension:
                raise ValueError(f"templates must be a (k, {self.dimension}) array")
        count, added = self._count, block.shape[0]
        if count + added > self._storage.shape[0]:
            grown = np.empty(
                (_with_spare(max(count + added, count + count // 2)), self.dimension), np.float32
            )
            grown[:count] = self._storage[:count]
            self._storage = grown
        self._storage[count : count + added] = block
        self._count = count + added

    def _take(self) -> tuple[Vectors, int]:
        storage, count = self._storage, self._count
        self._storage, self._count = np.empty((0, self.dimension), np.float32), 0
        return storage, count

    def fused(self, owners: npt.ArrayLike) -> tuple[Vectors, RowIndex]:
        """One row per owner, the unit mean of that owner's rows (see `fuse`), and the owner of
        each; empties the buffer. Rows are grouped by owner (as a cold start collects them)
        or sorted by owner first."""
        storage, count = self._take()
        return fuse_by_owner(storage[:count], owners)


def fuse(rows: npt.ArrayLike) -> Vectors:
    """Several unit embeddings of one face (a shopper's templates, a visit's frames) as one:
    their mean, scaled to unit length. Noise that differs between them averages out, so the
    fused row scores a new capture of the same face higher than a single template does, and
    each shopper is one comparison instead of several (the risk rule counts comparisons)."""
    block = np.asarray(rows, dtype=np.float64)
    if block.ndim != 2 or block.shape[0] == 0:
        raise ValueError("fusing needs a (k, d) array of at least one row")
    mean = block.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError("these templates cannot be fused")
    fused: Vectors = (mean / norm).astype(np.float32)[None, :]
    return fused


def fuse_by_owner(rows: npt.ArrayLike, owners: npt.ArrayLike) -> tuple[Vectors, RowIndex]:
    """`fuse` per owner of many rows at once: (fused rows, owner of each), owners ascending."""
    block = np.asarray(rows, dtype=np.float32)
    owner_index = np.asarray(owners, dtype=np.int64)
    if block.ndim != 2 or owner_index.shape != (block.shape[0],):
        raise ValueError("owners must be one integer per row")
    if block.shape[0] == 0:
        return np.empty((0, block.shape[1]), np.float32), np.empty(0, np.int64)
    if np.any(np.diff(owner_index) < 0):
        order = np.argsort(owner_index, kind="stable")
        block, owner_index = block[order], owner_index[order]
    starts = np.flatnonzero(np.r_[True, np.diff(owner_index) != 0])
    sizes = np.diff(np.r_[starts, owner_index.size])
    if np.all(sizes == sizes[0]):  # every owner has as many rows: a view, summed at once
        sums = block.reshape(starts.size, int(sizes[0]), block.shape[1]).sum(axis=1)
    else:
        sums = np.empty((starts.size, block.shape[1]), np.float32)
        for size in np.unique(sizes).tolist():
            # A shopper has 3 to 8 rows: add the i-th row of every owner of this size, in
            # chunks (np.add.reduceat is several times slower over a million owners).
            groups = np.flatnonzero(sizes == size)
            for first in range(0, groups.size, _FUSE_CHUNK):
                chunk = groups[first : first + _FUSE_CHUNK]
                total = block[starts[chunk]]
                for offset in range(1, size):
                    total += block[starts[chunk] + offset]
                sums[chunk] = total
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("these templates cannot be fused")
    return sums / norms, owner_index[starts]


class GalleryIndex:
    """Templates of one pack, searchable by shopper (see the module docstring)."""

    def __init__(self, dimension: int) -> None:
        if dimension <= 0:
            raise ValueError("the dimension must be positive")
        self.dimension = dimension
        self._write_lock = threading.Lock()  # serialises writers (may be held for seconds)
        self._state_lock = threading.Lock()  # publishes a snapshot with its slot lookup
        self._snapshot = _empty_snapshot(dimension)
        self._slot_of: dict[str, int] = {}
        # Row numbering generation: bumped whenever rows are renumbered (bulk load, compaction).
        self._layout = 0
        self._background: threading.Thread | None = None  # quantising after a bulk load
        self._faiss: Any = _load_faiss()
        # Product quantisation pairs dimensions; without faiss every search is exhaustive.
        self._can_quantise = self._faiss is not None and dimension % 2 == 0

    # ------------------------------------------------------------------ inspection

    def __len__(self) -> int:
        """Shoppers with at least one template."""
        return self._snapshot.shoppers

    def __contains__(self, shopper_id: object) -> bool:
        return shopper_id in self._slot_of

    @property
    def template_count(self) -> int:
        return self._snapshot.live_rows

    @property
    def approximate(self) -> bool:
        """Whether searches go through the quantised shortlist (large galleries)."""
        return self._snapshot.quantised is not None

    # ------------------------------------------------------------------ validation

    def _as_templates(self, vectors: npt.ArrayLike, *, allow_empty: bool) -> Vectors:
        array = np.asarray(vectors)
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError("templates must be floating point")
        if array.ndim != 2 or array.shape[1] != self.dimension:
            raise ValueError(f"templates must be a (k, {self.dimension}) array")
        if array.shape[0] == 0 and not allow_empty:
            raise ValueError("at least one template is needed")
        rows = np.ascontiguousarray(array, dtype=np.float32)
        if not _all_finite(rows):
            raise ValueError("templates must be finite")
        return rows

    def _as_probe(self, probe: npt.ArrayLike) -> Vectors:
        array = np.asarray(probe)
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError("a probe must be floating point")
        if array.shape not in ((self.dimension,), (1, self.dimension)):
            raise ValueError(f"a probe must be a vector of {self.dimension} values")
        query = np.ascontiguousarray(array.reshape(-1), dtype=np.float32)
        if not np.isfinite(query).all():
            raise ValueError("a probe must be finite")
        return query

    # ------------------------------------------------------------------ writing

    def add(self, shopper_id: str, vectors: npt.ArrayLike) -> None:
        """Add a shopper's templates, (k, d); replaces the shopper's templates if present."""
        rows = self._as_templates(vectors, allow_empty=False)
        if rows.shape[0] > MAX_TEMPLATES_PER_SHOPPER:
            raise ValueError(f"at most {MAX_TEMPLATES_PER_SHOPPER} templates per shopper")
        added = rows.shape[0]
        with self._write_lock:
            snap = self._snapshot
            alive = snap.alive
            shoppers, live_rows = snap.shoppers, snap.live_rows
            previous = self._slot_of.get(shopper_id)
            if previous is not None:
                alive = alive.copy()
                start, length = int(snap.starts[previous]), int(snap.lengths[previous])
                alive[start : start + length] = False
                shoppers, live_rows = shoppers - 1, live_rows - length
            vectors_, owners, alive = self._room_for_rows(snap, alive, added)
            starts, lengths = self._room_for_slot(snap)
            count, slot = snap.count, snap.slots
            # Rows past `count` and slots past `slots` are invisible to published snapshots.
            vectors_[count : count + added] = rows
            owners[count : count + added] = slot
            alive[count : count + added] = True
            starts[slot] = count
            lengths[slot] = added
            snap.ids.append(shopper_id)
            fresh = replace(
                snap,
                count=count + added,
                vectors=vectors_,
                owners=owners,
                alive=alive,
                starts=starts,
                lengths=lengths,
                slots=slot + 1,
                shoppers=shoppers + 1,
                live_rows=live_rows + added,
                per_shopper_max=max(snap.per_shopper_max, added),
            )
            with self._state_lock:
                self._slot_of[shopper_id] = slot
                self._snapshot = fresh
            self._maintain()

    def _room_for_rows(
        self, snap: _Snapshot, alive: npt.NDArray[np.bool_], extra: int
    ) -> tuple[Vectors, npt.NDArray[np.int32], npt.NDArray[np.bool_]]:
        needed = snap.count + extra
        capacity = snap.vectors.shape[0]
        if needed <= capacity:
            return snap.vectors, snap.owners, alive
        capacity = max(needed, capacity + capacity // 2, _GROWTH_MIN)
        vectors = np.empty((capacity, self.dimension), np.float32)
        vectors[: snap.count] = snap.vectors[: snap.count]
        owners = np.empty(capacity, np.int32)
        owners[: snap.count] = snap.owners[: snap.count]
        grown = np.zeros(capacity, np.bool_)
        grown[: snap.count] = alive[: snap.count]
        return vectors, owners, grown

    @staticmethod
    def _room_for_slot(
        snap: _Snapshot,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        capacity = snap.starts.shape[0]
        if snap.slots < capacity:
            return snap.starts, snap.lengths
        capacity = max(snap.slots + 1, capacity + capacity // 2, _GROWTH_MIN)
        starts = np.zeros(capacity, np.int64)
        starts[: snap.slots] = snap.starts[: snap.slots]
        lengths = np.zeros(capacity, np.int32)
        lengths[: snap.slots] = snap.lengths[: snap.slots]
        return starts, lengths

    def remove(self, shopper_id: str) -> bool:
        """Remove a shopper's templates; False if the shopper was not here."""
        with self._write_lock:
            slot = self._slot_of.get(shopper_id)
            if slot is None:
                return False
            snap = self._snapshot
            start, length = int(snap.starts[slot]), int(snap.lengths[slot])
            alive = snap.alive.copy()
            alive[start : start + length] = False
            fresh = replace(
                snap, alive=alive, shoppers=snap.shoppers - 1, live_rows=snap.live_rows - length
            )
            with self._state_lock:
                del self._slot_of[shopper_id]
                self._snapshot = fresh
            self._maintain()
            return True

    def bulk_load(
        self,
        shopper_ids: Sequence[str],
        vectors: npt.ArrayLike | RowBuffer,
        owners: npt.ArrayLike,
        *,
        background: bool = False,
    ) -> None:
        """Replace the contents (cold start): row ``i`` of `vectors` belongs to
        ``shopper_ids[owners[i]]``. Rows grouped by owner (as the store returns them) are
        taken as they are; otherwise they are sorted by owner first. A `RowBuffer` becomes the
        storage (no copy) when its rows are sorted by owner. With `background`, a large
        gallery is quantised in a thread (see the module docstring; `wait_quantised`)."""
        storage = None
        if isinstance(vectors, RowBuffer):
            if vectors.dimension != self.dimension:
                raise ValueError(f"templates must be a (k, {self.dimension}) array")
            storage, count = vectors._take()
            rows = storage[:count]
            if not _all_finite(rows):
                raise ValueError("templates must be finite")
        else:
            rows = self._as_templates(vectors, allow_empty=True)
        owner_index = np.asarray(owners)
        if not np.issubdtype(owner_index.dtype, np.integer) or owner_index.shape != (
            rows.shape[0],
        ):
            raise ValueError("owners must be integers, one per template")
        owner_index = owner_index.astype(np.int64, copy=False)
        if owner_index.size and (
            int(owner_index.min()) < 0 or int(owner_index.max()) >= len(shopper_ids)
        ):
            raise ValueError("owners must index shopper_ids")
        with self._write_lock:
            started = time.perf_counter()
            snap, slot_of = self._assemble(
                list(shopper_ids), rows, owner_index, storage=storage, quantise=not background
            )
            with self._state_lock:
                self._slot_of = slot_of
                self._snapshot = snap
                self._layout += 1
            if background and self._can_quantise and snap.count >= EXACT_MAX_TEMPLATES:
                self._quantise_in_background(snap)
            if snap.count:
                path = "quantised shortlist" if snap.quantised is not None else "exhaustive"
                if self._background is not None:
                    path = "exhaustive until quantised in the background"
                logger.info(
                    "gallery index loaded: %d templates of %d shoppers in %.2f s (%s)",
                    snap.live_rows,
                    snap.shoppers,
                    time.perf_counter() - started,
                    path,
                )

    def wait_quantised(self, timeout: float | None = None) -> bool:
        """Wait for a background quantisation (if any) to finish; whether it has."""
        thread = self._background
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _quantise_in_background(self, snap: _Snapshot) -> None:
        """Start building the quantised index of ``snap`` (the caller holds the write lock)."""
        layout = self._layout

        def build() -> None:
            try:
                quantised = self._quantise(snap)
            except Exception:  # searches stay exhaustive; the next write retries
                logger.exception("gallery index: background quantisation failed")
                quantised = None
            with self._write_lock:
                if self._background is threading.current_thread():
                    self._background = None
                current = self._snapshot
                if quantised is not None and self._layout == layout and current.quantised is None:
                    self._publish_quantised(quantised)
                    self._maintain()  # the rows added meanwhile, a shrunken gallery

        self._background = threading.Thread(target=build, name="gallery-quantise", daemon=True)
        self._background.start()

    def _assemble(
        self,
        ids: list[str],
        rows: Vectors,
        owners: RowIndex,
        *,
        storage: Vectors | None = None,
        quantise: bool = True,
    ) -> tuple[_Snapshot, dict[str, int]]:
        """A fresh snapshot (and quantised index, if large and `quantise`) from rows and their
        owners; `storage` (whose first rows are `rows`) is kept as it is if they are sorted."""
        count = rows.shape[0]
        lengths = np.bincount(owners, minlength=len(ids)).astype(np.int32)
        slot_of = {ids[slot]: slot for slot in np.flatnonzero(lengths).tolist()}
        shoppers = int(np.count_nonzero(lengths))
        if len(slot_of) != shoppers:
            raise ValueError("shopper_ids has duplicates")
        starts = np.zeros(len(ids), np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        grouped = bool(np.all(owners[1:] >= owners[:-1]))
        if storage is not None and grouped:
            vectors = storage
        else:
            vectors = np.empty((_with_spare(count), self.dimension), np.float32)
        capacity = vectors.shape[0]
        owner_rows = np.empty(capacity, np.int32)
        if count and grouped:
            if vectors is not storage:
                vectors[:count] = rows
            owner_rows[:count] = owners
        elif count:
            order = np.argsort(owners, kind="stable")
            np.take(rows, order, axis=0, out=vectors[:count])
            owner_rows[:count] = owners[order]
        alive = np.zeros(capacity, np.bool_)
        alive[:count] = True
        snap = _Snapshot(
            count=count,
            vectors=vectors,
            owners=owner_rows,
            alive=alive,
            starts=starts,
            lengths=lengths,
            ids=ids,
            slots=len(ids),
            shoppers=shoppers,
            live_rows=count,
            per_shopper_max=int(lengths.max()) if lengths.size else 0,
            quantised=None,
        )
        if quantise and self._can_quantise and count >= EXACT_MAX_TEMPLATES:
            snap = replace(snap, quantised=self._quantise(snap))
        return snap, slot_of

    # ------------------------------------------------------------------ maintenance

    def _maintain(self) -> None:
        """Keep the quantised index in step (called by writers, under the write lock)."""
        snap = self._snapshot
        quantised = snap.quantised
        if snap.dead_rows > max(TAIL_MAX, snap.count // 4):
            self._compact()
        elif quantised is None:
            background = self._background  # it publishes, then maintains (not across a fork)
            building = background is not None and background.is_alive()
            if self._can_quantise and snap.live_rows >= EXACT_MAX_TEMPLATES and not building:
                self._publish_quantised(self._quantise(snap))
        elif snap.live_rows < EXACT_MAX_TEMPLATES // 2:
            self._publish_quantised(None)
        elif snap.live_rows >= 2 * quantised.trained_on:
            self._publish_quantised(self._quantise(snap))
        elif snap.count - quantised.rows > TAIL_MAX:
            self._publish_quantised(self._extend(quantised, snap))

    def _publish_quantised(self, quantised: _Quantised | None) -> None:
        with self._state_lock:
            self._snapshot = replace(self._snapshot, quantised=quantised)

    def _compact(self) -> None:
        snap = self._snapshot
        started = time.perf_counter()
        live = np.flatnonzero(snap.alive[: snap.count])
        old_slots, owners = np.unique(snap.owners[live], return_inverse=True)
        ids = [snap.ids[slot] for slot in old_slots.tolist()]
        fresh, slot_of = self._assemble(ids, snap.vectors[live], owners.astype(np.int64))
        with self._state_lock:
            self._slot_of = slot_of
            self._snapshot = fresh
            self._layout += 1
        logger.info(
            "gallery index compacted: %d templates kept of %d in %.2f s",
            live.size,
            snap.count,
            time.perf_counter() - started,
        )

    def _quantise(self, snap: _Snapshot) -> _Quantised:
        """Train a product quantiser on a sample of live rows and encode rows [0, count)."""
        faiss = self._faiss
        started = time.perf_counter()
        rows = snap.vectors[: snap.count]
        live = np.flatnonzero(snap.alive[: snap.count])
        if live.size > TRAIN_SAMPLE:
            live = np.sort(np.random.default_rng(0).choice(live, TRAIN_SAMPLE, replace=False))
        flat = faiss.IndexPQ(self.dimension, self.dimension // 2, 4, faiss.METRIC_INNER_PRODUCT)
        flat.pq.cp.niter = TRAIN_ITERATIONS
        with _one_omp_thread(faiss):
            flat.train(np.ascontiguousarray(rows[live]))

        def encode(start: int) -> npt.NDArray[np.uint8]:
            with _one_omp_thread(faiss):
                codes: npt.NDArray[np.uint8] = flat.sa_encode(rows[start : start + _ENCODE_CHUNK])
            return codes

        with ThreadPoolExecutor(_worker_count(), thread_name_prefix="gallery-encode") as pool:
            for codes in pool.map(encode, range(0, snap.count, _ENCODE_CHUNK)):
                flat.add_sa_codes(codes)
        index = faiss.IndexPQFastScan(flat)
        logger.info(
            "gallery index quantised: %d templates in %.2f s",
            snap.count,
            time.perf_counter() - started,
        )
        return _Quantised(index=index, rows=snap.count, trained_on=snap.live_rows)

    def _extend(self, quantised: _Quantised, snap: _Snapshot) -> _Quantised:
        """A copy of the quantised index that also covers the tail (searches keep the old)."""
        faiss = self._faiss
        index = faiss.clone_index(quantised.index)
        with _one_omp_thread(faiss):
            index.add(snap.vectors[quantised.rows : snap.count])
        return replace(quantised, index=index, rows=snap.count)

    # ------------------------------------------------------------------ searching

    def search(
        self,
        probe: npt.ArrayLike,
        k: int = 2,
        restrict_to: Collection[str] | None = None,
        exhaustive_below: float | None = None,
    ) -> list[Candidate]:
        """The k best distinct shoppers for a probe, best first, with exact scores.

        `restrict_to`: search only those shoppers (exactly). `exhaustive_below`: if the best
        score found through the quantised shortlist is below it, search exhaustively."""
        query = self._as_probe(probe)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError("k must be a positive integer")
        if restrict_to is not None:
            if isinstance(restrict_to, str):
                raise ValueError("restrict_to must be a collection of shopper ids")
            with self._state_lock:
                snap = self._snapshot
                slots = [self._slot_of[s] for s in restrict_to if s in self._slot_of]
            return self._best_shoppers(snap, np.asarray(slots, np.int64), query, k)
        snap = self._snapshot
        if snap.quantised is None:
            return self._exhaustive(snap, query, k)
        found = self._shortlisted(snap, snap.quantised, query, k)
        if exhaustive_below is not None and (not found or found[0].score < exhaustive_below):
            return self._exhaustive(snap, query, k, found)
        return found

    def _exhaustive(
        self, snap: _Snapshot, query: Vectors, k: int, known: Sequence[Candidate] = ()
    ) -> list[Candidate]:
        """Every row scored. Given `known`, k shoppers with exact scores, the k best shoppers
        all have a row scoring at least the k-th known score: only those rows are re-ranked
        (cheaper than selecting the top rows of a million)."""
        if len(known) < k:
            return self._best_shoppers(snap, self._top_rows_slots(snap, 0, query, k), query, k)
        scores = snap.vectors[: snap.count] @ query
        # The slack covers float32 rounding of this product against the float64 re-rank.
        rows = np.flatnonzero(scores >= known[-1].score - _FLOOR_SLACK)
        rows = rows[snap.alive[rows]]
        return self._best_shoppers(snap, snap.owners[rows].astype(np.int64), query, k)

    def _top_rows_slots(self, snap: _Snapshot, first: int, query: Vectors, k: int) -> RowIndex:
        """Slots owning the best rows in [first, count): enough rows for the k best shoppers
        (the k-th best shopper's best row ranks at most (k - 1) x per_shopper_max + 1)."""
        span = snap.count - first
        if span <= 0:
            return np.zeros(0, np.int64)
        scores = snap.vectors[first : snap.count] @ query
        alive = snap.alive[first : snap.count]
        if snap.dead_rows:
            scores[~alive] = -np.inf
        take = min(span, k * max(1, snap.per_shopper_max))
        top = (
            np.argpartition(scores, span - take)[span - take :] if take < span else np.arange(span)
        )
        top = top[alive[top]]
        return snap.owners[first + top].astype(np.int64)

    def _shortlisted(
        self, snap: _Snapshot, quantised: _Quantised, query: Vectors, k: int
    ) -> list[Candidate]:
        _, labels = quantised.index.search(query[None, :], min(SHORTLIST, quantised.rows))
        rows = labels[0]
        rows = rows[rows >= 0]
        slots = np.concatenate(
            [
                snap.owners[rows].astype(np.int64),
                self._top_rows_slots(snap, quantised.rows, query, k),
            ]
        )
        return self._best_shoppers(snap, slots, query, k)

    @staticmethod
    def _best_shoppers(snap: _Snapshot, slots: RowIndex, query: Vectors, k: int) -> list[Candidate]:
        """Score every template of the given live slots exactly; the k best shoppers."""
        slots = np.unique(slots)
        slots = slots[(slots >= 0) & (slots < snap.slots)]
        lengths = snap.lengths[slots].astype(np.int64)
        slots, lengths = slots[lengths > 0], lengths[lengths > 0]
        starts = snap.starts[slots]
        keep = snap.alive[starts]
        slots, lengths, starts = slots[keep], lengths[keep], starts[keep]
        if slots.size == 0:
            return []
        ends = np.cumsum(lengths)
        firsts = ends - lengths
        rows = np.arange(int(ends[-1]), dtype=np.int64) + np.repeat(starts - firsts, lengths)
        # Accumulated in float64 and rounded once: the score of a template does not depend on
        # which other rows were scored with it (a float32 BLAS product's last bit can).
        scores = snap.vectors[rows].astype(np.float64) @ query.astype(np.float64)
        best = np.maximum.reduceat(scores, firsts).astype(np.float32)
        order = np.argsort(-best, kind="stable")[:k]
        return [Candidate(snap.ids[int(slots[i])], float(best[i])) for i in order.tolist()]
