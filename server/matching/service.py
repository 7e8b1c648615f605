"""The gallery this process matches against: one in-memory index per pack, kept in step with
the database through the change feed, and the one place a face is searched.

Only three callers exist, by design: enrollment (is this face already enrolled?), payment and
deletion at a kiosk. Every search is audited by its caller with the outcome only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models.manifest import Calibration, PackManifest, bundled_manifests
from server.config import Settings
from server.crypto import (
    DataKey,
    KeyStore,
    MasterKey,
    open_,
    template_associated_data,
    unwrap_data_key,
)
from server.enrollment.models import Template
from server.matching.decision import Decision, decide
from server.matching.index import GalleryIndex
from server.matching.models import GalleryChange
from server.shoppers.models import Shopper

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "facepay_gallery"


class GalleryUnavailable(RuntimeError):
    """The gallery cannot be searched (the key store is unreachable): refuse, never guess."""


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

    def load(self, session: Session) -> None:
        """Cold start: decrypt every active shopper's templates into the indexes."""
        started = time.perf_counter()
        self._last_seq = session.scalar(select(func.max(GalleryChange.seq))) or 0
        shoppers = session.scalars(select(Shopper.id).where(Shopper.status == "active")).all()
        rows = session.execute(
            select(Template.shopper_id, Template.id, Template.pack, Template.ciphertext)
            .join(Shopper, Shopper.id == Template.shopper_id)
            .where(Shopper.status == "active")
            .order_by(Template.shopper_id)
        )
        per_pack: dict[str, tuple[list[str], list[npt.NDArray[np.float32]], list[int]]] = {
            ref: ([], [], []) for ref in self._indexes
        }
        owners: dict[str, dict[str, int]] = {ref: {} for ref in self._indexes}
        current, key = None, None
        total, step = len(shoppers), max(1, len(shoppers) // 10)
        done = 0
        for shopper_id, template_id, pack, ciphertext in rows:
            if pack not in per_pack:
                continue
            if shopper_id != current:
                current, key = shopper_id, self._data_key(shopper_id)
                done += 1
                if done % step == 0:
                    logger.info("gallery: decrypted %d of %d shoppers", done, total)
            assert key is not None
            vector = self._decrypt(key, shopper_id, template_id, pack, ciphertext)
            ids, vectors, owner_rows = per_pack[pack]
            slot = owners[pack].setdefault(shopper_id, len(ids))
            if slot == len(ids):
                ids.append(shopper_id)
            vectors.append(vector)
            owner_rows.append(slot)
        for ref, (ids, vectors, owner_rows) in per_pack.items():
            if vectors:
                self._indexes[ref].bulk_load(ids, np.stack(vectors), np.asarray(owner_rows))
        self.loaded = True
        logger.info(
            "gallery loaded: %s in %.1f s",
            ", ".join(f"{ref} {len(index)} shoppers" for ref, index in self._indexes.items()),
            time.perf_counter() - started,
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
        from server.crypto import KeyStoreError

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

    def size(self, pack: str) -> int:
        return len(self._indexes[pack])

    def sizes(self) -> dict[str, int]:
        """Shoppers per pack (counts only)."""
        return {ref: len(index) for ref, index in self._indexes.items()}

    def is_enrolled(self, pack: str, probes: Iterable[npt.NDArray[np.float32]]) -> bool:
        """Whether any probe matches an enrolled shopper at the pack's no-impostor threshold."""
        policy = self.packs[pack]
        index = self._indexes[pack]
        for probe in probes:
            found = index.search(probe, k=1)
            if found and found[0].score >= policy.calibration.default_threshold:
                return True
        return False

    def identify(
        self, pack: str, probe: npt.NDArray[np.float32], restrict_to: Collection[str] | None = None
    ) -> Decision:
        """Top-2 search and the decision (match, no match, step-up). Scores stay in here."""
        policy = self.packs[pack]
        index = self._indexes[pack]
        restricted = restrict_to is not None
        candidates = index.search(probe, k=2, restrict_to=restrict_to)
        gallery_size = len(restrict_to) if restrict_to is not None else len(index)
        # A match needs the threshold at the configured FMR; the FPIR estimate uses the
        # strictest calibrated point the best score passes (N x that point's FMR).
        floor = policy.calibration.threshold(self._settings.match_fmr)
        best = candidates[0].score if candidates else -1.0
        passed = [p for p in policy.calibration.points if floor <= p.threshold <= best]
        threshold, fmr = (floor, self._settings.match_fmr)
        if passed:
            strictest = max(passed, key=lambda p: p.threshold)
            threshold, fmr = strictest.threshold, strictest.fmr
        return decide(
            candidates,
            threshold=threshold,
            margin=self._settings.match_margin,
            gallery_size=gallery_size,
            fmr=fmr,
            target_fpir=self._settings.target_fpir,
            restricted=restricted,
        )


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
