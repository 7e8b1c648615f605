"""Gallery cold start: the bulk read path loads exactly what the per-shopper path would."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from server import migrate
from server.config import load_settings
from server.crypto import (
    DataKey,
    FileKeyStore,
    InMemoryKeyStore,
    KeyStore,
    MasterKey,
    SqliteKeyStore,
    seal,
    template_associated_data,
    wrap_data_key,
)
from server.db import make_engine, make_session_factory
from server.enrollment.models import Template
from server.matching import _coldstart
from server.matching import index as index_module
from server.matching.service import Gallery, GalleryUnavailable
from server.shoppers.models import Shopper

PACK = "dlib-resnet-v1@1"


def _shopper_row(shopper_id: str, status: str) -> dict[str, Any]:
    return {
        "id": shopper_id,
        "full_name": "Test Shopper",
        "masked_label": "Test S.",
        "email": "t@example.com",
        "phone": "5550000000",
        "phone_last4_hash": "0" * 64,
        "status": status,
    }


class Instance:
    def __init__(
        self, folder: Path, store: KeyStore, count: int = 12, database_url: str | None = None
    ) -> None:
        self.settings = load_settings(
            {
                "instance": str(folder),
                "database_url": database_url or f"sqlite:///{folder / 'facepay.db'}",
            }
        )
        self.engine = make_engine(self.settings.database)
        migrate.upgrade(self.engine)
        self.master = MasterKey.generate("mk-test")
        self.store = store
        self.vectors: dict[str, np.ndarray] = {}
        rng = np.random.default_rng(7)
        shoppers, templates = [], []
        for index in range(count):
            shopper_id = str(uuid.uuid4())
            status = "deleted" if index % 5 == 4 else "active"
            key = DataKey.generate()
            store.put(shopper_id, wrap_data_key(self.master, key, shopper_id))
            shoppers.append(_shopper_row(shopper_id, status))
            rows = rng.standard_normal((1 + index % 3, 128)).astype(np.float32)
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
            if status == "active":
                self.vectors[shopper_id] = rows
            for pack, vectors in ((PACK, rows), ("unknown-pack@9", rows[:1])):
                for row in vectors:
                    template_id = str(uuid.uuid4())
                    templates.append(
                        {
                            "id": template_id,
                            "shopper_id": shopper_id,
                            "pack": pack,
                            "liveness": "none",
                            "ciphertext": seal(
                                key,
                                row.astype("<f4").tobytes(),
                                template_associated_data(shopper_id, template_id, pack),
                            ),
                        }
                    )
        with self.engine.begin() as connection:
            connection.execute(Shopper.__table__.insert(), shoppers)  # type: ignore[attr-defined]
            connection.execute(Template.__table__.insert(), templates)  # type: ignore[attr-defined]

    def load(self) -> Gallery:
        gallery = Gallery(self.settings, {self.master.key_id: self.master}, self.store)
        with make_session_factory(self.engine)() as session:
            gallery.load(session)
        return gallery

    def check(self, gallery: Gallery) -> None:
        """Every active shopper is in the index as one row: their templates fused."""
        assert gallery.loaded
        assert gallery.sizes() == {ref: 0 for ref in gallery.sizes()} | {PACK: len(self.vectors)}
        for shopper_id, rows in self.vectors.items():
            fused = index_module.fuse(rows)[0]
            found = gallery._indexes[PACK].search(fused, k=1)
            assert found[0].shopper_id == shopper_id
            assert found[0].score == pytest.approx(1.0, abs=1e-5)
        assert gallery._indexes[PACK].template_count == len(self.vectors)


@pytest.fixture(params=["sqlite", "file", "memory"])
def instance(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    store: KeyStore
    if request.param == "sqlite":
        store = SqliteKeyStore(tmp_path / "keystore.sqlite3", create=True)
    elif request.param == "file":
        store = FileKeyStore(tmp_path / "keystore", create=True)
    else:
        store = InMemoryKeyStore()
    built = Instance(tmp_path, store)
    yield built
    built.engine.dispose()


def test_cold_start_in_process(instance: Instance, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="server.matching.service"):
        instance.check(instance.load())
    progress = [r.getMessage() for r in caplog.records if "decrypted" in r.getMessage()]
    assert progress and progress[-1].endswith(f"of {len(instance.vectors)} shoppers")


@pytest.fixture
def in_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker-process path for any size, in several chunks (shoppers across them)."""
    monkeypatch.setattr(Gallery, "parallel_from_templates", 0)
    monkeypatch.setattr(Gallery, "_CHUNK_SHOPPERS", 2)
    monkeypatch.setattr(Gallery, "_workers", staticmethod(lambda: 2))


