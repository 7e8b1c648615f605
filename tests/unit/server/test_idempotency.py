"""Idempotency keys, as Stripe defines them, on SQLite and PostgreSQL: a replay returns the
stored answer (errors included), a key still running gets 409, other parameters get 422, and
a key whose request died is taken over once its lease has passed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from server.idempotency import service as idempotency
from server.idempotency.models import IdempotencyKey
from server.ledger.models import Transfer
from server.payments.models import Payment
from tests.support.kiosk import SigningKiosk
from tests.support.payments import SyntheticFace, new_key, payment_payload
from tests.unit.server.test_payments import enroll, signed, wallet_balance


@pytest.fixture
def face(client: FlaskClient, kiosk: SigningKiosk) -> SyntheticFace:
    face = SyntheticFace(np.random.default_rng(11))
    enroll(client, kiosk, face, wallet=10_000)
    return face


def count(app: Any, model: Any) -> int:
    with app.extensions["facepay"].sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_same_key_same_parameters_replays_the_answer(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face: SyntheticFace
) -> None:
    payload, key = payment_payload(kiosk, face.sample(), 700), new_key()
    first = signed(client, kiosk, "POST", "/v1/payments", payload, key=key)
    second = signed(client, kiosk, "POST", "/v1/payments", payload, key=key)
    assert first.status_code == second.status_code == 201
    assert first.get_json() == second.get_json()
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert count(app, Payment) == 1
    assert count(app, Transfer) == 2  # the opening and one charge
    assert wallet_balance(app, _shopper(app)) == 9_300


def _shopper(app: Any) -> str:
    with app.extensions["facepay"].sessions() as session:
        shopper_id = session.scalar(select(Payment.shopper_id))
        assert shopper_id is not None
        return shopper_id


def test_errors_are_stored_and_replayed_too(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face: SyntheticFace
) -> None:
    payload, key = payment_payload(kiosk, face.sample(), 700, currency="EUR"), new_key()
    first = signed(client, kiosk, "POST", "/v1/payments", payload, key=key)
    second = signed(client, kiosk, "POST", "/v1/payments", payload, key=key)
    assert first.status_code == second.status_code == 422
    assert first.get_json() == second.get_json()
    assert second.get_json()["code"] == "currency_not_accepted"
    assert second.mimetype == "application/problem+json"
    assert second.headers["Idempotent-Replayed"] == "true"


def test_same_key_other_parameters_is_refused(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face: SyntheticFace
) -> None:
    key = new_key()
    first = signed(
        client, kiosk, "POST", "/v1/payments", payment_payload(kiosk, face.sample(), 700), key=key
    )
    assert first.status_code == 201
    other = signed(
        client, kiosk, "POST", "/v1/payments", payment_payload(kiosk, face.sample(), 701), key=key
    )
    assert other.status_code == 422 and other.get_json()["code"] == "idempotency_key_reused"
    assert count(app, Payment) == 1


def test_keys_belong_to_their_kiosk(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face: SyntheticFace
) -> None:
    from server.db import transaction
    from server.kiosks import service as kiosks
    from tests.support.kiosk import register_kiosk

    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        created = kiosks.add_kiosk(session, svc.keys.audit_key, name="till-2", store="Montreal 01")
    other = register_kiosk(client, created.pairing_code)
    key = new_key()
    for till in (kiosk, other):
        payload = payment_payload(till, face.sample(), 700)
        assert signed(client, till, "POST", "/v1/payments", payload, key=key).status_code == 201
    assert count(app, Payment) == 2


def test_a_key_still_running_gets_409(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face: SyntheticFace
) -> None:
    payload, key = payment_payload(kiosk, face.sample(), 700), new_key()
    svc = app.extensions["facepay"]
    claimed = idempotency.claim(
        svc.sessions,
        scope=f"kiosk:{kiosk.kiosk_id}",
        key=key,
        fingerprint=idempotency.fingerprint("POST", "/v1/payments", _loaded(payload)),
        lease_s=60,
    )
    assert isinstance(claimed, idempotency.Claim)
    busy = signed(client, kiosk, "POST", "/v1/payments", payload, key=key)
    assert busy.status_code == 409 and busy.get_json()["code"] == "idempotency_key_in_use"
    assert busy.headers["Retry-After"] == "1"
    assert count(app, Payment) == 0


def _loaded(payload: dict[str, Any]) -> dict[str, Any]:
    """The parameters as the API loads them (defaults filled in): what the fingerprint covers."""
    from server.payments.schemas import PaymentIn

    loaded: dict[str, Any] = PaymentIn().load(payload)
    return loaded


def test_a_dead_request_is_taken_over_after_its_lease_and_runs_once(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face: SyntheticFace
) -> None:
    """The first attempt claimed the key and died before its work committed: after the lease a
    retry runs the work; the dead attempt, were it to wake, cannot record a second result."""
    payload, key = payment_payload(kiosk, face.sample(), 700), new_key()
    svc = app.extensions["facepay"]
    fingerprint = idempotency.fingerprint("POST", "/v1/payments", _loaded(payload))
    scope = f"kiosk:{kiosk.kiosk_id}"
    dead = idempotency.claim(svc.sessions, scope=scope, key=key, fingerprint=fingerprint, lease_s=0)
    assert isinstance(dead, idempotency.Claim)
    retry = signed(client, kiosk, "POST", "/v1/payments", payload, key=key)
    assert retry.status_code == 201 and retry.get_json()["status"] == "approved"

    with pytest.raises(idempotency.KeyInUse), svc.sessions() as session:
        idempotency._complete(session, dead, 201, {"forged": True})
    replay = signed(client, kiosk, "POST", "/v1/payments", payload, key=key)
    assert replay.get_json() == retry.get_json()
    assert count(app, Transfer) == 2


def test_an_unexpected_error_releases_the_key(app: Any) -> None:
    svc = app.extensions["facepay"]
    calls: list[int] = []

    def failing(session: Any) -> tuple[int, dict[str, Any]]:
        calls.append(1)
        raise RuntimeError("database went away")

    def working(session: Any) -> tuple[int, dict[str, Any]]:
        calls.append(2)
        return 200, {"ok": True}

    arguments = {"scope": "operator:dana", "key": "k-1", "fingerprint": "f" * 64, "lease_s": 60}
    with pytest.raises(RuntimeError):
        idempotency.run(svc.sessions, work=failing, **arguments)  # type: ignore[arg-type]
    outcome = idempotency.run(svc.sessions, work=working, **arguments)  # type: ignore[arg-type]
    assert (outcome.status, outcome.body, outcome.replayed) == (200, {"ok": True}, False)
    assert calls == [1, 2]
    assert idempotency.run(svc.sessions, work=working, **arguments).replayed  # type: ignore[arg-type]
    assert calls == [1, 2]


@pytest.mark.parametrize(
    "key", ["", "a" * 256, "has space", "caf\u00e9"], ids=["empty", "long", "space", "non-ascii"]
)
def test_bad_keys_are_refused(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face: SyntheticFace, key: str
) -> None:
    payload = payment_payload(kiosk, face.sample(), 700)
    response = signed(client, kiosk, "POST", "/v1/payments", payload, key=key or None)
    assert response.status_code == 400
    assert response.get_json()["code"] == "idempotency_key_invalid"
    assert count(app, IdempotencyKey) == 0


def test_old_keys_are_pruned_after_their_time(app: Any) -> None:
    import datetime as dt

    from sqlalchemy import update

    svc = app.extensions["facepay"]
    for name in ("old", "new"):
        idempotency.run(
            svc.sessions,
            scope="operator:dana",
            key=name,
            fingerprint="f" * 64,
            lease_s=60,
            work=lambda session: (200, {}),
        )
    with svc.sessions() as session:
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == "old")
            .values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=25))
        )
        assert idempotency.prune(session, keep_hours=24) == 1
        session.commit()
        assert session.scalars(select(IdempotencyKey.key)).all() == ["new"]
