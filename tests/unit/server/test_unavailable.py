"""What the server needs, down for a moment (the shopper key store, the gallery, the database):
a 503 problem+json with Retry-After, nothing done, the idempotency key not spent, never a
match by fallback; and it recovers by itself once the store is back. On SQLite and
PostgreSQL (tests/adversarial/test_faults.py does the same against gunicorn)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from server.crypto import KeyNotFoundError, KeyStoreUnavailable, SqliteKeyStore
from server.errors import Unavailable
from server.idempotency import service as idempotency
from server.idempotency.models import IdempotencyKey
from server.payments.models import Payment
from server.shoppers.models import Shopper
from tests.support.kiosk import SigningKiosk, enrollment_payload
from tests.support.payments import SyntheticFace, new_key, payment_payload
from tests.unit.server.test_payments import enroll, signed

CORRUPT = b"this is not an SQLite database " * 64


def count(app: Any, model: Any) -> int:
    with app.extensions["facepay"].sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def is_unavailable(response: Any, code: str) -> bool:
    return (
        response.status_code == 503
        and response.mimetype == "application/problem+json"
        and response.get_json()["code"] == code
        and int(response.headers["Retry-After"]) >= 1
    )


@contextmanager
def key_store_removed(app: Any) -> Iterator[None]:
    """The key store file moved away (an unmounted volume), and put back afterwards."""
    store = app.extensions["facepay"].keys.key_store
    assert isinstance(store, SqliteKeyStore)
    away = store.path.with_name(store.path.name + ".away")
    store.path.rename(away)
    try:
        yield
    finally:
        away.rename(store.path)


@contextmanager
def key_store_corrupt(path: Path) -> Iterator[None]:
    """The key store file replaced by garbage, and put back afterwards."""
    away = path.with_name(path.name + ".away")
    path.rename(away)
    path.write_bytes(CORRUPT)
    try:
        yield
    finally:
        away.replace(path)


@pytest.fixture
def face(client: FlaskClient, kiosk: SigningKiosk) -> SyntheticFace:
    face = SyntheticFace(np.random.default_rng(61))
    enroll(client, kiosk, face)
    return face


def enrollment(client: FlaskClient, kiosk: SigningKiosk, seed: int) -> dict[str, Any]:
    policy = client.get("/v1/policy").get_json()
    newcomer = SyntheticFace(np.random.default_rng(seed))
    return enrollment_payload(
        kiosk,
        policy,
        newcomer.templates(),
        email=f"n{seed}@example.com",
        phone=f"+1 514 555 {seed:04d}",
    )


def deletion(kiosk: SigningKiosk, face: SyntheticFace) -> dict[str, Any]:
    return {"probe": kiosk.seal(face.sample(), purpose="delete"), "phone_last4": "0142"}


# ---------------------------------------------------------------- while serving


def test_an_enrollment_the_key_store_cannot_take_is_refused_and_leaves_nothing(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face: SyntheticFace
) -> None:
    payload = enrollment(client, kiosk, 62)
    with key_store_removed(app):
        refused = signed(client, kiosk, "POST", "/v1/enrollments", payload)
        assert is_unavailable(refused, "key_store_unavailable"), refused.get_json()
        assert count(app, Shopper) == 1
    again = signed(client, kiosk, "POST", "/v1/enrollments", enrollment(client, kiosk, 62))
    assert again.status_code == 201
    assert count(app, Shopper) == 2


def test_a_deletion_waits_for_the_key_store_and_is_done_by_the_retry(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face: SyntheticFace
) -> None:
    """The receipt says the data is gone: with the key store down the key could not be
    destroyed, so nothing is deleted; the kiosk's retry (same key) does it once it is back."""
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        shopper_id = session.scalar(select(Shopper.id))
    body, key = deletion(kiosk, face), new_key()
    with key_store_removed(app):
        refused = signed(client, kiosk, "POST", "/v1/deletions", body, key=key)
        assert is_unavailable(refused, "key_store_unavailable"), refused.get_json()
        with svc.sessions() as session:
            assert session.get(Shopper, shopper_id).status == "active"  # type: ignore[union-attr]
        assert count(app, IdempotencyKey) == 0  # the key is not spent on it
    done = signed(client, kiosk, "POST", "/v1/deletions", body, key=key)
    assert done.status_code == 200 and done.get_json()["status"] == "deleted"
    with pytest.raises(KeyNotFoundError):
        svc.keys.key_store.get(shopper_id)


