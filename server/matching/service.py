"""The gallery this process matches against: one in-memory index per pack, kept in step with
the database through the change feed, and the one place a face is searched.

Only three callers exist, by design: enrollment (is this face already enrolled?), payment and
deletion at a kiosk. Every search is audited by its caller with the outcome only.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models.manifest import Calibration, PackManifest, bundled_manifests
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
from server.matching._coldstart import (
    ChunkResult,
    Row,
    decrypt_chunk,
    decrypt_in_worker,
    decrypt_packed_in_worker,
    init_worker,
    pack_rows,
)
from server.matching.decision import Decision, decide
from server.matching.index import GalleryIndex
from server.matching.models import GalleryChange
from server.shoppers.models import Shopper

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "facepay_gallery"


_SQLITE_SCAN_MMAP = 1 << 32


def _record(wrapped: WrappedKey) -> WrappedKeyRecord:
    return (wrapped.master_key_id, wrapped.data_key_id, wrapped.ciphertext, wrapped.version)


class GalleryUnavailable(RuntimeError):
    """The gallery cannot be searched (the key store is unreachable): refuse, never guess."""


# A shopper active in the database without a data key: the usual cause is a database restored
# from a backup taken before their deletion. The gallery still refuses to start (fail closed),
# but says how to finish those deletions.
_KEY_MISSING = (
    "an active shopper has no data key (deleted after this database was backed up?); "
    "`facepay server purge` finishes such deletions"
)


@dataclass(frozen=True)
class PackPolicy:
    manifest: PackManifest
    calibration: Calibration


def known_packs() -> dict[str, PackPolicy]:
    """Packs the server accepts templates of: those with calibrated operating points."""
    packs = {}
    for manifest in bundled_manifests().values():
        if manifest.calibration is not None:
            packs[manifest.ref] = PackPolicy(manifest, manifest.calibration)
    return packs


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
        self._indexes = {
            ref: GalleryIndex(p.manifest.embedding_size) for ref, p in self.packs.items()
        }
        self._last_seq = 0
        self._sync_lock = threading.Lock()
        self.loaded = False

    # ---------------------------------------------------------------- loading and syncing

    # Cold start in worker processes from this many active shoppers (with 2+ CPUs). Off by
    # default: on 2 cores it measured slower than one process (27.3 s against 24.2 s for
    # 1M templates), the parent's row fetching being the bottleneck; more cores may differ.
    parallel_from_shoppers: int | None = None
    _CHUNK_ROWS = 24_000

    def load(self, session: Session) -> None:
        """Cold start: decrypt every active shopper's templates into the indexes.

        Reads the key store in one go when it can (`BulkKeyStore`), the templates in one
        sequential scan through the database driver's cursor, in chunks, and decrypts the
        chunks in worker processes for a large gallery (in this process for a small one).
        """
        started = time.perf_counter()
        self._last_seq = session.scalar(select(func.max(GalleryChange.seq))) or 0
        active = set(session.scalars(select(Shopper.id).where(Shopper.status == "active")))
        total = len(active)
        records = self._bulk_key_records()
        dimensions = {ref: index.dimension for ref, index in self._indexes.items()}
        owners: dict[str, list[str]] = {ref: [] for ref in self._indexes}
        vectors: dict[str, list[bytes]] = {ref: [] for ref in self._indexes}
        seen: set[str] = set()
        step, done = max(1, total // 10), 0

        def collect(result: ChunkResult, shoppers: int) -> None:
            nonlocal done
            for ref, (chunk_owners, chunk_vectors) in result.items():
                owners[ref] += chunk_owners
                vectors[ref].append(chunk_vectors)
            for mark in range(done // step + 1, (done + shoppers) // step + 1):
                logger.info("gallery: decrypted %d of %d shoppers", mark * step, total)
            done += shoppers

        pool = self._cold_start_pool(total)
        try:
            pending: deque[tuple[Future[ChunkResult], int]] = deque()
            for chunk in self._template_rows(session):
                rows = [row for row in chunk if row[0] in active and row[2] in dimensions]
                needed = {row[0] for row in rows}
                shoppers = len(needed - seen)
                seen |= needed
                keys = self._chunk_keys(records, needed)
                if pool is None:
                    collect(decrypt_chunk(self._masters, rows, keys, dimensions), shoppers)
                    continue
                packed = pack_rows(rows)
                future = (
                    pool.submit(decrypt_packed_in_worker, packed, keys, dimensions)
                    if packed is not None
                    else pool.submit(decrypt_in_worker, rows, keys, dimensions)
                )
                pending.append((future, shoppers))
                while len(pending) > 2 * self._workers():
                    future, count = pending.popleft()
                    collect(self._chunk_result(future), count)
            while pending:
                future, count = pending.popleft()
                collect(self._chunk_result(future), count)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        del records, active, seen
        for ref, row_owners in owners.items():
            if not row_owners:
                continue
            slots = {shopper_id: slot for slot, shopper_id in enumerate(dict.fromkeys(row_owners))}
            owner_rows = np.fromiter(
                map(slots.__getitem__, row_owners), dtype=np.int64, count=len(row_owners)
            )
            matrix = np.frombuffer(b"".join(vectors[ref]), dtype="<f4").reshape(-1, dimensions[ref])
            vectors[ref].clear()
            self._indexes[ref].bulk_load(list(slots), matrix, owner_rows)
        self.loaded = True
        logger.info(
            "gallery loaded: %s in %.1f s",
            ", ".join(f"{ref} {len(index)} shoppers" for ref, index in self._indexes.items()),
            time.perf_counter() - started,
        )

    def _bulk_key_records(self) -> dict[str, WrappedKeyRecord] | None:
        """Every wrapped key, read in one go, if the key store can; else None (one `get` each)."""
        if not isinstance(self._key_store, BulkKeyStore):
            return None
        try:
            return self._key_store.wrapped_key_records()
        except KeyStoreError as exc:
            raise GalleryUnavailable("the shopper key store cannot be read") from exc

    def _chunk_keys(
        self, records: dict[str, WrappedKeyRecord] | None, shopper_ids: set[str]
    ) -> dict[str, WrappedKeyRecord]:
        try:
            if records is None:
                return {
                    shopper_id: _record(self._key_store.get(shopper_id))
                    for shopper_id in shopper_ids
                }
            if not records.keys() >= shopper_ids:  # dict_keys: no copy of the key store
                raise KeyNotFoundError("no wrapped key for this shopper")
        except KeyNotFoundError as exc:
            raise GalleryUnavailable(_KEY_MISSING) from exc
        except KeyStoreError as exc:
            raise GalleryUnavailable("the shopper key store cannot be read") from exc
        return {shopper_id: records[shopper_id] for shopper_id in shopper_ids}

    @staticmethod
    def _chunk_result(future: Future[ChunkResult]) -> ChunkResult:
        try:
            return future.result()
        except KeyNotFoundError as exc:
            raise GalleryUnavailable(_KEY_MISSING) from exc
        except KeyStoreError as exc:  # a malformed key record, found by a worker
            raise GalleryUnavailable("the shopper key store cannot be read") from exc

    def _template_rows(self, session: Session) -> Iterator[list[Row]]:
        """Every template, in chunks, in one sequential scan through the driver's cursor (in the
        session's transaction): no join (the caller filters on the active shoppers, which a
        join would make an index lookup per row), no ORM or Core row objects."""
        statement = select(Template.shopper_id, Template.id, Template.pack, Template.ciphertext)
        connection = session.connection()
        sql = str(statement.compile(dialect=connection.dialect))
        cursor = connection.connection.cursor()
        sqlite = connection.dialect.name == "sqlite"
        previous = None
        try:
            if sqlite:  # read the file through a memory map for this scan (fewer syscalls)
                cursor.execute("PRAGMA mmap_size")
                previous = cursor.fetchone()
                cursor.execute(f"PRAGMA mmap_size = {_SQLITE_SCAN_MMAP}")
            cursor.execute(sql)
            while fetched := cursor.fetchmany(self._CHUNK_ROWS):
                rows: list[Row] = list(fetched)
                if not isinstance(rows[0][3], bytes):  # e.g. a driver returning memoryview
                    rows = [(a, b, c, bytes(d)) for a, b, c, d in rows]
                yield rows
        finally:
            if sqlite and previous is not None:
                cursor.execute(f"PRAGMA mmap_size = {int(previous[0])}")
            cursor.close()

    @staticmethod
    def _workers() -> int:
        return min(2, os.cpu_count() or 1)

    def _cold_start_pool(self, shoppers: int) -> ProcessPoolExecutor | None:
        workers = self._workers()
        if (
            self.parallel_from_shoppers is None
            or shoppers < self.parallel_from_shoppers
            or workers < 2
        ):
            return None
        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=([(key_id, master.key) for key_id, master in self._masters.items()],),
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
            np.stack([self._decrypt(key, shopper_id, tid, pack, ct) for tid, ct in rows]),
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

    def is_enrolled(self, pack: str, probes: Iterable[npt.NDArray[np.float32]]) -> bool:
        """Whether any probe matches an enrolled shopper at the pack's no-impostor threshold."""
        threshold = self.packs[pack].calibration.default_threshold
        index = self._indexes[pack]
        for probe in probes:
            found = index.search(probe, k=1, exhaustive_below=threshold)
            if found and found[0].score >= threshold:
                return True
        return False

    def identify(
        self, pack: str, probe: npt.NDArray[np.float32], restrict_to: Collection[str] | None = None
    ) -> Decision:
        """Top-2 search and the decision (match, no match, step-up). Scores stay in here."""
        from server.observability import observe_match  # counts and timings only

        started = time.perf_counter()
        policy = self.packs[pack]
        index = self._indexes[pack]
        restricted = restrict_to is not None
        floor = policy.calibration.threshold(self._settings.match_fmr)
        candidates = index.search(probe, k=2, restrict_to=restrict_to, exhaustive_below=floor)
        gallery_size = len(restrict_to) if restrict_to is not None else len(index)
        # A match needs the threshold at the configured FMR; the FPIR estimate uses the
        # strictest calibrated point the best score passes (N x that point's FMR).
        best = candidates[0].score if candidates else -1.0
        passed = [p for p in policy.calibration.points if floor <= p.threshold <= best]
        threshold, fmr = (floor, self._settings.match_fmr)
        if passed:
            strictest = max(passed, key=lambda p: p.threshold)
            threshold, fmr = strictest.threshold, strictest.fmr
        decision = decide(
            candidates,
            threshold=threshold,
            margin=self._settings.match_margin,
            gallery_size=gallery_size,
            fmr=fmr,
            target_fpir=self._settings.target_fpir,
            restricted=restricted,
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
