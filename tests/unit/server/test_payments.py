"""Payments through the API on SQLite and PostgreSQL: every answer, every decline code,
step-up, authorize and capture, expiry, refunds, limits, and the ledger check after each."""

from __future__ import annotations

import datetime as dt
import json
import zlib
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from server.audit import service as audit
from server.consent.models import Consent
from server.ledger import service as ledger
from server.ledger.models import Account, Transfer
from server.payments.models import Payment
from server.shoppers.models import Shopper
from tests.support.kiosk import SigningKiosk, enrollment_payload, register_kiosk
from tests.support.payments import SyntheticFace, new_key, payment_payload
from tests.unit.server.conftest import DEFAULT_RISK

PHONE = "+1 514 555 0142"


@pytest.fixture
def app_config(app_config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("settings")
    return {
        **app_config,
        "currencies": "CAD,USD",
        "limit_per_payment": 50_000,
        "limit_per_day": 60_000,
        "step_up_above": 10_000,
        **(marker.kwargs if marker else {}),
    }


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def signed(
    client: FlaskClient,
    kiosk: SigningKiosk,
    method: str,
    path: str,
    payload: Any = None,
    *,
    key: str | None = None,
) -> Any:
    body = b"" if payload is None else json.dumps(payload).encode()
    headers = kiosk.headers(method, path, body)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.open(path, method=method, data=body, headers=headers)


def enroll(
    client: FlaskClient,
    kiosk: SigningKiosk,
    face: SyntheticFace,
    *,
    name: str = "Marie Tremblay",
    phone: str | None = None,
    wallet: int = 100_000,
) -> str:
    """Enroll a synthetic shopper. Their phone ends in 0142 unless given; Marie's is `PHONE`,
    anyone else's has an exchange of its own (a number names one account)."""
    if phone is None:
        phone = (
            PHONE
            if name == "Marie Tremblay"
            else f"+1 514 {zlib.crc32(name.encode()) % 900 + 100} 0142"
        )
    policy = client.get("/v1/policy").get_json()
    payload = enrollment_payload(
        kiosk,
        policy,
        face.templates(),
        name=name,
        email=f"{name.split(maxsplit=1)[0].lower()}@example.com",
        phone=phone,
        wallet=wallet,
    )
    response = signed(client, kiosk, "POST", "/v1/enrollments", payload)
    assert response.status_code == 201, response.get_json()
    shopper_id: str = response.get_json()["shopper_id"]
    return shopper_id


def pay(
    client: FlaskClient,
    kiosk: SigningKiosk,
    face: SyntheticFace,
    amount: int,
    *,
    key: str | None = None,
    **options: Any,
) -> Any:
    payload = payment_payload(kiosk, face.sample(), amount, **options)
    return signed(client, kiosk, "POST", "/v1/payments", payload, key=key or new_key())


def step_up(client: FlaskClient, kiosk: SigningKiosk, answer: dict[str, Any], digits: str) -> Any:
    """Answer a challenge: four digits as `phone_last4`, more as the whole `phone`."""
    path = f"/v1/payments/{answer['payment_id']}/step-up"
    kind = "phone_last4" if len(digits) == 4 else "phone"
    payload = {"challenge_id": answer["challenge_id"], kind: digits}
    return signed(client, kiosk, "POST", path, payload, key=new_key())


def pay_and_answer(
    client: FlaskClient, kiosk: SigningKiosk, face: SyntheticFace, amount: int, phone: str = PHONE
) -> dict[str, Any]:
    """A payment, with the step-up answered rightly when one is asked (a large amount)."""
    answer: dict[str, Any] = pay(client, kiosk, face, amount).get_json()
    if answer["status"] == "step_up_required":
        digits = phone[-4:] if answer["step_up_ask"] == "phone_last4" else phone
        answer = step_up(client, kiosk, answer, digits).get_json()
    return answer


def assert_declined(app: Any, answer: dict[str, Any], reason: str) -> None:
    """Declined for `reason`, which the kiosk is told only as `not_approved` (nothing of
    whose face it is); the reason itself is in the payment's row."""
    assert (answer["status"], answer["decline_code"]) == ("declined", "not_approved"), answer
    assert payment_row(app, answer["payment_id"]).decline_code == reason


def wallet_balance(app: Any, shopper_id: str) -> int:
    with app.extensions["facepay"].sessions() as session:
        wallet = ledger.wallet_of(session, shopper_id)
        assert wallet is not None
        return wallet.available


def assert_ledger_ok(app: Any) -> ledger.LedgerReport:
    with app.extensions["facepay"].sessions() as session:
        report = ledger.check(session)
    assert report.ok, report.problems
    return report


def payment_row(app: Any, payment_id: str) -> Payment:
    with app.extensions["facepay"].sessions() as session:
        payment = session.get(Payment, payment_id)
        assert payment is not None
        return payment


def set_payment(app: Any, payment_id: str, **values: Any) -> None:
    with app.extensions["facepay"].sessions() as session:
        session.execute(update(Payment).where(Payment.id == payment_id).values(**values))
        session.commit()


def test_approved_payment_moves_money_once_and_shows_a_label(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    face = SyntheticFace(rng)
    shopper = enroll(client, kiosk, face, wallet=20_000)
    response = pay(client, kiosk, face, 1_250)
    assert response.status_code == 201, response.get_json()
    answer = response.get_json()
    assert answer["status"] == "approved" and answer["state"] == "captured"
    assert answer["shopper_label"] == "Marie T." and answer["wallet_balance"] == 18_750
    assert "score" not in response.get_data(as_text=True)
    assert wallet_balance(app, shopper) == 18_750

    with app.extensions["facepay"].sessions() as session:
        charges = session.scalars(
            select(Transfer).where(Transfer.payment_id == answer["payment_id"])
        ).all()
        store = session.get(Account, charges[0].credit_account)
        assert [(t.kind, t.amount) for t in charges] == [("charge", 1_250)]
        assert store is not None and (store.kind, store.owner) == ("store", "Montreal 01")
    fetched = signed(client, kiosk, "GET", f"/v1/payments/{answer['payment_id']}")
    assert fetched.status_code == 200 and fetched.get_json()["state"] == "captured"
    assert "shopper_label" not in fetched.get_json()
    report = assert_ledger_ok(app)
    assert report.payments == 1 and report.transfers == 2  # opening and charge


def test_every_match_attempt_is_audited_without_scores(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    face = SyntheticFace(rng)
    enroll(client, kiosk, face)
    pay(client, kiosk, face, 500)
    pay(client, kiosk, SyntheticFace(rng), 500)
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        assert audit.verify(session, svc.keys.audit_key).ok
        records = [
            json.loads(r)
            for r in session.scalars(
                select(audit.AuditRecord.record).order_by(audit.AuditRecord.seq)
            )
        ]
    attempts = [r["data"] for r in records if r["kind"] == "match.attempt"]
    pays = [a for a in attempts if a["purpose"] == "pay"]
    assert [(a["payment_state"], a["decline_code"]) for a in pays] == [
        ("captured", None),
        ("declined", "no_match"),
    ]
    assert all("score" not in json.dumps(a) for a in attempts)


def test_a_face_not_enrolled_is_declined_no_match(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    enroll(client, kiosk, SyntheticFace(rng))
    answer = pay(client, kiosk, SyntheticFace(rng), 500).get_json()
    assert_declined(app, answer, "no_match")
    assert "shopper_label" not in answer and "wallet_balance" not in answer
    assert payment_row(app, answer["payment_id"]).shopper_id is None
    assert_ledger_ok(app)


@pytest.mark.parametrize(
    ("wallet", "amounts", "code"),
    [
        (1_000, [1_001], "insufficient_funds"),
        (100_000, [50_001], "limit_exceeded"),  # per payment
        (100_000, [10_000, 10_000, 10_000, 10_000, 10_000, 10_000, 1], "limit_exceeded"),  # day
    ],
    ids=["insufficient_funds", "per_payment_limit", "per_day_limit"],
)
def test_declines_for_money_and_limits(
    app: Any,
    client: FlaskClient,
    kiosk: SigningKiosk,
    rng: np.random.Generator,
    wallet: int,
    amounts: list[int],
    code: str,
) -> None:
    face = SyntheticFace(rng)
    shopper = enroll(client, kiosk, face, wallet=wallet)
    answers = [pay_and_answer(client, kiosk, face, amount) for amount in amounts]
    assert all(a["status"] == "approved" for a in answers[:-1]), answers
    assert_declined(app, answers[-1], code)
    assert wallet_balance(app, shopper) == wallet - sum(amounts[:-1])
    assert_ledger_ok(app)


def test_suspended_account_and_withdrawn_consent_are_declined(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    suspended, withdrawn = SyntheticFace(rng), SyntheticFace(rng)
    suspended_id = enroll(client, kiosk, suspended, name="Ana Lopes")
    withdrawn_id = enroll(client, kiosk, withdrawn, name="Luc Roy")
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        session.execute(
            update(Shopper).where(Shopper.id == suspended_id).values(status="suspended")
        )
        session.execute(
            update(Consent)
            .where(Consent.shopper_id == withdrawn_id)
            .values(withdrawn_at=dt.datetime.now(dt.UTC))
        )
        session.commit()
    first = pay(client, kiosk, suspended, 500).get_json()
    second = pay(client, kiosk, withdrawn, 500).get_json()
    assert_declined(app, first, "account_suspended")
    assert_declined(app, second, "consent_withdrawn")
    assert wallet_balance(app, suspended_id) == wallet_balance(app, withdrawn_id) == 100_000


def test_currencies(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    face = SyntheticFace(rng)
    enroll(client, kiosk, face)
    usd = pay(client, kiosk, face, 500, currency="USD").get_json()
    assert_declined(app, usd, "currency_mismatch")
    eur = pay(client, kiosk, face, 500, currency="EUR")
    assert eur.status_code == 422 and eur.get_json()["code"] == "currency_not_accepted"
    assert eur.mimetype == "application/problem+json"


def test_large_amount_steps_up_with_the_phone_digits(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    face = SyntheticFace(rng)
    shopper = enroll(client, kiosk, face)
    enroll(client, kiosk, SyntheticFace(rng), name="Paul Gagnon", phone="+1 418 555 0142")
    answer = pay(client, kiosk, face, 25_000).get_json()
    assert answer["status"] == "step_up_required" and answer["step_up_reason"] == "amount"
    assert answer["tries_left"] == 1 and "shopper_label" not in answer
    assert payment_row(app, answer["payment_id"]).sealed_probe is not None

    done = step_up(client, kiosk, answer, "0142")
    assert done.status_code == 200, done.get_json()
    result = done.get_json()
    assert result["status"] == "approved" and result["shopper_label"] == "Marie T."
    assert wallet_balance(app, shopper) == 75_000
    row = payment_row(app, answer["payment_id"])
    assert row.sealed_probe is None and row.challenge_id is None and row.stepped_up
    closed = step_up(client, kiosk, answer, "0142")
    assert closed.status_code == 409 and closed.get_json()["code"] == "challenge_closed"
    assert_ledger_ok(app)


@pytest.mark.settings(step_up_tries=3)
def test_three_wrong_step_up_answers_decline(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    face = SyntheticFace(rng)
    shopper = enroll(client, kiosk, face)
    answer = pay(client, kiosk, face, 25_000).get_json()
    tries = [step_up(client, kiosk, answer, digits).get_json() for digits in ("1111", "2222")]
    assert [t["tries_left"] for t in tries] == [2, 1]
    assert all(t["status"] == "step_up_required" for t in tries)
    last = step_up(client, kiosk, answer, "3333").get_json()
    assert_declined(app, last, "step_up_failed")
    assert payment_row(app, answer["payment_id"]).sealed_probe is None
    wrong = signed(
        client,
        kiosk,
        "POST",
        f"/v1/payments/{answer['payment_id']}/step-up",
        {"challenge_id": "not-it", "phone_last4": "0142"},
        key=new_key(),
    )
    assert wrong.status_code == 409
    assert wallet_balance(app, shopper) == 100_000


def test_a_wrong_challenge_id_is_refused(
    client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    face = SyntheticFace(rng)
    enroll(client, kiosk, face)
    answer = pay(client, kiosk, face, 25_000).get_json()
    wrong = step_up(client, kiosk, {**answer, "challenge_id": new_key()}, "0142")
    assert wrong.status_code == 409 and wrong.get_json()["code"] == "challenge_mismatch"


@pytest.mark.settings(**DEFAULT_RISK)
def test_identity_step_up_when_the_gallery_risk_is_above_target(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    """At the default stranger target no face alone is enough, even in a one-shopper gallery:
    the server asks for the phone digits for a small amount, and the narrowed search
    approves."""
    face = SyntheticFace(rng)
    enroll(client, kiosk, face)
    answer = pay(client, kiosk, face, 500).get_json()
    assert answer["status"] == "step_up_required" and answer["step_up_reason"] == "identity"
    assert payment_row(app, answer["payment_id"]).shopper_id is None
    result = step_up(client, kiosk, answer, "0142").get_json()
    assert result["status"] == "approved" and result["wallet_balance"] == 99_500


def test_an_expired_challenge_declines_and_erases_the_probe(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    face = SyntheticFace(rng)
    enroll(client, kiosk, face)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    first = pay(client, kiosk, face, 25_000).get_json()
    second = pay(client, kiosk, face, 25_000).get_json()
    set_payment(app, first["payment_id"], expires_at=past)
    set_payment(app, second["payment_id"], expires_at=past)
    late = step_up(client, kiosk, first, "0142").get_json()
    assert (late["status"], late["decline_code"]) == ("declined", "step_up_expired")
    svc = app.extensions["facepay"]
    from server.payments import service

    with svc.sessions() as session:
        counts = service.sweep(session, svc.keys)
        session.commit()
    assert counts == {"authorizations": 0, "challenges": 1}
    row = payment_row(app, second["payment_id"])
    assert (row.state, row.decline_code, row.sealed_probe) == ("declined", "step_up_expired", None)


def test_authorize_then_capture_part_once(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    face = SyntheticFace(rng)
    shopper = enroll(client, kiosk, face, wallet=10_000)
    answer = pay(client, kiosk, face, 6_000, capture_method="manual").get_json()
    assert (answer["status"], answer["state"]) == ("approved", "authorized")
    assert "expires_at" in answer and "wallet_balance" not in answer  # nothing before capture
    # The hold counts: a second payment cannot spend the held money.
    assert_declined(app, pay(client, kiosk, face, 5_000).get_json(), "insufficient_funds")
    path = f"/v1/payments/{answer['payment_id']}/capture"
    too_much = signed(client, kiosk, "POST", path, {"amount": 6_001}, key=new_key())
    assert too_much.status_code == 422
    assert too_much.get_json()["code"] == "capture_exceeds_authorization"
    captured = signed(client, kiosk, "POST", path, {"amount": 4_500}, key=new_key())
    assert captured.status_code == 200, captured.get_json()
    assert captured.get_json()["captured_amount"] == 4_500
    assert captured.get_json()["wallet_balance"] == 5_500  # said once money has moved
    assert wallet_balance(app, shopper) == 5_500
    again = signed(client, kiosk, "POST", path, {}, key=new_key())
    assert again.status_code == 409 and again.get_json()["code"] == "payment_not_authorized"
    assert_ledger_ok(app)


def test_void_releases_the_hold(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    face = SyntheticFace(rng)
    shopper = enroll(client, kiosk, face, wallet=10_000)
    answer = pay(client, kiosk, face, 6_000, capture_method="manual").get_json()
    path = f"/v1/payments/{answer['payment_id']}/void"
    voided = signed(client, kiosk, "POST", path, key=new_key())
    assert voided.status_code == 200 and voided.get_json()["state"] == "voided"
    assert wallet_balance(app, shopper) == 10_000
    capture = f"/v1/payments/{answer['payment_id']}/capture"
    assert signed(client, kiosk, "POST", capture, {}, key=new_key()).status_code == 409
    assert_ledger_ok(app)


def test_an_uncaptured_authorization_expires(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    face = SyntheticFace(rng)
    shopper = enroll(client, kiosk, face, wallet=10_000)
    first = pay(client, kiosk, face, 6_000, capture_method="manual").get_json()
    second = pay(client, kiosk, face, 1_000, capture_method="manual").get_json()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    set_payment(app, first["payment_id"], expires_at=past)
    late = signed(
        client, kiosk, "POST", f"/v1/payments/{first['payment_id']}/capture", {}, key=new_key()
    )
    assert late.status_code == 409 and late.get_json()["code"] == "authorization_expired"
    svc = app.extensions["facepay"]
    from server.payments import service

    with svc.sessions() as session:
        assert service.sweep(session, svc.keys) == {"authorizations": 1, "challenges": 0}
        session.commit()
    assert payment_row(app, first["payment_id"]).state == "expired"
    assert payment_row(app, second["payment_id"]).state == "authorized"
    assert wallet_balance(app, shopper) == 9_000
    assert_ledger_ok(app)


def test_a_stale_hold_does_not_block_the_next_payment(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    face = SyntheticFace(rng)
    enroll(client, kiosk, face, wallet=10_000)
    held = pay(client, kiosk, face, 9_000, capture_method="manual").get_json()
    set_payment(
        app, held["payment_id"], expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    )
    answer = pay(client, kiosk, face, 5_000).get_json()
    assert answer["status"] == "approved" and answer["wallet_balance"] == 5_000
    assert payment_row(app, held["payment_id"]).state == "expired"
    assert_ledger_ok(app)


def test_refunds_are_new_transfers_full_or_partial(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    from server.errors import ProblemError
    from server.payments import service

    face = SyntheticFace(rng)
    shopper = enroll(client, kiosk, face, wallet=10_000)
    answer = pay(client, kiosk, face, 4_000).get_json()
    svc = app.extensions["facepay"]

    def refund(amount: int | None) -> tuple[int, dict[str, Any]]:
        with svc.sessions() as session:
            result = service.refund(
                session,
                payment_id=answer["payment_id"],
                amount=amount,
                operator="dana",
                reason="damaged item",
                keys=svc.keys,
            )
            session.commit()
            return result

    assert refund(1_500)[1]["refunded_amount"] == 1_500
    with pytest.raises(ProblemError) as excess:
        refund(2_501)
    assert excess.value.extra_data["code"] == "refund_exceeds_captured"
    assert refund(None)[1]["refunded_amount"] == 4_000
    assert wallet_balance(app, shopper) == 10_000
    with svc.sessions() as session:
        kinds = session.scalars(
            select(Transfer.kind)
            .where(Transfer.payment_id == answer["payment_id"])
            .order_by(Transfer.created_at)
        ).all()
        charge = session.scalars(select(Transfer).where(Transfer.kind == "charge")).one()
    assert kinds == ["charge", "refund", "refund"] and charge.amount == 4_000
    declined = pay(client, kiosk, SyntheticFace(rng), 100).get_json()
    with pytest.raises(ProblemError) as not_captured, svc.sessions() as session:
        service.refund(
            session,
            payment_id=declined["payment_id"],
            amount=None,
            operator="dana",
            reason="",
            keys=svc.keys,
        )
    assert not_captured.value.extra_data["code"] == "payment_not_captured"
    assert_ledger_ok(app)


def test_payments_need_a_signed_kiosk_and_stay_private_to_it(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    from server.db import transaction
    from server.kiosks import service as kiosks

    face = SyntheticFace(rng)
    enroll(client, kiosk, face)
    payload = payment_payload(kiosk, face.sample(), 500)
    unsigned = client.post("/v1/payments", json=payload, headers={"Idempotency-Key": new_key()})
    assert unsigned.status_code == 401 and unsigned.get_json()["code"] == "request_unsigned"
    answer = pay(client, kiosk, face, 500).get_json()

    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        created = kiosks.add_kiosk(session, svc.keys.audit_key, name="till-2", store="Laval 02")
    other = register_kiosk(client, created.pairing_code)
    seen = signed(client, other, "GET", f"/v1/payments/{answer['payment_id']}")
    assert seen.status_code == 404 and seen.get_json()["code"] == "payment_not_found"
    void = signed(client, other, "POST", f"/v1/payments/{answer['payment_id']}/void", key=new_key())
    assert void.status_code == 404


def test_bad_payment_requests_get_problem_details(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    face = SyntheticFace(rng)
    enroll(client, kiosk, face)
    good = payment_payload(kiosk, face.sample(), 500)
    cases = {
        "zero amount": ({**good, "amount": 0}, 422, "validation_failed"),
        "float amount": ({**good, "amount": 5.5}, 422, "validation_failed"),
        "lower-case currency": ({**good, "currency": "cad"}, 422, "validation_failed"),
        "unknown pack": (
            {**good, "probe": {**good["probe"], "pack": "nope@1"}},
            422,
            "unknown_pack",
        ),
    }
    for name, (payload, status, code) in cases.items():
        response = signed(client, kiosk, "POST", "/v1/payments", payload, key=new_key())
        assert response.status_code == status, name
        assert response.get_json()["code"] == code, name
    nan = payment_payload(kiosk, np.full(128, np.nan, dtype=np.float32), 500)
    response = signed(client, kiosk, "POST", "/v1/payments", nan, key=new_key())
    assert response.status_code == 422 and response.get_json()["code"] == "template_not_finite"
    missing_key = signed(client, kiosk, "POST", "/v1/payments", good)
    assert missing_key.status_code == 400
    assert missing_key.get_json()["code"] == "idempotency_key_invalid"
    with app.extensions["facepay"].sessions() as session:
        assert session.scalars(select(Payment)).all() == []


def test_ledger_check_finds_tampering(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    face = SyntheticFace(rng)
    enroll(client, kiosk, face, wallet=10_000)
    answer = pay(client, kiosk, face, 3_000).get_json()
    assert_ledger_ok(app)
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        session.execute(
            update(Transfer).where(Transfer.payment_id == answer["payment_id"]).values(amount=2_000)
        )
        session.commit()
        report = ledger.check(session)
    assert not report.ok
    assert any("totals differ" in p for p in report.problems)
    assert any("exactly one matching charge" in p for p in report.problems)