def test_payments_go_on_from_the_gallery_while_the_key_store_is_away(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face: SyntheticFace
) -> None:
    with key_store_removed(app):
        payload = payment_payload(kiosk, face.sample(), 500)
        answer = signed(client, kiosk, "POST", "/v1/payments", payload, key=new_key())
    assert answer.status_code == 201 and answer.get_json()["status"] == "approved"
    assert count(app, Payment) == 1


# ---------------------------------------------------------------- at start-up


def test_no_match_before_the_gallery_is_loaded_and_the_key_is_not_spent(
    app: Any, app_config: dict[str, Any], client: FlaskClient, kiosk: SigningKiosk, face: Any
) -> None:
    """A process whose gallery is not loaded refuses payments, enrollments and deletions with
    503 (never "no match" from an empty gallery); the same key works once it is loaded."""
    from server import create_app

    other = create_app(app_config)  # a second process over the same database, not started
    other_client = other.test_client()
    payload, key = payment_payload(kiosk, face.sample(), 700), new_key()
    try:
        early = signed(other_client, kiosk, "POST", "/v1/payments", payload, key=key)
        assert is_unavailable(early, "gallery_not_ready"), early.get_json()
        enrolling = signed(
            other_client, kiosk, "POST", "/v1/enrollments", enrollment(client, kiosk, 63)
        )
        assert is_unavailable(enrolling, "gallery_not_ready")
        deleting = signed(
            other_client, kiosk, "POST", "/v1/deletions", deletion(kiosk, face), key=new_key()
        )
        assert is_unavailable(deleting, "gallery_not_ready")
        assert other_client.get("/readyz").status_code == 503
        assert (count(app, Payment), count(app, Shopper), count(app, IdempotencyKey)) == (0, 1, 0)
        with other.app_context():
            other.extensions["facepay"].start()
        later = signed(other_client, kiosk, "POST", "/v1/payments", payload, key=key)
        assert later.status_code == 201 and later.get_json()["status"] == "approved"
        assert count(app, Payment) == 1
    finally:
        other.extensions["facepay"].stop()


def test_a_key_store_that_cannot_be_opened_fails_closed_until_it_can(tmp_path: Path) -> None:
    from server.config import load_settings
    from server.keys import UnopenedKeyStore, load_keys

    settings = load_settings({"instance": str(tmp_path / "instance")})
    path = load_keys(settings).key_store.path  # type: ignore[attr-defined]
    with key_store_corrupt(path):
        store = load_keys(settings).key_store  # the server starts all the same
        assert isinstance(store, UnopenedKeyStore)
        for call in (store.shopper_ids, store.wrapped_key_records, lambda: store.get("s-1")):
            with pytest.raises(KeyStoreUnavailable):
                call()
    with pytest.raises(KeyNotFoundError):  # back: opened, and answers
        store.get("s-1")
    assert store.shopper_ids() == []


