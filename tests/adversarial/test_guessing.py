"""Guessing and probing at the kiosk.

Step-up digits guessed across payments and deletions, a victim's number tried with other
faces, and a kiosk probing what a face is before money moves: at the default risk targets
with the whole-number rung, on SQLite and PostgreSQL. Every attempt must be refused, the
locks must hold within the day's ten failures, and no answer may tell an enrolled face from
a stranger's before money moves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from tests.adversarial.conftest import LONG, Tally
from tests.support.kiosk import SigningKiosk
from tests.support.payments import new_key
from tests.unit.server.conftest import DEFAULT_RISK
from tests.unit.server.test_payments import signed
from tests.unit.server.test_step_up_ladder import (
    P12_PHONE,
    WHOLE_NUMBER,
    answer,
    delete_with,
    enroll_p12,
    pay_with,
)


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, **DEFAULT_RISK, **WHOLE_NUMBER}


def _pay_once(
    client: FlaskClient, kiosk: SigningKiosk, face: np.ndarray, phone: str, amount: int = 15_000
) -> Any:
    payment = pay_with(client, kiosk, face, amount)
    return answer(client, kiosk, payment, phone=phone).get_json()


def test_guessing_a_victims_number_with_their_face(
    client: FlaskClient,
    kiosk: SigningKiosk,
    face_vectors: dict[str, list[np.ndarray]],
    tally: Tally,
) -> None:
    """Guessed phone numbers with the victim's own face, across payments, lock within ten."""
    enroll_p12(client, kiosk, face_vectors)
    face = face_vectors["p12"][3]
    rng = np.random.default_rng(5)
    for attempt in range(30 if LONG else 12):
        guess = f"+1 438 {int(rng.integers(200, 1000))} {int(rng.integers(0, 10_000)):04d}"
        result = _pay_once(client, kiosk, face, guess)
        expected = "not_approved" if attempt < 10 else "step_up_locked"
        tally.case(result["decline_code"] == expected, f"guess {attempt}: {result}")
    right = _pay_once(client, kiosk, face, P12_PHONE)
    tally.case(right["decline_code"] == "step_up_locked", f"the right number after: {right}")
    assert tally.handled == tally.tried, tally.failures


def test_other_faces_with_a_victims_number(
    client: FlaskClient,
    kiosk: SigningKiosk,
    face_vectors: dict[str, list[np.ndarray]],
    tally: Tally,
) -> None:
    """Other people's faces with a victim's known number, across payments, lock within ten."""
    enroll_p12(client, kiosk, face_vectors)
    impostors = face_vectors["p11"] + face_vectors["p04"] + face_vectors["p01"]
    for attempt, face in enumerate(impostors[: 20 if LONG else 12]):
        result = _pay_once(client, kiosk, face, P12_PHONE)
        tally.case(result["status"] == "declined", f"impostor {attempt} approved")
        if attempt >= 10:
            tally.case(result["decline_code"] == "step_up_locked", f"not locked at {attempt}")
    right = _pay_once(client, kiosk, face_vectors["p12"][3], P12_PHONE)
    tally.case(right["decline_code"] == "step_up_locked", f"the owner's own face: {right}")
    assert tally.handled == tally.tried, tally.failures


def test_guessing_a_deletion(
    client: FlaskClient,
    kiosk: SigningKiosk,
    face_vectors: dict[str, list[np.ndarray]],
    tally: Tally,
) -> None:
    """Kiosk deletion: guessed numbers with the face, then other faces with the number."""
    enroll_p12(client, kiosk, face_vectors)
    face = face_vectors["p12"][3]
    for attempt in range(10):
        result = delete_with(client, kiosk, face, phone=f"+1 438 555 {attempt:04d}")
        tally.case(result.get_json() == {"status": "not_found"}, f"guess {attempt}: deleted?")
    locked = delete_with(client, kiosk, face, phone=P12_PHONE)
    tally.case(
        locked.status_code == 423 and locked.get_json()["code"] == "step_up_locked",
        f"the right number after ten guesses: {locked.status_code}",
    )
    assert tally.handled == tally.tried, tally.failures


@pytest.mark.settings(limit_per_payment=20_000, voids_per_kiosk_day=3)
def test_probing_a_face_before_money_moves(
    client: FlaskClient,
    kiosk: SigningKiosk,
    face_vectors: dict[str, list[np.ndarray]],
    tally: Tally,
) -> None:
    """Answers before money moves tell an enrolled face nothing a stranger's would not."""
    enroll_p12(client, kiosk, face_vectors)
    compared = ("status", "state", "decline_code", "shopper_label", "wallet_balance")
    enrolled, stranger = face_vectors["p12"][3], face_vectors["p04"][0]
    for amount in (30_000, 25_000):  # over the per-payment limit
        mine, theirs = (
            _pay_once(client, kiosk, face, P12_PHONE, amount) for face in (enrolled, stranger)
        )
        tally.case(
            all(mine.get(k) == theirs.get(k) for k in compared),
            f"over-limit {amount}: {mine} against {theirs}",
        )
    payload = {
        "amount": 1,
        "currency": "CAD",
        "capture_method": "manual",
        "probe": kiosk.seal(enrolled, purpose="pay"),
    }
    statuses = []
    for _ in range(5):
        first = signed(client, kiosk, "POST", "/v1/payments", payload, key=new_key())
        statuses.append(first.status_code)
        if first.status_code != 201:
            continue
        authorized = answer(client, kiosk, first.get_json(), phone=P12_PHONE).get_json()
        tally.case(
            "shopper_label" not in authorized and "wallet_balance" not in authorized,
            "a manual authorization named the shopper",
        )
        path = f"/v1/payments/{authorized['payment_id']}/void"
        signed(client, kiosk, "POST", path, {}, key=new_key())
    tally.case(statuses == [201, 201, 201, 429, 429], f"authorize-then-void: {statuses}")
    assert tally.handled == tally.tried, tally.failures
