"""Two server processes over one database behave as one service: an enrollment or a deletion
made through one is seen by the other within one second (SQLite: polled counter; PostgreSQL:
LISTEN/NOTIFY), and one idempotency key sent to both charges once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.crypto import kiosk_public_key_bytes
from server.templates import b64decode, b64encode
from tests.support.kiosk import SigningKiosk, enrollment_payload
from tests.support.payments import SyntheticFace, new_key, payment_payload
from tests.support.processes import (
    base_env,
    facepay,
    free_port,
    http,
    register_kiosk_http,
    server_process,
    signed_call,
    signed_post,
)


def test_enrollment_on_one_process_is_matched_by_another_within_a_second(
    tmp_path: Path, database_url: str, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    env = base_env(tmp_path / "instance", database_url)
    facepay(env, "server", "init")
    code = (
        facepay(env, "server", "kiosk", "add", "till-1", "--store", "Montreal 01")
        .strip()
        .splitlines()[-1]
    )
    with (
        server_process(env, free_port(), tmp_path / "a.log") as first,
        server_process(env, free_port(), tmp_path / "b.log") as second,
    ):
        key = Ed25519PrivateKey.generate()
        status, registered = http(
            "POST",
            f"{first}/v1/kiosks/register",
            {"pairing_code": code, "public_key": b64encode(kiosk_public_key_bytes(key))},
        )
        assert status == 201, registered
        kiosk = SigningKiosk(
            registered["kiosk_id"], key, b64decode(registered["server_public_key"])
        )
        _, policy = http("GET", f"{second}/v1/policy")
        photos = face_vectors["p02"]

        pack = "dlib-resnet-v1@1"
        assert http("GET", f"{second}/readyz")[1]["gallery"][pack] == 0
        status, enrolled = signed_post(
            kiosk, first, "/v1/enrollments", enrollment_payload(kiosk, policy, photos[:3])
        )
        assert status == 201, enrolled
        committed = time.monotonic()
        while http("GET", f"{second}/readyz")[1]["gallery"][pack] == 0:
            assert time.monotonic() - committed < 5, "the second process never saw the enrollment"
            time.sleep(0.02)
        elapsed = time.monotonic() - committed
        assert elapsed <= 1.0, f"seen by the second process after {elapsed:.2f} s"
        # And it matches that face: a second enrollment of it through that process is a face
        # duplicate, enrolled like any (never refused with a hint), and the first account
        # is mailed (development mails land in the shared instance's outbox).
        status, answer = signed_post(
            kiosk,
            second,
            "/v1/enrollments",
            enrollment_payload(kiosk, policy, photos[-3:], email="again@example.com"),
        )
        assert status == 201, answer
        mails = list((tmp_path / "instance" / "outbox").glob("*.eml"))
        assert len(mails) == 1 and "To: marie@example.com" in mails[0].read_text()


@dataclass
class Replicas:
    env: dict[str, str]
    first: str
    second: str
    kiosk: SigningKiosk


@pytest.fixture
def replicas(tmp_path: Path, database_url: str) -> Iterator[Replicas]:
    env = base_env(tmp_path / "instance", database_url)
    env["FACEPAY_RISK_STRANGER"] = "1e-2"  # a face alone approves in this small gallery
    facepay(env, "server", "init")
    with (
        server_process(env, free_port(), tmp_path / "a.log") as first,
        server_process(env, free_port(), tmp_path / "b.log") as second,
    ):
        yield Replicas(env, first, second, register_kiosk_http(env, first))


def test_a_deletion_on_one_replica_is_honoured_by_the_other_within_a_second(
    replicas: Replicas,
) -> None:
    face = SyntheticFace(np.random.default_rng(31))
    kiosk, first, second = replicas.kiosk, replicas.first, replicas.second
    _, policy = http("GET", f"{first}/v1/policy")
    payload = enrollment_payload(kiosk, policy, face.templates(), phone="+1 514 555 0142")
    assert signed_call(kiosk, first, "POST", "/v1/enrollments", payload)[0] == 201
    pack = "dlib-resnet-v1@1"
    deadline = time.monotonic() + 5
    while http("GET", f"{second}/readyz")[1]["gallery"][pack] != 1:
        assert time.monotonic() < deadline, "the second replica never saw the enrollment"
        time.sleep(0.02)

    deletion = {"probe": kiosk.seal(face.sample(), purpose="delete"), "phone_last4": "0142"}
    status, receipt = signed_call(
        kiosk, first, "POST", "/v1/deletions", deletion, idempotency_key=new_key()
    )
    assert status == 200 and receipt["status"] == "deleted", receipt
    done = time.monotonic()
    while http("GET", f"{second}/readyz")[1]["gallery"][pack] != 0:
        assert time.monotonic() - done < 5, "the second replica never dropped the shopper"
        time.sleep(0.02)
    assert time.monotonic() - done <= 1.0
    status, answer = signed_call(
        kiosk,
        second,
        "POST",
        "/v1/payments",
        payment_payload(kiosk, face.sample(), 100),
        idempotency_key=new_key(),
    )
    assert status == 201 and answer["decline_code"] == "not_approved", answer


def test_one_idempotency_key_sent_to_two_replicas_charges_once(replicas: Replicas) -> None:
    face = SyntheticFace(np.random.default_rng(32))
    kiosk, first, second = replicas.kiosk, replicas.first, replicas.second
    _, policy = http("GET", f"{first}/v1/policy")
    payload = enrollment_payload(kiosk, policy, face.templates(), wallet=10_000)
    assert signed_call(kiosk, first, "POST", "/v1/enrollments", payload)[0] == 201
    pack = "dlib-resnet-v1@1"
    deadline = time.monotonic() + 5
    while http("GET", f"{second}/readyz")[1]["gallery"][pack] != 1:
        assert time.monotonic() < deadline, "the second replica never saw the enrollment"
        time.sleep(0.02)

    payment, key = payment_payload(kiosk, face.sample(), 2_500), new_key()
    barrier = threading.Barrier(20)

    def send(number: int) -> tuple[int, Any]:
        barrier.wait()
        base = first if number % 2 else second
        return signed_call(kiosk, base, "POST", "/v1/payments", payment, idempotency_key=key)

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(send, range(20)))
    assert {status for status, _ in answers} <= {201, 409}, answers
    approved = [body for status, body in answers if status == 201]
    assert approved and all(body == approved[0] for body in approved)
    ledger = json.loads(facepay(replicas.env, "server", "ledger", "check", "--json"))
    assert ledger["ok"] and ledger["payments"] == 1 and ledger["transfers"] == 2
