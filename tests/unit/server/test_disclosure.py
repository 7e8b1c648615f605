"""What a kiosk learns about a face before money moves, on SQLite and PostgreSQL: an enrolled
face refused for its limits and a stranger's face get the same answer; a manual authorization
names nobody until captured; authorize-then-void is limited per kiosk and store."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from tests.support.kiosk import SigningKiosk
from tests.support.payments import new_key
from tests.unit.server.conftest import DEFAULT_RISK
from tests.unit.server.test_payments import signed
from tests.unit.server.test_step_up_ladder import P12_PHONE, answer, enroll_p12

# The answer's fields that could differ between two faces (ids and times always differ).
COMPARED = ("status", "state", "decline_code", "shopper_label", "wallet_balance", "tries_left")


@pytest.fixture
def app_config(app_config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("settings")
    return {**app_config, **DEFAULT_RISK, **(marker.kwargs if marker else {})}


def pay(
    client: FlaskClient, kiosk: SigningKiosk, face: np.ndarray, amount: int, method: str
) -> dict[str, Any]:
    payload = {
        "amount": amount,
        "currency": "CAD",
        "capture_method": method,
        "probe": kiosk.seal(face, purpose="pay"),
    }
    first: dict[str, Any] = signed(
        client, kiosk, "POST", "/v1/payments", payload, key=new_key()
    ).get_json()
    assert first["status"] == "step_up_required", first
    result: dict[str, Any] = answer(client, kiosk, first, phone_last4=P12_PHONE[-4:]).get_json()
    return result


def seen(result: dict[str, Any]) -> dict[str, Any]:
    return {name: result.get(name) for name in COMPARED}


@pytest.mark.settings(limit_per_payment=20_000)
def test_an_over_limit_amount_and_a_strangers_face_get_the_same_answer(
    client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    enroll_p12(client, kiosk, face_vectors)
    over_limit = pay(client, kiosk, face_vectors["p12"][3], 30_000, "automatic")
    stranger = pay(client, kiosk, face_vectors["p04"][0], 30_000, "automatic")
    assert seen(over_limit) == seen(stranger)
    assert over_limit["decline_code"] == "not_approved"


@pytest.mark.settings(limit_per_payment=1_000_000, limit_per_day=1_000_000)
def test_short_funds_and_a_strangers_face_get_the_same_answer(
    client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    enroll_p12(client, kiosk, face_vectors)  # a wallet of 1,000.00
    spent = pay(client, kiosk, face_vectors["p12"][3], 99_000, "automatic")
    assert spent["status"] == "approved" and spent["wallet_balance"] == 1_000
    poor = pay(client, kiosk, face_vectors["p12"][3], 5_000, "automatic")
    stranger = pay(client, kiosk, face_vectors["p04"][0], 5_000, "automatic")
    assert seen(poor) == seen(stranger)


def test_a_manual_authorization_names_nobody_until_captured(
    client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    enroll_p12(client, kiosk, face_vectors)
    held = pay(client, kiosk, face_vectors["p12"][3], 100, "manual")
    assert held["status"] == "approved" and held["state"] == "authorized"
    assert "shopper_label" not in held and "wallet_balance" not in held
    path = f"/v1/payments/{held['payment_id']}"
    again = signed(client, kiosk, "GET", path).get_json()
    assert "shopper_label" not in again and "wallet_balance" not in again
    captured = signed(client, kiosk, "POST", f"{path}/capture", {}, key=new_key()).get_json()
    assert captured["state"] == "captured"
    assert captured["shopper_label"] == "Pat T." and captured["wallet_balance"] == 99_900


@pytest.mark.settings(voids_per_kiosk_day=3)
def test_authorize_then_void_is_limited_and_counted(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    enroll_p12(client, kiosk, face_vectors)
    for _ in range(3):
        held = pay(client, kiosk, face_vectors["p12"][3], 1, "manual")
        path = f"/v1/payments/{held['payment_id']}/void"
        assert signed(client, kiosk, "POST", path, {}, key=new_key()).status_code == 200
    payload = {
        "amount": 1,
        "currency": "CAD",
        "capture_method": "manual",
        "probe": kiosk.seal(face_vectors["p12"][3], purpose="pay"),
    }
    refused = signed(client, kiosk, "POST", "/v1/payments", payload, key=new_key())
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "manual_authorizations_paused"
    payload["capture_method"] = "automatic"  # paying still works
    assert signed(client, kiosk, "POST", "/v1/payments", payload, key=new_key()).status_code == 201
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'facepay_authorizations_voided_total{store="Montreal 01"} 3.0' in metrics
    assert 'facepay_manual_authorizations_refused_total{store="Montreal 01"} 1.0' in metrics