def test_cold_start_in_worker_processes(instance: Instance, in_workers: None) -> None:
    instance.check(instance.load())


@pytest.mark.parametrize("parallel", [False, True])
def test_cold_start_on_either_database(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, parallel: bool
) -> None:
    """Chunks are ranges of shopper ids in the database's order, read by this process or by
    each worker through its own connection (SQLite file or PostgreSQL)."""
    monkeypatch.setattr(Gallery, "_CHUNK_SHOPPERS", 2)
    if parallel:
        monkeypatch.setattr(Gallery, "parallel_from_templates", 0)
        monkeypatch.setattr(Gallery, "_workers", staticmethod(lambda: 2))
    built = Instance(tmp_path, InMemoryKeyStore(), count=15, database_url=database_url)
    try:
        built.check(built.load())
    finally:
        built.engine.dispose()


def test_cold_start_in_chunks_in_process(
    instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Gallery, "_CHUNK_SHOPPERS", 2)
    instance.check(instance.load())


@pytest.mark.parametrize("parallel", [False, True])
def test_cold_start_without_a_key_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel: bool
) -> None:
    if parallel:
        monkeypatch.setattr(Gallery, "parallel_from_templates", 0)
        monkeypatch.setattr(Gallery, "_workers", staticmethod(lambda: 2))
    instance = Instance(tmp_path, SqliteKeyStore(tmp_path / "keystore.sqlite3", create=True))
    instance.store.destroy(next(iter(instance.vectors)))
    with pytest.raises(GalleryUnavailable, match="facepay server purge"):
        instance.load()
    instance.engine.dispose()


def test_an_active_shopper_without_templates_needs_no_key(tmp_path: Path) -> None:
    """Only a template to open needs a key: an active shopper with none loads as before."""
    instance = Instance(tmp_path, InMemoryKeyStore())
    with instance.engine.begin() as connection:
        connection.execute(Shopper.__table__.insert(), [_shopper_row("no-templates", "active")])  # type: ignore[attr-defined]
    instance.check(instance.load())


@pytest.mark.parametrize("parallel", [False, True])
def test_cold_start_with_a_malformed_key_record_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel: bool
) -> None:
    if parallel:
        monkeypatch.setattr(Gallery, "parallel_from_templates", 0)
        monkeypatch.setattr(Gallery, "_workers", staticmethod(lambda: 2))
    instance = Instance(tmp_path, SqliteKeyStore(tmp_path / "keystore.sqlite3", create=True))
    victim = next(iter(instance.vectors))
    with sqlite3.connect(tmp_path / "keystore.sqlite3") as connection:
        connection.execute(
            "UPDATE wrapped_keys SET data_key_id = x'00' WHERE shopper_id = ?", (victim,)
        )
    connection.close()
    with pytest.raises(GalleryUnavailable, match="key store cannot be read"):
        instance.load()
    instance.engine.dispose()


@pytest.mark.parametrize("parallel", [False, True])
def test_cold_start_with_a_tampered_template_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel: bool
) -> None:
    from server.crypto import CryptoError

    if parallel:  # the worker finds it; its error comes back to the caller
        monkeypatch.setattr(Gallery, "parallel_from_templates", 0)
        monkeypatch.setattr(Gallery, "_CHUNK_SHOPPERS", 2)
        monkeypatch.setattr(Gallery, "_workers", staticmethod(lambda: 2))
    instance = Instance(tmp_path, InMemoryKeyStore())
    with instance.engine.begin() as connection:
        first = connection.execute(
            sa.select(Template.id).where(Template.pack == PACK).limit(1)
        ).scalar_one()
        other = connection.execute(
            sa.select(Template.ciphertext).where(Template.pack == PACK, Template.id != first)
        ).first()
        assert other is not None
        connection.execute(
            sa.update(Template).where(Template.id == first).values(ciphertext=other[0])
        )
    with pytest.raises(CryptoError):  # another row's ciphertext: wrong key, or wrong row
        instance.load()
    instance.engine.dispose()


