"""Guess limits across payments and deletions, on SQLite and PostgreSQL: failed step-ups are
counted in the database against their candidate shopper and their kiosk; past the day's limit
even the right face with the right digits is refused, the shopper is mailed, and every failure
is in their export."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from server.audit import service as audit
from server.guesses.models import StepUpFailure
from server.shoppers.models import Shopper
from tests.support.kiosk import SigningKiosk
from tests.unit.server.test_step_up_ladder import (
    P12_PHONE,
    WHOLE_NUMBER,
    answer,
    delete_with,
    enroll_p12,
    pay_with,
)


@pytest.fixture
def app_config(app_config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("settings")
    return {**app_config, **WHOLE_NUMBER, **(marker.kwargs if marker else {})}


def outbox(app: Any) -> list[str]:
    folder = app.extensions["facepay"].settings.instance / "outbox"
    return [p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.eml"))]


def fail_once(client: FlaskClient, kiosk: SigningKiosk, face: np.ndarray, **typed: str) -> Any:
    """A payment with this face, its step-up answered once with these digits."""
    payment = pay_with(client, kiosk, face, 500)
    return answer(client, kiosk, payment, **typed).get_json()


def test_wrong_faces_with_a_victims_number_lock_within_ten_failures(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    victim = enroll_p12(client, kiosk, face_vectors)
    impostor = face_vectors["p11"][1]
    answers = [fail_once(client, kiosk, impostor, phone=P12_PHONE) for _ in range(10)]
    assert all((a["status"], a["decline_code"]) == ("declined", "not_approved") for a in answers)
    # The eleventh attempt, the victim's own face with the right number: refused.
    own = fail_once(client, kiosk, face_vectors["p12"][3], phone=P12_PHONE)
    assert (own["status"], own["decline_code"]) == ("declined", "step_up_locked")
    assert "locked" in own["decline_code"] and "wallet_balance" not in own
    mails = outbox(app)
    assert len(mails) == 1 and "p12@example.com" in mails[0] and "locked" in mails[0]
    with app.extensions["facepay"].sessions() as session:
        about = audit.events_about(session, victim)
    failed = [e for e in about if e["kind"] == "step_up.failed"]
    assert len(failed) == 10 and all("score" not in str(e) for e in failed)
    assert [e["kind"] for e in about].count("step_up.locked") == 1


def test_the_lock_ends_when_the_failures_are_a_day_old(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    enroll_p12(client, kiosk, face_vectors)
    for _ in range(10):
        fail_once(client, kiosk, face_vectors["p11"][1], phone=P12_PHONE)
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        day_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=24, seconds=1)
        session.execute(update(StepUpFailure).values(at=day_ago))
        session.commit()
    own = fail_once(client, kiosk, face_vectors["p12"][3], phone=P12_PHONE)
    assert own["status"] == "approved"


@pytest.mark.settings(risk_stranger=1e-4)  # the four digits suffice in this small gallery
def test_four_digit_failures_count_against_the_closest_face_only(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    victim = enroll_p12(client, kiosk, face_vectors)
    for _ in range(3):
        result = fail_once(client, kiosk, face_vectors["p11"][1], phone_last4=P12_PHONE[-4:])
        assert result["decline_code"] == "not_approved"
    for _ in range(3):  # digits naming nobody: the kiosk's count only
        fail_once(client, kiosk, face_vectors["p04"][0], phone_last4="9999")
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        counted = [f.shopper_id for f in session.query(StepUpFailure).order_by(StepUpFailure.at)]
    assert counted == [victim] * 3 + [None] * 3


@pytest.mark.settings(step_up_failures_per_kiosk_day=4)
def test_a_kiosk_past_its_days_failures_is_refused(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    enroll_p12(client, kiosk, face_vectors)
    for number in ("+1 514 555 0001", "+1 514 555 0002", "+1 514 555 0003", "+1 514 555 0004"):
        fail_once(client, kiosk, face_vectors["p04"][0], phone=number)
    own = fail_once(client, kiosk, face_vectors["p12"][3], phone=P12_PHONE)
    assert (own["status"], own["decline_code"]) == ("declined", "step_up_locked")


def test_deletion_at_the_kiosk_locks_the_same_way(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    victim = enroll_p12(client, kiosk, face_vectors)
    for _ in range(10):
        attempt = delete_with(client, kiosk, face_vectors["p11"][1], phone=P12_PHONE)
        assert attempt.get_json() == {"status": "not_found"}
    refused = delete_with(client, kiosk, face_vectors["p12"][3], phone=P12_PHONE)
    assert refused.status_code == 423 and refused.get_json()["code"] == "step_up_locked"
    with app.extensions["facepay"].sessions() as session:
        assert session.get(Shopper, victim).status == "active"  # type: ignore[union-attr]
    assert len(outbox(app)) == 1


def test_a_second_server_process_sees_the_same_counts(
    app: Any,
    app_config: dict[str, Any],
    client: FlaskClient,
    kiosk: SigningKiosk,
    face_vectors: dict[str, list[np.ndarray]],
) -> None:
    """Failures made through one server count on another sharing the database."""
    from server import create_app
    from server.extensions import services

    enroll_p12(client, kiosk, face_vectors)
    other = create_app(app_config)
    with other.app_context():
        services().start()
    try:
        other_client = other.test_client()
        for index in range(10):
            via = client if index % 2 else other_client
            fail_once(via, kiosk, face_vectors["p11"][1], phone=P12_PHONE)
        own = fail_once(other_client, kiosk, face_vectors["p12"][3], phone=P12_PHONE)
        assert (own["status"], own["decline_code"]) == ("declined", "step_up_locked")
    finally:
        other.extensions["facepay"].stop()


def test_a_face_guessing_digits_locks_and_its_owner_is_told_when_found(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    """The victim's own face (a photo, a twin) with guessed numbers: ten failures of the same
    face lock it whatever digits it types; the right number is then refused, and its owner
    mailed, with the lock in their export."""
    victim = enroll_p12(client, kiosk, face_vectors)
    face = face_vectors["p12"][3]
    for guess in range(10):
        result = fail_once(client, kiosk, face, phone=f"+1 438 555 {guess:04d}")
        assert (result["status"], result["decline_code"]) == ("declined", "not_approved")
    found = fail_once(client, kiosk, face, phone=P12_PHONE)
    assert (found["status"], found["decline_code"]) == ("declined", "step_up_locked")
    mails = outbox(app)
    assert len(mails) == 1 and "p12@example.com" in mails[0]
    with app.extensions["facepay"].sessions() as session:
        kinds = [e["kind"] for e in audit.events_about(session, victim)]
    assert kinds.count("step_up.locked") == 1
    # Another face is not locked by it.
    other = fail_once(client, kiosk, face_vectors["p01"][0], phone=P12_PHONE)
    assert other["decline_code"] == "not_approved"


def test_a_face_guessing_digits_for_a_deletion_locks_the_same_way(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    victim = enroll_p12(client, kiosk, face_vectors)
    face = face_vectors["p12"][3]
    for guess in range(10):
        attempt = delete_with(client, kiosk, face, phone=f"+1 438 555 {guess:04d}")
        assert attempt.get_json() == {"status": "not_found"}
    refused = delete_with(client, kiosk, face, phone=P12_PHONE)
    assert refused.status_code == 423 and refused.get_json()["code"] == "step_up_locked"
    with app.extensions["facepay"].sessions() as session:
        assert session.get(Shopper, victim).status == "active"  # type: ignore[union-attr]
        kinds = [e["kind"] for e in audit.events_about(session, victim)]
    assert kinds.count("step_up.locked") == 1 and len(outbox(app)) == 1
