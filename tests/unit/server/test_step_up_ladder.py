"""The step-up ladder through the API at the default risk targets, on SQLite and PostgreSQL:
real impostor faces with the victim's digits are declined, the whole phone number where the
gallery calls for it, deletion by the same rule, and enrollment's duplicate checks."""

from __future__ import annotations

import email
import json
from email import policy as email_policy
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from server.audit.models import AuditRecord
from server.matching.risk import Rung
from server.shoppers.models import Shopper
from tests.support.kiosk import SigningKiosk, enrollment_payload
from tests.support.payments import new_key
from tests.unit.server.conftest import DEFAULT_RISK
from tests.unit.server.test_payments import signed

PACK = "dlib-resnet-v1@1"


def audited(app: Any, kind: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(subject, data) of the audit records of one kind, in order."""
    with app.extensions["facepay"].sessions() as session:
        rows = session.scalars(
            select(AuditRecord).where(AuditRecord.kind == kind).order_by(AuditRecord.seq)
        )
        return [(row.subject, json.loads(row.record)["data"]) for row in rows]


P12_PHONE = "+1 514 555 0112"
# Four digits are not enough when no stranger may succeed more than once in 10^9 tries: the
# server asks for the whole number (a one-shopper search) whatever the gallery's size.
WHOLE_NUMBER = {"risk_stranger": 1e-9}


@pytest.fixture
def app_config(app_config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("settings")
    return {**app_config, **DEFAULT_RISK, **(marker.kwargs if marker else {})}


def enroll_real(
    client: FlaskClient,
    kiosk: SigningKiosk,
    frames: list[np.ndarray],
    *,
    name: str,
    phone: str,
    email_address: str,
) -> Any:
    policy = client.get("/v1/policy").get_json()
    payload = enrollment_payload(
        kiosk, policy, frames, name=name, email=email_address, phone=phone, wallet=100_000
    )
    return signed(client, kiosk, "POST", "/v1/enrollments", payload)


def enroll_p12(client: FlaskClient, kiosk: SigningKiosk, faces: dict[str, list[np.ndarray]]) -> str:
    response = enroll_real(
        client,
        kiosk,
        faces["p12"][:3],
        name="Pat Twelve",
        phone=P12_PHONE,
        email_address="p12@example.com",
    )
    assert response.status_code == 201, response.get_json()
    shopper_id: str = response.get_json()["shopper_id"]
    return shopper_id


def pay_with(client: FlaskClient, kiosk: SigningKiosk, probe: np.ndarray, amount: int) -> Any:
    payload = {
        "amount": amount,
        "currency": "CAD",
        "capture_method": "automatic",
        "probe": kiosk.seal(probe, purpose="pay"),
    }
    return signed(client, kiosk, "POST", "/v1/payments", payload, key=new_key()).get_json()


def answer(client: FlaskClient, kiosk: SigningKiosk, payment: dict[str, Any], **typed: str) -> Any:
    path = f"/v1/payments/{payment['payment_id']}/step-up"
    return signed(
        client,
        kiosk,
        "POST",
        path,
        {"challenge_id": payment["challenge_id"], **typed},
        key=new_key(),
    )


def test_another_persons_face_with_the_victims_digits_is_declined(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    """The issue's reproduction: p11 (img30, img31), never enrolled, types p12's last four
    digits and used to pay $150 on p12's wallet. Now declined; p12's own face pays."""
    victim = enroll_p12(client, kiosk, face_vectors)
    for probe in face_vectors["p11"][1:3]:  # img30.jpg, img31.jpg
        payment = pay_with(client, kiosk, probe, 15_000)
        assert payment["status"] == "step_up_required"
        assert payment["step_up_ask"] == "phone_last4"
        payment = answer(client, kiosk, payment, phone_last4=P12_PHONE[-4:]).get_json()
        assert (payment["status"], payment["decline_code"]) == ("declined", "not_approved")
    own = pay_with(client, kiosk, face_vectors["p12"][3], 15_000)  # a photo not enrolled
    done = answer(client, kiosk, own, phone_last4=P12_PHONE[-4:]).get_json()
    assert done["status"] == "approved" and done["wallet_balance"] == 85_000
    attempts = [
        subject
        for subject, data in audited(app, "match.attempt")
        if data["purpose"] == "pay_step_up"
    ]
    assert len(attempts) == 3 and attempts.count(victim) == 1


def test_the_face_is_not_searched_before_the_digits_narrow_it(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    """An enrolled face and a stranger's get the same first answer: nothing is learned about
    a face before the digits are typed."""
    enroll_p12(client, kiosk, face_vectors)
    enrolled = pay_with(client, kiosk, face_vectors["p12"][3], 500)
    stranger = pay_with(client, kiosk, face_vectors["p04"][0], 500)
    keys = ("status", "state", "step_up_ask", "step_up_reason", "tries_left")
    assert [enrolled[k] for k in keys] == [stranger[k] for k in keys]
    assert "shopper_label" not in enrolled and "wallet_balance" not in enrolled


@pytest.mark.settings(**WHOLE_NUMBER)
def test_the_whole_number_when_four_digits_are_not_enough(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    enroll_p12(client, kiosk, face_vectors)
    payment = pay_with(client, kiosk, face_vectors["p12"][3], 500)
    assert payment["step_up_ask"] == "phone"
    weaker = answer(client, kiosk, payment, phone_last4=P12_PHONE[-4:])
    assert weaker.status_code == 422
    assert weaker.get_json()["code"] == "step_up_answer_mismatch"
    impostor = pay_with(client, kiosk, face_vectors["p11"][1], 500)
    refused = answer(client, kiosk, impostor, phone="(514) 555-0112").get_json()
    assert (refused["status"], refused["decline_code"]) == ("declined", "not_approved")
    done = answer(client, kiosk, payment, phone="514-555-0112").get_json()
    assert done["status"] == "approved" and done["wallet_balance"] == 99_500


def test_an_answer_must_be_one_kind(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    enroll_p12(client, kiosk, face_vectors)
    payment = pay_with(client, kiosk, face_vectors["p12"][3], 500)
    for typed in ({}, {"phone_last4": "0112", "phone": P12_PHONE}, {"phone": "12"}):
        response = answer(client, kiosk, payment, **typed)
        assert response.status_code in (400, 422)
        assert response.mimetype == "application/problem+json"
    assert answer(client, kiosk, payment, phone_last4="0112").get_json()["status"] == "approved"


def delete_with(client: FlaskClient, kiosk: SigningKiosk, probe: np.ndarray, **typed: str) -> Any:
    payload = {"probe": kiosk.seal(probe, purpose="delete"), **typed}
    return signed(client, kiosk, "POST", "/v1/deletions", payload, key=new_key())


@pytest.mark.settings(**WHOLE_NUMBER)
def test_deletion_asks_for_the_whole_number_by_the_same_rule(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    victim = enroll_p12(client, kiosk, face_vectors)
    short = delete_with(client, kiosk, face_vectors["p12"][3], phone_last4="0112")
    assert short.status_code == 422 and short.get_json()["code"] == "full_phone_required"
    impostor = delete_with(client, kiosk, face_vectors["p11"][1], phone=P12_PHONE)
    assert impostor.get_json() == {"status": "not_found"}
    done = delete_with(client, kiosk, face_vectors["p12"][3], phone=P12_PHONE)
    assert done.status_code == 200 and done.get_json()["status"] == "deleted"
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        tombstone = session.get(Shopper, victim)
        assert tombstone is not None and tombstone.phone_hash is None


def test_enrollment_refuses_a_claimed_email_or_phone(
    client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    enroll_p12(client, kiosk, face_vectors)
    for phone, address in (
        ("(514) 555-0112", "new@example.com"),
        ("+1 514 555 0199", "P12@example.com"),
    ):
        again = enroll_real(
            client,
            kiosk,
            face_vectors["p01"][:3],
            name="Someone Else",
            phone=phone,
            email_address=address,
        )
        assert again.status_code == 409 and again.get_json()["code"] == "already_enrolled"


def test_a_face_duplicate_is_enrolled_and_the_existing_account_is_told(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    """The same face enrolled again under other contact details: in a small gallery the
    duplicate threshold can be shown, so it is declared, but never refused with a hint: the
    kiosk gets an ordinary enrollment; the first account is mailed and audited."""
    first = enroll_p12(client, kiosk, face_vectors)
    second = enroll_real(
        client,
        kiosk,
        face_vectors["p12"][:3],
        name="Pat Again",
        phone="+1 514 555 0999",
        email_address="other@example.com",
    )
    assert second.status_code == 201 and set(second.get_json()) == {
        "enrollment_id",
        "shopper_id",
        "masked_label",
        "pack",
        "wallet_balance",
        "currency",
    }
    svc = app.extensions["facepay"]
    mails = sorted((svc.settings.instance / "outbox").glob("*.eml"))
    assert len(mails) == 1
    message = email.message_from_bytes(mails[0].read_bytes(), policy=email_policy.default)
    assert message["To"] == "p12@example.com" and "looked like your face" in message["Subject"]
    flagged = audited(app, "shopper.face_duplicate")
    assert [subject for subject, _ in flagged] == [first]
    # A different person enrolling is no duplicate and mails nobody.
    third = enroll_real(
        client,
        kiosk,
        face_vectors["p01"][:3],
        name="Ann One",
        phone="+1 514 555 0001",
        email_address="p01@example.com",
    )
    assert third.status_code == 201
    assert len(sorted((svc.settings.instance / "outbox").glob("*.eml"))) == 1


def test_the_rung_follows_the_gallerys_size(app: Any) -> None:
    gallery = app.extensions["facepay"].gallery
    index = gallery._indexes[PACK]
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((2, 128)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    index.bulk_load([f"s{i}" for i in range(2)], rows, np.arange(2))
    assert gallery.rung(PACK).rung is Rung.PHONE_LAST4
    many = np.repeat(rows[:1], 200_000, axis=0)
    index.bulk_load([f"s{i}" for i in range(200_000)], many, np.arange(200_000))
    assert gallery.rung(PACK).rung is Rung.PHONE