@pytest.mark.parametrize("parallel", [False, True])
def test_cold_start_with_a_flipped_bit_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel: bool
) -> None:
    from server.crypto import DecryptionError

    if parallel:
        monkeypatch.setattr(Gallery, "parallel_from_templates", 0)
        monkeypatch.setattr(Gallery, "_workers", staticmethod(lambda: 2))
    instance = Instance(tmp_path, InMemoryKeyStore())
    with instance.engine.begin() as connection:
        template_id, ciphertext = connection.execute(
            sa.select(Template.id, Template.ciphertext).where(Template.pack == PACK).limit(1)
        ).one()
        flipped = bytearray(ciphertext)
        flipped[-20] ^= 1
        connection.execute(
            sa.update(Template).where(Template.id == template_id).values(ciphertext=bytes(flipped))
        )
    gallery = Gallery(instance.settings, {instance.master.key_id: instance.master}, instance.store)
    with pytest.raises(DecryptionError), make_session_factory(instance.engine)() as session:
        gallery.load(session)
    assert not gallery.loaded and gallery.sizes()[PACK] == 0  # nothing half-loaded
    instance.engine.dispose()


def test_a_large_gallery_is_searchable_at_once_and_quantised_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Searchable (exhaustively: exact) when load returns; the quantised index follows."""
    monkeypatch.setattr(index_module, "EXACT_MAX_TEMPLATES", 20)
    monkeypatch.setattr(index_module, "TRAIN_SAMPLE", 64)
    release = threading.Event()
    quantise = index_module.GalleryIndex._quantise

    def held(self: index_module.GalleryIndex, snap: Any) -> Any:
        assert release.wait(30)
        return quantise(self, snap)

    monkeypatch.setattr(index_module.GalleryIndex, "_quantise", held)
    instance = Instance(tmp_path, InMemoryKeyStore(), count=40)
    gallery = instance.load()
    index = gallery._indexes[PACK]
    assert not index.approximate and not gallery.wait_indexed(timeout=0.01)
    instance.check(gallery)  # exact meanwhile
    release.set()
    assert gallery.wait_indexed(timeout=30)
    assert index.approximate
    instance.check(gallery)
    instance.engine.dispose()


def test_a_worker_killed_makes_the_gallery_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_workers: None
) -> None:
    original = Gallery._cold_start_pool

    def dying(self: Gallery, session: Any, templates: int) -> Any:
        pool = original(self, session, templates)
        assert pool is not None
        os.kill(pool.submit(os.getpid).result(), signal.SIGKILL)
        return pool

    monkeypatch.setattr(Gallery, "_cold_start_pool", dying)
    instance = Instance(tmp_path, InMemoryKeyStore())
    with pytest.raises(GalleryUnavailable, match="worker process ended"):
        instance.load()
    instance.engine.dispose()


def test_a_database_error_reading_templates_is_the_database_s(tmp_path: Path) -> None:
    """Read through the driver's cursor, an error is still SQLAlchemy's (no shopper ids)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with engine.connect() as connection, pytest.raises(sa.exc.OperationalError) as raised:
        _coldstart.template_rows(connection, ["shopper-a", "shopper-b"])
    assert "shopper-a" not in str(raised.value)
    engine.dispose()


def test_a_worker_connects_with_its_first_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database a worker cannot open fails that chunk, as a database error."""
    monkeypatch.setattr(_coldstart, "_worker_masters", {})
    monkeypatch.setattr(_coldstart, "_worker_database", [])
    monkeypatch.setattr(_coldstart, "_worker_connection", [])
    _coldstart.init_worker([], f"sqlite:///{tmp_path / 'absent' / 'facepay.db'}")
    assert not _coldstart._worker_connection
    with pytest.raises(sa.exc.OperationalError):
        _coldstart.decrypt_in_worker((["shopper-a"], [None]), {PACK: 128})
