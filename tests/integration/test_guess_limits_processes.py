"""Guess limits across two server processes over one database (SQLite and PostgreSQL): the
failed step-ups made through one count on the other, and the lock holds on both."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.kiosk import SigningKiosk, enrollment_payload
from tests.support.payments import new_key
from tests.support.processes import (
    base_env,
    facepay,
    free_port,
    http,
    register_kiosk_http,
    server_process,
    signed_call,
)

PHONE = "+1 514 555 0112"


def _pay(kiosk: SigningKiosk, base: str, face: np.ndarray, phone: str) -> dict[str, Any]:
    payload = {
        "amount": 1_500,
        "currency": "CAD",
        "capture_method": "automatic",
        "probe": kiosk.seal(face, purpose="pay"),
    }
    status, first = signed_call(
        kiosk, base, "POST", "/v1/payments", payload, idempotency_key=new_key()
    )
    assert status == 201 and first["step_up_ask"] == "phone", first
    path = f"/v1/payments/{first['payment_id']}/step-up"
    body = {"challenge_id": first["challenge_id"], "phone": phone}
    status, answer = signed_call(kiosk, base, "POST", path, body, idempotency_key=new_key())
    assert status == 200, answer
    result: dict[str, Any] = answer
    return result


def test_failures_through_one_process_lock_the_other(
    tmp_path: Path, database_url: str, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    env = base_env(tmp_path / "instance", database_url)
    env["FACEPAY_RISK_STRANGER"] = "1e-9"  # the default rule, asking for the whole number
    facepay(env, "server", "init")
    with (
        server_process(env, free_port(), tmp_path / "a.log") as first,
        server_process(env, free_port(), tmp_path / "b.log") as second,
    ):
        kiosk = register_kiosk_http(env, first)
        _, policy = http("GET", f"{first}/v1/policy")
        payload = enrollment_payload(
            kiosk, policy, face_vectors["p12"][:3], email="p12@example.com", phone=PHONE
        )
        assert signed_call(kiosk, first, "POST", "/v1/enrollments", payload)[0] == 201
        deadline = time.monotonic() + 5
        while http("GET", f"{second}/readyz")[1]["gallery"]["dlib-resnet-v1@1"] != 1:
            assert time.monotonic() < deadline, "the second process never saw the enrollment"
            time.sleep(0.05)
        impostor, owner = face_vectors["p11"][1], face_vectors["p12"][3]
        for attempt in range(10):
            base = first if attempt % 2 else second
            answer = _pay(kiosk, base, impostor, PHONE)
            assert answer["decline_code"] == "not_approved", answer
        for base in (first, second):
            locked = _pay(kiosk, base, owner, PHONE)
            assert (locked["status"], locked["decline_code"]) == ("declined", "step_up_locked")