def test_a_server_started_with_a_corrupt_key_store_serves_not_ready_then_recovers(
    app: Any, app_config: dict[str, Any], client: FlaskClient, kiosk: SigningKiosk, face: Any
) -> None:
    from server import create_app

    path = app.extensions["facepay"].keys.key_store.path
    payload, key = payment_payload(kiosk, face.sample(), 300), new_key()
    with key_store_corrupt(path):
        other = create_app(app_config)
        svc = other.extensions["facepay"]
        with other.app_context():
            svc.serve(retry_s=0.1)  # does not raise: serves, not ready
        other_client = other.test_client()
        not_ready = other_client.get("/readyz")
        assert not_ready.status_code == 503
        assert "key store" in not_ready.get_json()["detail"]
        early = signed(other_client, kiosk, "POST", "/v1/payments", payload, key=key)
        assert is_unavailable(early, "gallery_not_ready")
    try:
        deadline = time.monotonic() + 30
        while other_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the server never loaded its gallery"
            time.sleep(0.05)
        later = signed(other_client, kiosk, "POST", "/v1/payments", payload, key=key)
        assert later.status_code == 201 and later.get_json()["status"] == "approved"
        assert count(app, Payment) == 1
    finally:
        svc.stop()


# ---------------------------------------------------------------- the database


def test_a_database_that_does_not_answer_is_a_503_not_a_500(tmp_path: Path) -> None:
    from server import create_app
    from tests.support.processes import free_port

    app = create_app(
        {
            "instance": str(tmp_path / "instance"),
            "database_url": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none",
        }
    )
    client = app.test_client()
    kiosk_id = "00000000-0000-4000-8000-000000000000"
    answer = client.get(
        "/v1/payments/00000000-0000-4000-8000-000000000001",
        headers={
            "X-Facepay-Kiosk": kiosk_id,
            "X-Facepay-Timestamp": str(int(time.time())),
            "X-Facepay-Nonce": "n" * 24,
            "X-Facepay-Signature": "A" * 86,
        },
    )
    assert is_unavailable(answer, "database_unavailable"), answer.get_json()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503


def test_a_5xx_problem_is_not_stored_as_the_keys_answer(app: Any) -> None:
    svc = app.extensions["facepay"]
    calls: list[str] = []

    def down(session: Any) -> tuple[int, dict[str, Any]]:
        calls.append("down")
        raise Unavailable("the key store is away", code="key_store_unavailable")

    def up(session: Any) -> tuple[int, dict[str, Any]]:
        calls.append("up")
        return 200, {"ok": True}

    arguments = {"scope": "kiosk:k", "key": "k-5xx", "fingerprint": "f" * 64, "lease_s": 60}
    with pytest.raises(Unavailable):
        idempotency.run(svc.sessions, work=down, **arguments)  # type: ignore[arg-type]
    assert count(app, IdempotencyKey) == 0
    outcome = idempotency.run(svc.sessions, work=up, **arguments)  # type: ignore[arg-type]
    assert (outcome.status, outcome.body, outcome.replayed) == (200, {"ok": True}, False)
    assert calls == ["down", "up"]


def test_a_nonce_the_database_cannot_record_is_a_503_not_a_verdict(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    """Found by the PostgreSQL restart in tests/adversarial/test_faults.py: the nonce store
    failing was answered 401 request_replayed_or_stale, a final answer, so the kiosk gave up
    on a payment. It is refused (fail closed) but as 503, and the kiosk's retry goes through."""
    import sqlalchemy.exc
    from sqlalchemy import event

    face = SyntheticFace(np.random.default_rng(77))
    enroll(client, kiosk, face)
    engine = app.extensions["facepay"].engine

    def connection_lost_at_the_nonce(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO REQUEST_NONCES"):
            raise sqlalchemy.exc.OperationalError(statement, {}, Exception("server closed"))

    event.listen(engine, "before_cursor_execute", connection_lost_at_the_nonce)
    payload, key = payment_payload(kiosk, face.sample(), 300), new_key()
    try:
        refused = signed(client, kiosk, "POST", "/v1/payments", payload, key=key)
    finally:
        event.remove(engine, "before_cursor_execute", connection_lost_at_the_nonce)
    assert is_unavailable(refused, "database_unavailable"), refused.get_json()
    assert count(app, Payment) == 0
    retried = signed(client, kiosk, "POST", "/v1/payments", payload, key=key)
    assert retried.status_code == 201 and retried.get_json()["status"] == "approved"
