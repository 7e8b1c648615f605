"""Gallery cold start: the bulk read path loads exactly what the per-shopper path would."""

from __future__ import annotations

import logging
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
    def __init__(self, folder: Path, store: KeyStore, count: int = 12) -> None:
        self.settings = load_settings(
            {"instance": str(folder), "database_url": f"sqlite:///{folder / 'facepay.db'}"}
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
        assert gallery.loaded
        assert gallery.sizes() == {ref: 0 for ref in gallery.sizes()} | {PACK: len(self.vectors)}
        for shopper_id, rows in self.vectors.items():
            for row in rows:
                assert gallery.is_enrolled(PACK, [row])
                found = gallery._indexes[PACK].search(row, k=1)
                assert found[0].shopper_id == shopper_id
                assert found[0].score == pytest.approx(1.0, abs=1e-5)
        assert gallery._indexes[PACK].template_count == sum(len(r) for r in self.vectors.values())


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


def test_cold_start_in_worker_processes(
    instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Gallery, "parallel_from_shoppers", 0)
    monkeypatch.setattr(Gallery, "_CHUNK_ROWS", 5)  # several chunks, shoppers across them
    monkeypatch.setattr(Gallery, "_workers", staticmethod(lambda: 2))
    instance.check(instance.load())


@pytest.mark.parametrize("parallel", [False, True])
def test_cold_start_without_a_key_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel: bool
) -> None:
    if parallel:
        monkeypatch.setattr(Gallery, "parallel_from_shoppers", 0)
        monkeypatch.setattr(Gallery, "_workers", staticmethod(lambda: 2))
    instance = Instance(tmp_path, SqliteKeyStore(tmp_path / "keystore.sqlite3", create=True))
    instance.store.destroy(next(iter(instance.vectors)))
    with pytest.raises(GalleryUnavailable):
        instance.load()
    instance.engine.dispose()


def test_cold_start_with_a_tampered_template_fails(tmp_path: Path) -> None:
    from server.crypto import CryptoError

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
