"""Two server processes over one database behave as one gallery: an enrollment made through one
is seen by the other within one second (SQLite: polled counter; PostgreSQL: LISTEN/NOTIFY)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.crypto import kiosk_public_key_bytes
from server.templates import b64decode, b64encode
from tests.support.kiosk import SigningKiosk, enrollment_payload
from tests.support.processes import base_env, facepay, free_port, http, server_process, signed_post


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
        # And it matches that face: a second enrollment of it through that process is refused.
        status, answer = signed_post(
            kiosk,
            second,
            "/v1/enrollments",
            enrollment_payload(kiosk, policy, photos[-3:], email="again@example.com"),
        )
        assert status == 409 and answer["code"] == "already_enrolled"
