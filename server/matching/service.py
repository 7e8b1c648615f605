"""The gallery this process matches against: one in-memory index per pack, kept in step with
the database through the change feed, and the one place a face is searched.

Only three callers exist, by design: enrollment (is this face already enrolled?), payment and
deletion at a kiosk. Every search is audited by its caller with the outcome only.

The index keeps one row per shopper: their templates fused (`index.fuse`, the unit mean).
The pack's score curves, from which the risk rule sets every threshold, are drawn for exactly
that comparison (one capture against a fused enrolment), and each shopper is then one
comparison, not three to five.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models.manifest import Calibration, PackManifest, ScoreCurves, bundled_manifests
from server.config import Settings
from server.crypto import (
    BulkKeyStore,
    DataKey,
    KeyNotFoundError,
    KeyStore,
    KeyStoreError,
    MasterKey,
    WrappedKey,
    WrappedKeyRecord,
    open_,
    template_associated_data,
    unwrap_data_key,
)
from server.enrollment.models import Template
from server.matching import risk
from server.matching._coldstart import (
    ChunkResult,
    ShopperChunk,
    decrypt_chunk,
    decrypt_in_worker,
    init_worker,
    prepare_scan,
    template_rows,
)
from server.matching.decision import Decision, search_and_decide
from server.matching.index import GalleryIndex, RowBuffer, fuse
from server.matching.models import GalleryChange
from server.shoppers.models import Shopper

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "facepay_gallery"
# Ladder answers kept (per pack, gallery size and minimum rung) before starting afresh.
_RUNGS_REMEMBERED = 256


def _record(wrapped: WrappedKey) -> WrappedKeyRecord:
    return (wrapped.master_key_id, wrapped.data_key_id, wrapped.ciphertext, wrapped.version)


def _close_pool(pool: ProcessPoolExecutor, *, failed: bool) -> None:
    """Shut the cold start's workers down. After a failure they are killed first: a worker
    killed while it held the pool's queue lock leaves the others blocked on it for ever, and
    a clean shutdown would wait for them."""
    if failed:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            if process.is_alive():
                process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


class GalleryUnavailable(RuntimeError):
    """The gallery cannot be searched (the key store is unreachable): refuse, never guess."""


# A shopper active in the database without a data key: the usual cause is a database restored
# from a backup taken before their deletion. The gallery still refuses to start (fail closed),
# but says how to finish those deletions.
_KEY_MISSING = (
    "an active shopper has no data key (deleted after this database was backed up?); "
    "once the key store is confirmed to be the right one, "
    "`facepay server purge --finish-deletions` finishes such deletions"
)


@contextmanager
def _fail_closed() -> Iterator[None]:
    """A chunk's key errors as the gallery's (the caller refuses to serve without it)."""
    try:
        yield
    except KeyNotFoundError as exc:
        raise GalleryUnavailable(_KEY_MISSING) from exc
    except KeyStoreError as exc:  # a malformed key record
        raise GalleryUnavailable("the shopper key store cannot be read") from exc


class _Collected:
    """Chunk results in chunk order: per pack, each template's owner (its shopper's position
    in the active shoppers) and the vectors, copied into the index's future storage as
    they come; logs progress every tenth of the way."""

    def __init__(self, dimensions: dict[str, int], total: int, expected_rows: int) -> None:
        self._dimensions = dimensions
        self._expected_rows = expected_rows
        self._owners: dict[str, list[npt.NDArray[np.int64]]] = {ref: [] for ref in dimensions}
        self._rows: dict[str, RowBuffer] = {}
        self._total, self._done = total, 0
        self._step = max(1, total // 10)

    def add(self, chunk: ShopperChunk, result: ChunkResult) -> None:
        for ref, (owners, vectors) in result.items():
            if not owners:
                continue
            self._owners[ref].append(np.frombuffer(owners, dtype=np.int32) + np.int64(self._done))
            rows = self._rows.get(ref)
            if rows is None:
                rows = self._rows[ref] = RowBuffer(self._dimensions[ref], self._expected_rows)
            rows.append(vectors)
        count = len(chunk[0])
        for mark in range(self._done // self._step + 1, (self._done + count) // self._step + 1):
            logger.info("gallery: decrypted %d of %d shoppers", mark * self._step, self._total)
        self._done += count

    def packs(self) -> Iterator[tuple[str, npt.NDArray[np.float32], npt.NDArray[np.int64]]]:
        """Per pack with templates: one fused row per shopper and the owner of each."""
        for ref, rows in self._rows.items():
            fused, owners = rows.fused(np.concatenate(self._owners[ref]))
            yield ref, fused, owners


@dataclass(frozen=True)
class PackPolicy:
    manifest: PackManifest
    calibration: Calibration
    curves: ScoreCurves


def known_packs() -> dict[str, PackPolicy]:
    """Packs the server accepts templates of: those calibrated with score curves (without
    them no threshold can be set from the risk targets)."""
    packs = {}
    for manifest in bundled_manifests().values():
        calibration = manifest.calibration
        if calibration is not None and calibration.curves is not None:
            packs[manifest.ref] = PackPolicy(manifest, calibration, calibration.curves)
    return packs


def risk_targets(settings: Settings) -> risk.RiskTargets:
    """The risk rule's targets and assumptions, from the settings."""
    return risk.RiskTargets(
        wrong_wallet=settings.risk_wrong_wallet,
        stranger=settings.risk_stranger,
        targeted=settings.risk_targeted,
        false_duplicate=settings.risk_false_duplicate,
        min_completion=settings.risk_min_completion,
        margin=settings.match_margin,
        failures_per_day=settings.step_up_failures_per_day,
        tries=settings.step_up_tries,
        mistype_rate=settings.risk_mistype_rate,
        phone_space=settings.risk_phone_space,
    )


