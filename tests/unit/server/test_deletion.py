"""Deletion at the kiosk on SQLite and PostgreSQL: the face and the phone ending must agree;
the data key is destroyed, the templates go from every index and the database, and a backup
taken before cannot be opened afterwards."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy import select

from server.audit import service as audit
from server.crypto import KeyNotFoundError, open_, template_associated_data, unwrap_data_key
from server.enrollment.models import Template
from server.ledger import service as ledger
from server.matching.service import GalleryUnavailable
from server.privacy.models import Deletion
from server.privacy.retention import purge
from server.shoppers.models import Shopper
from tests.support.kiosk import SigningKiosk
from tests.support.payments import SyntheticFace, new_key
from tests.unit.server.test_payments import assert_declined, enroll, pay, signed

PACK = "dlib-resnet-v1@1"


def delete_me(client: FlaskClient, kiosk: SigningKiosk, face: SyntheticFace, digits: str) -> Any:
    payload = {"probe": kiosk.seal(face.sample(), purpose="delete"), "phone_last4": digits}
    return signed(client, kiosk, "POST", "/v1/deletions", payload, key=new_key())


def test_deletion_needs_the_face_and_the_digits(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    rng = np.random.default_rng(21)
    marie, paul = SyntheticFace(rng), SyntheticFace(rng)
    marie_id = enroll(client, kiosk, marie, phone="+1 514 555 0142")
    enroll(client, kiosk, paul, name="Paul Roy", phone="+1 514 555 9876")
    for face, digits in ((marie, "9876"), (paul, "0142"), (SyntheticFace(rng), "0142")):
        answer = delete_me(client, kiosk, face, digits)
        assert answer.status_code == 200 and answer.get_json() == {"status": "not_found"}
    svc = app.extensions["facepay"]
    assert svc.gallery.sizes()[PACK] == 2
    with svc.sessions() as session:
        assert session.get(Shopper, marie_id).status == "active"  # type: ignore[union-attr]


def test_deletion_shreds_the_key_and_declines_the_face_afterwards(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    rng = np.random.default_rng(22)
    marie = SyntheticFace(rng)
    marie_id = enroll(client, kiosk, marie, wallet=10_000)
    paid = pay(client, kiosk, marie, 2_000).get_json()
    assert paid["status"] == "approved"

    answer = delete_me(client, kiosk, marie, "0142")
    assert answer.status_code == 200, answer.get_json()
    receipt = answer.get_json()
    assert receipt["status"] == "deleted" and receipt["templates_deleted"] == 3
    assert set(receipt) == {"status", "request_id", "done_at", "templates_deleted"}

    svc = app.extensions["facepay"]
    assert svc.gallery.sizes()[PACK] == 0
    with pytest.raises(KeyNotFoundError):
        svc.keys.key_store.get(marie_id)
    with svc.sessions() as session:
        shopper = session.get(Shopper, marie_id)
        assert shopper is not None and shopper.status == "deleted"
        tombstone = (shopper.full_name, shopper.masked_label, shopper.email, shopper.phone)
        assert tombstone == ("", "", "", "") and shopper.phone_last4_hash == ""
        assert session.scalars(select(Template).where(Template.shopper_id == marie_id)).all() == []
        assert session.get(Deletion, receipt["request_id"]) is not None
        assert audit.verify(session, svc.keys.audit_key).ok
        records = [json.loads(r) for r in session.scalars(select(audit.AuditRecord.record))]
        assert ledger.check(session).ok  # the payment and its transfers stay
    deleted = [r for r in records if r["kind"] == "shopper.deleted"]
    assert deleted and deleted[0]["subject"] == marie_id
    assert "vector" not in json.dumps(records) and "score" not in json.dumps(records)

    after = pay(client, kiosk, marie, 500).get_json()
    assert_declined(app, after, "no_match")
    again = delete_me(client, kiosk, marie, "0142").get_json()
    assert again == {"status": "not_found"}


def test_a_second_server_process_forgets_the_face_within_a_second(
    app: Any, app_config: dict[str, Any], client: FlaskClient, kiosk: SigningKiosk
) -> None:
    from server import create_app

    marie = SyntheticFace(np.random.default_rng(23))
    enroll(client, kiosk, marie)
    other = create_app(app_config)
    with other.app_context():
        other.extensions["facepay"].start()
    try:
        assert other.extensions["facepay"].gallery.sizes()[PACK] == 1
        assert delete_me(client, kiosk, marie, "0142").get_json()["status"] == "deleted"
        done = time.monotonic()
        while other.extensions["facepay"].gallery.sizes()[PACK] != 0:
            assert time.monotonic() - done < 5, "the other process never dropped the shopper"
            time.sleep(0.02)
        assert time.monotonic() - done <= 1.0
    finally:
        other.extensions["facepay"].stop()


def test_a_backup_taken_before_deletion_cannot_be_opened_after(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    """The backup here is the template rows as they were before the deletion (what a dump of
    the main database holds); the key store is kept apart from such backups."""
    marie = SyntheticFace(np.random.default_rng(24))
    marie_id = enroll(client, kiosk, marie)
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        backup = session.execute(
            select(Template.id, Template.pack, Template.ciphertext).where(
                Template.shopper_id == marie_id
            )
        ).all()
    key = unwrap_data_key(svc.keys.masters, svc.keys.key_store.get(marie_id), marie_id)
    template_id, pack, ciphertext = backup[0]
    assert open_(key, ciphertext, template_associated_data(marie_id, template_id, pack))
    del key
    assert delete_me(client, kiosk, marie, "0142").get_json()["status"] == "deleted"

    assert len(backup) == 3  # the old copy still holds the ciphertexts…
    with pytest.raises(KeyNotFoundError):  # …but the key that opened them is gone
        svc.keys.key_store.get(marie_id)


@contextmanager
def database_backup(url: str, folder: Path) -> Iterator[Callable[[], str]]:
    """Take a real backup of the main database now (SQLite's online backup, or pg_dump); the
    function it yields restores it as a new database and returns that database's URL."""
    if url.startswith("sqlite"):
        copy = folder / "backup.db"
        with sqlite3.connect(url.removeprefix("sqlite:///")) as live, sqlite3.connect(copy) as kept:
            live.backup(kept)
        yield lambda: f"sqlite:///{copy}"
        return
    live = sa.make_url(url)
    libpq = live.set(drivername="postgresql").render_as_string(hide_password=False)
    dump = folder / "backup.dump"
    subprocess.run(["pg_dump", "--format=custom", f"--file={dump}", libpq], check=True)
    restored = live.set(database=f"{live.database}_restored")
    admin = sa.create_engine(live.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def restore() -> str:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{restored.database}"'))
        target = restored.set(drivername="postgresql").render_as_string(hide_password=False)
        subprocess.run(["pg_restore", "--no-owner", f"--dbname={target}", str(dump)], check=True)
        return restored.render_as_string(hide_password=False)

    try:
        yield restore
    finally:
        with admin.connect() as connection:
            connection.execute(
                sa.text(f'DROP DATABASE IF EXISTS "{restored.database}" WITH (FORCE)')
            )
        admin.dispose()


def test_a_restored_backup_cannot_bring_a_deleted_shopper_back(
    app: Any, app_config: dict[str, Any], client: FlaskClient, kiosk: SigningKiosk, tmp_path: Path
) -> None:
    """A real backup of the main database, taken before the deletion and put back in service
    afterwards with the same keys: the deleted shopper's templates cannot be opened, the server
    refuses to start until the purge finishes the deletion, and then the face is declined
    while the others still pay."""
    from server import create_app

    rng = np.random.default_rng(25)
    marie, paul = SyntheticFace(rng), SyntheticFace(rng)
    marie_id = enroll(client, kiosk, marie)
    enroll(client, kiosk, paul, name="Paul Roy", phone="+1 514 555 9876")
    with database_backup(app_config["database_url"], tmp_path) as restore:
        assert delete_me(client, kiosk, marie, "0142").get_json()["status"] == "deleted"
        restored = create_app({**app_config, "database_url": restore()})
        restored.config["TESTING"] = True
        svc = restored.extensions["facepay"]
        try:
            check_restored_copy(restored, kiosk, marie, paul, marie_id)
        finally:
            svc.stop()


def check_restored_copy(
    restored: Any,
    kiosk: SigningKiosk,
    marie: SyntheticFace,
    paul: SyntheticFace,
    marie_id: str,
) -> None:
    svc = restored.extensions["facepay"]
    with svc.sessions() as session:
        shopper = session.get(Shopper, marie_id)
        assert shopper is not None and shopper.status == "active"  # the old copy…
        rows = session.scalars(select(Template.id).where(Template.shopper_id == marie_id)).all()
    assert len(rows) == 3
    with pytest.raises(KeyNotFoundError):  # …whose key is gone
        svc.keys.key_store.get(marie_id)
    with pytest.raises(GalleryUnavailable, match="facepay server purge"), restored.app_context():
        svc.start()

    # Not by default: a misplaced key store would make every shopper look deleted.
    cautious = purge(svc.sessions, svc.keys, svc.settings, orphan_grace_s=0)
    assert cautious.counts == {
        **cautious.counts,
        "shoppers_without_key": 1,
        "deletions_finished": 0,
    }
    with svc.sessions() as session:
        assert session.get(Shopper, marie_id).status == "active"  # type: ignore[union-attr]
    report = purge(svc.sessions, svc.keys, svc.settings, orphan_grace_s=0, finish_deletions=True)
    assert report.counts["deletions_finished"] == 1
    with svc.sessions() as session:
        shopper = session.get(Shopper, marie_id)
        assert shopper is not None and shopper.status == "deleted"
        assert session.scalars(select(Template).where(Template.shopper_id == marie_id)).all() == []
        assert audit.verify(session, svc.keys.audit_key).ok
    with restored.app_context():
        svc.start()
    restored_client = restored.test_client()
    declined = pay(restored_client, kiosk, marie, 500).get_json()
    assert (declined["status"], declined["decline_code"]) == ("declined", "not_approved")
    assert pay(restored_client, kiosk, paul, 500).get_json()["status"] == "approved"
