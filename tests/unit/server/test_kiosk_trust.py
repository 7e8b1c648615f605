"""Kiosk trust: pairing once, signed requests only; replays, tampering, staleness, revocation."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask.testing import FlaskClient

from server.crypto import kiosk_public_key_bytes
from server.templates import b64encode
from tests.support.kiosk import SigningKiosk, enrollment_payload

PATH = "/v1/enrollments"


def _payload(client: FlaskClient, kiosk: SigningKiosk) -> dict[str, Any]:
    rng = np.random.default_rng(11)
    vectors = []
    for _ in range(3):
        v = rng.normal(size=128).astype(np.float32)
        vectors.append(v / np.linalg.norm(v))
    return enrollment_payload(kiosk, client.get("/v1/policy").get_json(), vectors)


def _code(response: Any) -> str:
    assert response.mimetype == "application/problem+json"
    return str(response.get_json()["code"])


def test_pairing_code_works_once(app: Any, client: FlaskClient) -> None:
    from server.db import transaction
    from server.kiosks import service

    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        code = service.add_kiosk(session, svc.keys.audit_key, name="till", store="s").pairing_code
    key = b64encode(kiosk_public_key_bytes(Ed25519PrivateKey.generate()))
    first = client.post("/v1/kiosks/register", json={"pairing_code": code, "public_key": key})
    assert first.status_code == 201
    assert (
        first.get_json()["server_public_key"]
        == client.get("/.well-known/facepay-server-key").get_json()["public_key"]
    )
    again = client.post("/v1/kiosks/register", json={"pairing_code": code, "public_key": key})
    assert again.status_code == 403 and _code(again) == "pairing_code_invalid"
    wrong = client.post(
        "/v1/kiosks/register", json={"pairing_code": "AAAA-BBBB-CCCC", "public_key": key}
    )
    assert wrong.status_code == 403


def test_signed_request_accepted(client: FlaskClient, kiosk: SigningKiosk) -> None:
    body, headers = kiosk.signed("POST", PATH, _payload(client, kiosk))
    assert client.post(PATH, data=body, headers=headers).status_code == 201


def test_replayed_request_rejected(client: FlaskClient, kiosk: SigningKiosk) -> None:
    body, headers = kiosk.signed("POST", PATH, _payload(client, kiosk))
    assert client.post(PATH, data=body, headers=headers).status_code == 201
    replay = client.post(PATH, data=body, headers=headers)
    assert replay.status_code == 401 and _code(replay) == "request_replayed_or_stale"


def test_tampered_body_rejected(client: FlaskClient, kiosk: SigningKiosk) -> None:
    body, headers = kiosk.signed("POST", PATH, _payload(client, kiosk))
    tampered = body.replace(b"Marie", b"Maria")
    response = client.post(PATH, data=tampered, headers=headers)
    assert response.status_code == 401 and _code(response) == "bad_signature"


def test_signature_bound_to_path_and_method(client: FlaskClient, kiosk: SigningKiosk) -> None:
    body, headers = kiosk.signed("POST", "/v1/other", _payload(client, kiosk))
    response = client.post(PATH, data=body, headers=headers)
    assert response.status_code == 401 and _code(response) == "bad_signature"


@pytest.mark.parametrize("skew", [-3600, 3600])
def test_stale_or_future_timestamp_rejected(
    client: FlaskClient, kiosk: SigningKiosk, skew: int
) -> None:
    payload = _payload(client, kiosk)
    import json

    body = json.dumps(payload).encode()
    headers = kiosk.headers("POST", PATH, body, timestamp=int(time.time()) + skew)
    response = client.post(PATH, data=body, headers=headers)
    assert response.status_code == 401 and _code(response) == "request_replayed_or_stale"


def test_unsigned_request_rejected(client: FlaskClient, kiosk: SigningKiosk) -> None:
    response = client.post(PATH, json=_payload(client, kiosk))
    assert response.status_code == 401 and _code(response) == "request_unsigned"


def test_unknown_kiosk_rejected(client: FlaskClient, kiosk: SigningKiosk) -> None:
    impostor = SigningKiosk(kiosk.kiosk_id, Ed25519PrivateKey.generate(), kiosk.server_public_key)
    body, headers = impostor.signed("POST", PATH, _payload(client, kiosk))
    assert _code(client.post(PATH, data=body, headers=headers)) == "bad_signature"
    headers["X-Facepay-Kiosk"] = "00000000-0000-0000-0000-000000000000"
    assert _code(client.post(PATH, data=body, headers=headers)) == "kiosk_unknown"


def test_revoked_kiosk_rejected(app: Any, client: FlaskClient, kiosk: SigningKiosk) -> None:
    from server.db import transaction
    from server.kiosks import service

    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        service.revoke(session, svc.keys.audit_key, kiosk.kiosk_id)
    body, headers = kiosk.signed("POST", PATH, _payload(client, kiosk))
    response = client.post(PATH, data=body, headers=headers)
    assert response.status_code == 403 and _code(response) == "kiosk_revoked"


def test_errors_are_problem_json(client: FlaskClient) -> None:
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and _code(missing) == "not_found"
    wrong_method = client.delete("/v1/policy")
    assert wrong_method.status_code == 405 and _code(wrong_method) == "method_not_allowed"
    bad = client.post("/v1/kiosks/register", json={"pairing_code": 5})
    assert bad.status_code == 422 and _code(bad) == "validation_failed"
    assert client.get("/healthz").get_json() == {"status": "ok"}