class Gallery:
    def __init__(
        self, settings: Settings, masters: dict[str, MasterKey], key_store: KeyStore
    ) -> None:
        self._settings = settings
        self._masters = masters
        self._key_store = key_store
        self.packs = known_packs()
        for policy in self.packs.values():
            policy.calibration.threshold(settings.match_fmr)  # fails at start-up, not per request
        self.targets = risk_targets(settings)
        self._rungs: dict[tuple[str, int, risk.Rung], risk.RungRisk] = {}
        self._indexes = {
            ref: GalleryIndex(p.manifest.embedding_size) for ref, p in self.packs.items()
        }
        self._last_seq = 0
        self._sync_lock = threading.Lock()
        self.loaded = False

    # ---------------------------------------------------------------- loading and syncing

    # Cold start in worker processes from this many templates (with 2+ CPUs and a database
    # the workers can open), in chunks of this many shoppers. Each worker reads its chunks'
    # templates itself (shipping rows to workers had been slower than one process). On 2
    # cores, 1M templates: about 8 s in this process, under 5 s in workers; 150k: 1.1 s
    # against 1.5 s (starting the workers costs a few tenths of a second).
    parallel_from_templates: int | None = 300_000
    _CHUNK_SHOPPERS = 8_000

    def load(self, session: Session) -> None:
        """Cold start: decrypt every active shopper's templates into the indexes.

        Cuts the active shoppers (in id order) into chunks, reads each chunk's wrapped keys (in
        one go when the key store can, `BulkKeyStore`) and decrypts its templates, read with
        one index range query per chunk, in worker processes for a large gallery (in this
        process for a small one). The indexes are searchable on return; a large one is
        quantised in the background meanwhile (`wait_indexed`), its searches exhaustive
        (exact) until then.
        """
        started = time.perf_counter()
        self._last_seq = session.scalar(select(func.max(GalleryChange.seq))) or 0
        templates = session.scalar(select(func.count()).select_from(Template)) or 0
        pool = self._cold_start_pool(session, templates)
        try:
            if pool is not None:  # the workers start up while the shoppers are read
                for _ in range(self._workers()):
                    pool.submit(int)
            active = self._active_shoppers(session)
            dimensions = {ref: index.dimension for ref, index in self._indexes.items()}
            collected = _Collected(dimensions, len(active), templates)
            chunks = self._chunks(active)
            if pool is None:
                self._decrypt_here(session, chunks, dimensions, collected)
            else:
                self._decrypt_in_workers(pool, chunks, dimensions, collected)
        except BrokenProcessPool as exc:  # a worker killed (out of memory...)
            raise GalleryUnavailable("a cold start worker process ended") from exc
        finally:
            if pool is not None:
                _close_pool(pool, failed=sys.exc_info()[0] is not None)
        for ref, rows, owners in collected.packs():
            self._indexes[ref].bulk_load(active, rows, owners, background=True)
        self.loaded = True
        logger.info(
            "gallery loaded: %s in %.1f s",
            ", ".join(f"{ref} {len(index)} shoppers" for ref, index in self._indexes.items()),
            time.perf_counter() - started,
        )

    @staticmethod
    def _active_shoppers(session: Session) -> list[str]:
        """Active shopper ids in the database's order, so that a run of them is a range of its
        index on template owners."""
        query = select(Shopper.id).where(Shopper.status == "active")
        if session.get_bind().dialect.name == "sqlite":
            # SQLite compares text byte by byte (BINARY): the order of Python's str, and
            # sorting here is faster than its ORDER BY (a table lookup per index entry).
            return sorted(session.scalars(query))
        return list(session.scalars(query.order_by(Shopper.id)))

    def wait_indexed(self, timeout: float | None = None) -> bool:
        """Wait until the indexes a load left quantising in the background are complete
        (searches are exact meanwhile, only slower); whether they are."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return all(
            index.wait_quantised(
                None if deadline is None else max(0.0, deadline - time.monotonic())
            )
            for index in self._indexes.values()
        )

    def _chunks(self, active: list[str]) -> Iterator[ShopperChunk]:
        """The active shoppers in chunks, each with its wrapped keys, read as the chunk is
        needed (the first chunk is decrypting while the next keys are read)."""
        for first in range(0, len(active), self._CHUNK_SHOPPERS):
            shopper_ids = active[first : first + self._CHUNK_SHOPPERS]
            yield shopper_ids, self._key_records(shopper_ids)

    def _key_records(self, shopper_ids: list[str]) -> list[WrappedKeyRecord | None]:
        """The shoppers' wrapped keys (None: the store has none), read in one go when the key
        store can (`BulkKeyStore`), else one `get` each."""
        try:
            if isinstance(self._key_store, BulkKeyStore):
                found = self._key_store.wrapped_key_records(shopper_ids)
                return [found.get(shopper_id) for shopper_id in shopper_ids]
            return [self._key_record(shopper_id) for shopper_id in shopper_ids]
        except KeyStoreError as exc:
            raise GalleryUnavailable("the shopper key store cannot be read") from exc

    def _key_record(self, shopper_id: str) -> WrappedKeyRecord | None:
        try:
            return _record(self._key_store.get(shopper_id))
        except KeyNotFoundError:
            return None

    def _decrypt_here(
        self,
        session: Session,
        chunks: Iterable[ShopperChunk],
        dimensions: dict[str, int],
        collected: _Collected,
    ) -> None:
        connection = session.connection()
        sqlite = connection.dialect.name == "sqlite"
        previous = connection.exec_driver_sql("PRAGMA mmap_size").scalar() if sqlite else None
        prepare_scan(connection)
        try:
            for chunk in chunks:
                rows = template_rows(connection, chunk[0])
                with _fail_closed():
                    collected.add(chunk, decrypt_chunk(self._masters, chunk, rows, dimensions))
        finally:
            if previous is not None:
                connection.exec_driver_sql(f"PRAGMA mmap_size = {int(previous)}")

    def _decrypt_in_workers(
        self,
        pool: ProcessPoolExecutor,
        chunks: Iterable[ShopperChunk],
        dimensions: dict[str, int],
        collected: _Collected,
    ) -> None:
        pending: deque[tuple[ShopperChunk, Future[ChunkResult]]] = deque()
        for chunk in chunks:
            pending.append((chunk, pool.submit(decrypt_in_worker, chunk, dimensions)))
            if len(pending) > 2 * self._workers():
                self._collect(pending.popleft(), collected)
        while pending:
            self._collect(pending.popleft(), collected)

    @staticmethod
    def _collect(
        submitted: tuple[ShopperChunk, Future[ChunkResult]], collected: _Collected
    ) -> None:
        chunk, future = submitted
        with _fail_closed():
            collected.add(chunk, future.result())

    @staticmethod
    def _workers() -> int:
        try:
            available = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            available = os.cpu_count() or 1
        return min(4, available)

    def _cold_start_pool(self, session: Session, templates: int) -> ProcessPoolExecutor | None:
        workers = self._workers()
        url = session.connection().engine.url
        in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
        if (
            self.parallel_from_templates is None
            or templates < self.parallel_from_templates
            or workers < 2
            or in_memory
        ):
            return None
        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(
                [(key_id, master.key) for key_id, master in self._masters.items()],
                url.render_as_string(hide_password=False),
            ),
        )

    def sync(self, session: Session) -> int:
        """Apply the change feed since the last sync; returns how many changes were applied."""
        with self._sync_lock:
            changes = session.scalars(
                select(GalleryChange)
                .where(GalleryChange.seq > self._last_seq)
                .order_by(GalleryChange.seq)
            ).all()
            for change in changes:
                self._apply(session, change.kind, change.shopper_id, change.pack)
                self._last_seq = change.seq
            return len(changes)

    def apply_local(self, session: Session, kind: str, shopper_id: str, pack: str) -> None:
        """Apply a change this process just committed, without waiting for the feed."""
        with self._sync_lock:
            self._apply(session, kind, shopper_id, pack)

    def _apply(self, session: Session, kind: str, shopper_id: str, pack: str) -> None:
        index = self._indexes.get(pack)
        if index is None:
            return
        if kind == "remove_shopper":
            index.remove(shopper_id)
            return
        if shopper_id in index:
            return
        rows = session.execute(
            select(Template.id, Template.ciphertext)
            .join(Shopper, Shopper.id == Template.shopper_id)
            .where(
                Template.shopper_id == shopper_id, Template.pack == pack, Shopper.status == "active"
            )
        ).all()
        if not rows:
            return
        key = self._data_key(shopper_id)
        index.add(
            shopper_id,
            fuse([self._decrypt(key, shopper_id, tid, pack, ct) for tid, ct in rows]),
        )

    def _data_key(self, shopper_id: str) -> DataKey:
        try:
            wrapped = self._key_store.get(shopper_id)
        except KeyStoreError as exc:
            raise GalleryUnavailable("the shopper key store cannot be read") from exc
        return unwrap_data_key(self._masters, wrapped, shopper_id)

    @staticmethod
    def _decrypt(
        key: DataKey, shopper_id: str, template_id: str, pack: str, ciphertext: bytes
    ) -> npt.NDArray[np.float32]:
        raw = open_(key, bytes(ciphertext), template_associated_data(shopper_id, template_id, pack))
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)

    # ---------------------------------------------------------------- searching

    def sizes(self) -> dict[str, int]:
        """Shoppers per pack (counts only)."""
        return {ref: len(index) for ref, index in self._indexes.items()}

    def base_threshold(self, pack: str) -> float:
        """The pack's threshold at the configured FMR: no rung matches below it."""
        return self.packs[pack].calibration.threshold(self._settings.match_fmr)

    def rung(self, pack: str, minimum: risk.Rung = risk.Rung.FACE) -> risk.RungRisk:
        """The step-up rung this gallery's size calls for (`risk.ladder`), at least `minimum`.
        Chosen from sizes and settings only, before any face is searched. Remembered per
        size: every payment asks, and the answer changes only with the gallery's size."""
        key = (pack, len(self._indexes[pack]), minimum)
        found = self._rungs.get(key)
        if found is None:
            if len(self._rungs) >= _RUNGS_REMEMBERED:
                self._rungs.clear()
            found = self._rungs[key] = risk.ladder(
                self.packs[pack].curves,
                key[1],
                self.targets,
                base_threshold=self.base_threshold(pack),
                minimum=minimum,
            )
        return found

    def at_rung(self, pack: str, rung: risk.Rung) -> risk.RungRisk:
        """That rung's threshold at this gallery's size today (None: no threshold meets the
        targets, and the search matches nobody). A challenge asked yesterday for the last four
        digits is searched at the four-digit rung's threshold for today's size."""
        return risk.rung_risk(
            self.packs[pack].curves,
            rung,
            len(self._indexes[pack]),
            self.targets,
            base_threshold=self.base_threshold(pack),
        )

    def face_duplicate(self, pack: str, frames: Sequence[npt.NDArray[np.float32]]) -> str | None:
        """The shopper whose enrolled face matches these enrolment frames (fused), at the
        lowest threshold whose chance of a false duplicate at this gallery's size is within
        target; None when none matches, or when no such threshold can be shown (a large
        gallery: then no face is ever declared a duplicate)."""
        index = self._indexes[pack]
        threshold = risk.duplicate_threshold(self.packs[pack].curves, len(index), self.targets)
        if threshold is None or not len(index):
            return None
        found = index.search(fuse(np.stack(frames))[0], k=1, exhaustive_below=threshold)
        if found and found[0].score >= threshold:
            return found[0].shopper_id
        return None

    def identify(
        self,
        pack: str,
        probe: npt.NDArray[np.float32],
        rung: risk.RungRisk,
        restrict_to: Collection[str] | None = None,
    ) -> Decision:
        """Top-2 search at the rung's threshold and the decision (match, no match, step-up).
        A rung without a threshold (no threshold meets the risk targets) matches nobody.
        Scores stay in here."""
        from server.observability import observe_match  # counts and timings only

        started = time.perf_counter()
        decision = search_and_decide(
            self._indexes[pack],
            probe,
            rung,
            margin=self._settings.match_margin,
            restrict_to=restrict_to,
        )
        observe_match(self, pack, time.perf_counter() - started, decision)
        return decision


