"""The retention purge and `facepay server keys generate`, on SQLite and PostgreSQL: the purge
deletes exactly the shoppers inactive past the retention period and clears pending data past
its limits, with audit evidence."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import select, update

from server.audit import service as audit
from server.config import ConfigError, load_settings
from server.crypto import DataKey, KeyNotFoundError, wrap_data_key
from server.db import utcnow
from server.enrollment.models import Template
from server.idempotency.models import IdempotencyKey
from server.kiosks.models import RequestNonce
from server.payments.models import Payment
from server.privacy.models import Deletion, OneTimeCode
from server.privacy.retention import purge
from server.shoppers.models import Shopper
from tests.support.kiosk import SigningKiosk
from tests.support.payments import SyntheticFace
from tests.unit.server.test_payments import assert_declined, enroll, pay, step_up

PACK = "dlib-resnet-v1@1"
LONG_AGO = utcnow() - dt.timedelta(days=400)


@pytest.fixture
def app_config(app_config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("settings")
    return {**app_config, **(marker.kwargs if marker else {})}


def age(app: Any, shopper_id: str, when: dt.datetime = LONG_AGO) -> None:
    with app.extensions["facepay"].sessions() as session:
        session.execute(
            update(Shopper)
            .where(Shopper.id == shopper_id)
            .values(created_at=when, last_activity_at=when)
        )
        session.commit()


def status_of(app: Any, shopper_id: str) -> str:
    with app.extensions["facepay"].sessions() as session:
        shopper = session.get(Shopper, shopper_id)
        assert shopper is not None
        return shopper.status


def run_purge(app: Any, **options: Any) -> Any:
    svc = app.extensions["facepay"]
    return purge(svc.sessions, svc.keys, svc.settings, orphan_grace_s=0, **options)


def wait_until_gone(app: Any, count: int) -> None:
    gallery = app.extensions["facepay"].gallery
    deadline = time.monotonic() + 5
    while gallery.sizes()[PACK] != count:
        assert time.monotonic() < deadline, "the gallery never followed the purge"
        time.sleep(0.02)


def test_purge_deletes_exactly_the_inactive(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    rng = np.random.default_rng(31)
    idle, payer, recent = SyntheticFace(rng), SyntheticFace(rng), SyntheticFace(rng)
    idle_id = enroll(client, kiosk, idle, name="Idle Person", phone="+1 514 555 1111")
    payer_id = enroll(client, kiosk, payer, name="Paying Person", phone="+1 514 555 2222")
    recent_id = enroll(client, kiosk, recent, name="Recent Person", phone="+1 514 555 3333")
    age(app, idle_id)
    age(app, payer_id)
    assert pay(client, kiosk, payer, 1_000).get_json()["status"] == "approved"  # activity

    dry = run_purge(app, dry_run=True)
    assert dry.inactive_shoppers == [idle_id]
    assert status_of(app, idle_id) == "active"

    report = run_purge(app)
    assert report.inactive_shoppers == [idle_id]
    assert [status_of(app, s) for s in (idle_id, payer_id, recent_id)] == [
        "deleted",
        "active",
        "active",
    ]
    svc = app.extensions["facepay"]
    with pytest.raises(KeyNotFoundError):
        svc.keys.key_store.get(idle_id)
    svc.keys.key_store.get(payer_id)  # the others keep their keys
    svc.keys.key_store.get(recent_id)
    with svc.sessions() as session:
        assert session.scalars(select(Template).where(Template.shopper_id == idle_id)).all() == []
        receipt = session.scalars(select(Deletion).where(Deletion.shopper_id == idle_id)).one()
        assert (receipt.via, receipt.actor) == ("retention", "purge")
        assert audit.verify(session, svc.keys.audit_key).ok
        kinds = [
            json.loads(record)
            for record in session.scalars(
                select(audit.AuditRecord.record).where(
                    audit.AuditRecord.kind.in_(("retention.purge", "shopper.deleted"))
                )
            )
        ]
    evidence = [r for r in kinds if r["kind"] == "retention.purge"]
    assert evidence and evidence[0]["data"]["shoppers_deleted"] == 1
    assert evidence[0]["data"]["retention_days"] == 365
    assert [r["subject"] for r in kinds if r["kind"] == "shopper.deleted"] == [idle_id]

    wait_until_gone(app, 2)
    declined = pay(client, kiosk, idle, 500).get_json()
    assert_declined(app, declined, "no_match")
    assert pay(client, kiosk, recent, 500).get_json()["status"] == "approved"

    assert run_purge(app).inactive_shoppers == []  # nothing more to do


@pytest.mark.settings(retention_days=30)
def test_the_retention_period_is_the_setting(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    rng = np.random.default_rng(32)
    month_old, week_old = SyntheticFace(rng), SyntheticFace(rng)
    old_id = enroll(client, kiosk, month_old, name="Old Person", phone="+1 514 555 4444")
    new_id = enroll(client, kiosk, week_old, name="New Person", phone="+1 514 555 5555")
    age(app, old_id, utcnow() - dt.timedelta(days=31))
    age(app, new_id, utcnow() - dt.timedelta(days=7))
    assert run_purge(app).inactive_shoppers == [old_id]
    assert status_of(app, new_id) == "active"


def test_purge_clears_pending_data_past_its_limits(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    svc = app.extensions["facepay"]
    now = utcnow()
    face = SyntheticFace(np.random.default_rng(33))
    enroll(client, kiosk, face)
    challenge = pay(client, kiosk, face, 20_000).get_json()
    assert challenge["status"] == "step_up_required"
    with svc.sessions() as session:
        session.execute(
            update(Payment)
            .where(Payment.id == challenge["payment_id"])
            .values(expires_at=now - dt.timedelta(seconds=1))
        )
        two_days_ago = now - dt.timedelta(days=2)
        for purpose, created, expires, used in (
            ("delete", two_days_ago, two_days_ago + dt.timedelta(minutes=10), None),  # expired
            ("export", two_days_ago, two_days_ago + dt.timedelta(minutes=10), two_days_ago),
            ("delete", now, now - dt.timedelta(minutes=1), None),  # expired today: kept a day
            ("delete", now, now + dt.timedelta(minutes=5), None),  # still pending: kept
        ):
            session.add(
                OneTimeCode(
                    id=str(uuid.uuid4()),
                    email_hash="e" * 64,
                    purpose=purpose,
                    code_hash="c" * 64,
                    created_at=created,
                    expires_at=expires,
                    used_at=used,
                )
            )
        session.add(
            RequestNonce(
                kiosk_id=kiosk.kiosk_id, nonce="old-nonce", seen_at=now - dt.timedelta(hours=1)
            )
        )
        keep = dt.timedelta(hours=svc.settings.idempotency_ttl_h + 1)
        session.add(old_idempotency_key(now - keep))
        session.commit()
    outbox = Path(svc.settings.instance) / "outbox"
    outbox.mkdir(exist_ok=True)
    stale_mail, fresh_mail = outbox / "old.eml", outbox / "new.eml"
    stale_mail.write_text("code", encoding="utf-8")
    fresh_mail.write_text("code", encoding="utf-8")
    old = time.time() - svc.settings.code_ttl_s - 60
    os.utime(stale_mail, (old, old))

    counts = run_purge(app).counts
    assert counts["challenges_expired"] == 1
    assert counts["one_time_codes"] == 2
    assert counts["request_nonces"] >= 1
    assert counts["idempotency_keys"] >= 1
    assert counts["outbox_mails"] == 1
    assert not stale_mail.exists() and fresh_mail.exists()
    with svc.sessions() as session:
        payment = session.get(Payment, challenge["payment_id"])
        assert payment is not None and payment.sealed_probe is None
        assert (payment.state, payment.decline_code) == ("declined", "step_up_expired")
        assert len(session.scalars(select(OneTimeCode)).all()) == 2
        assert session.get(RequestNonce, (kiosk.kiosk_id, "old-nonce")) is None
    answer = step_up(client, kiosk, challenge, "0142").get_json()
    assert answer.get("status") != "approved"


def old_idempotency_key(created: dt.datetime) -> IdempotencyKey:
    """A finished idempotency record from before the keep period."""
    return IdempotencyKey(
        scope="kiosk:test",
        key=f"old-{uuid.uuid4()}",
        fingerprint="f" * 64,
        state="done",
        owner=str(uuid.uuid4()),
        lease_until=created,
        response_status=200,
        response_body="{}",
        created_at=created,
        completed_at=created,
    )


def test_purge_destroys_keys_without_a_living_shopper(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    svc = app.extensions["facepay"]
    rng = np.random.default_rng(34)
    living = enroll(client, kiosk, SyntheticFace(rng), name="Living Person")
    tombstone = enroll(
        client, kiosk, SyntheticFace(rng), name="Gone Person", phone="+1 514 555 7777"
    )
    with svc.sessions() as session:
        session.execute(update(Shopper).where(Shopper.id == tombstone).values(status="deleted"))
        session.commit()
    never_committed = str(uuid.uuid4())
    svc.keys.key_store.put(
        never_committed, wrap_data_key(svc.keys.master, DataKey.generate(), never_committed)
    )

    assert run_purge(app).counts["keys_destroyed"] == 2
    assert set(svc.keys.key_store.shopper_ids()) == {living}


def test_purge_from_the_command_line(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, cli: Any
) -> None:
    idle_id = enroll(client, kiosk, SyntheticFace(np.random.default_rng(35)))
    age(app, idle_id)
    dry = cli("purge", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["shoppers"] == [idle_id]
    assert status_of(app, idle_id) == "active"
    done = cli("purge")
    assert done.exit_code == 0, done.output
    assert "deleted 1 shoppers inactive since" in done.output
    assert status_of(app, idle_id) == "deleted"


def test_retention_is_bounded_by_three_years() -> None:
    with pytest.raises(ConfigError, match="RETENTION"):
        load_settings(environ={"FACEPAY_RETENTION_DAYS": "2000"})
    with pytest.raises(ConfigError, match="RETENTION"):
        load_settings(environ={"FACEPAY_RETENTION_DAYS": "0"})
    assert load_settings(environ={}).retention_days == 365


def test_keys_generate_makes_the_production_keys_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server import create_app
    from server.cli import server_group

    secrets_dir = tmp_path / "secrets"
    env = {
        "FACEPAY_ENV": "production",
        "FACEPAY_INSTANCE": str(tmp_path / "instance"),
        "FACEPAY_MASTER_KEY_FILE": str(secrets_dir / "master.key"),
        "FACEPAY_AUDIT_KEY_FILE": str(secrets_dir / "audit.key"),
        "FACEPAY_PHONE_KEY_FILE": str(secrets_dir / "phone.key"),
        "FACEPAY_SEALING_KEY_FILE": str(secrets_dir / "sealing.key"),
        "FACEPAY_KEY_STORE": str(tmp_path / "keystore" / "keys.sqlite3"),
        "FACEPAY_SECRET_KEY": "s" * 48,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="keys generate"):
        create_app()

    first = CliRunner().invoke(server_group, ["keys", "generate", "--json"])
    assert first.exit_code == 0, first.output
    assert sorted(json.loads(first.output)["created"]) == [
        "audit",
        "key_store",
        "master",
        "phone",
        "sealing",
    ]
    for name in ("master.key", "audit.key", "phone.key", "sealing.key"):
        assert stat.S_IMODE((secrets_dir / name).stat().st_mode) == 0o600
    before = (secrets_dir / "master.key").read_bytes()
    second = CliRunner().invoke(server_group, ["keys", "generate"])
    assert second.exit_code == 0 and "created" not in second.output
    assert (secrets_dir / "master.key").read_bytes() == before  # never overwritten
    app = create_app()  # production mode now starts
    app.extensions["facepay"].engine.dispose()


def test_an_empty_key_store_never_makes_the_purge_delete_everyone(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    """A misplaced or wrong key store makes every shopper look deleted: the purge leaves them
    alone unless asked, and refuses even then when the store holds no key at all."""
    from server.privacy.retention import PurgeRefused

    svc = app.extensions["facepay"]
    rng = np.random.default_rng(36)
    ids = [enroll(client, kiosk, SyntheticFace(rng), name=f"Person{i} Test") for i in range(2)]
    for shopper_id in ids:
        svc.keys.key_store.destroy(shopper_id)
    report = run_purge(app)
    assert report.counts["shoppers_without_key"] == 2 and report.counts["deletions_finished"] == 0
    with pytest.raises(PurgeRefused, match="holds no key"):
        run_purge(app, finish_deletions=True)
    assert [status_of(app, s) for s in ids] == ["active", "active"]