def notify(session: Session) -> None:
    """Wake the other processes' feed listeners (PostgreSQL only; sent at commit)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy import text

        session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


def record_change(session: Session, *, kind: str, shopper_id: str, pack: str) -> None:
    session.add(GalleryChange(kind=kind, shopper_id=shopper_id, pack=pack))
    notify(session)


class FeedFollower(threading.Thread):
    """Keeps a process's gallery in step: LISTEN on PostgreSQL, a polled counter on SQLite."""

    def __init__(
        self, gallery: Gallery, sessions: sessionmaker[Session], database_url: str, poll_s: float
    ) -> None:
        super().__init__(name="facepay-gallery-feed", daemon=True)
        self._gallery = gallery
        self._sessions = sessions
        self._url = database_url
        self._poll = poll_s
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._url.startswith("postgresql"):
                    self._listen()
                else:
                    self._stopping.wait(self._poll)
                    self._sync()
            except Exception as exc:  # keep following; a database restart must not end it
                logger.warning("gallery feed: %s; retrying", type(exc).__name__)
                self._stopping.wait(1.0)

    def _sync(self) -> None:
        with self._sessions() as session:
            applied = self._gallery.sync(session)
        if applied:
            logger.info("gallery feed: applied %d changes", applied)

    def _listen(self) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(self._url).set(drivername="postgresql")
        with psycopg.connect(
            url.render_as_string(hide_password=False), autocommit=True
        ) as connection:
            connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._sync()  # anything committed before LISTEN took effect
            while not self._stopping.is_set():
                for _ in connection.notifies(timeout=self._poll, stop_after=1):
                    break
                self._sync()
