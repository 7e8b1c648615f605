"""A signing kiosk for server tests: real Ed25519 signatures and real sealing, no face engine."""

from __future__ import annotations

import json
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.crypto import body_sha256_hex, kiosk_public_key_bytes, seal_to, sign_request
from server.templates import b64decode, b64encode, encode_vector, transport_associated_data

DEFAULT_PACK = "dlib-resnet-v1@1"


@dataclass
class SigningKiosk:
    kiosk_id: str
    private_key: Ed25519PrivateKey
    server_public_key: bytes
    clock: Callable[[], float] = time.time
    sent: list[dict[str, Any]] = field(default_factory=list)

    def seal(
        self, vector: np.ndarray, *, purpose: str, pack: str = DEFAULT_PACK, liveness: str = "none"
    ) -> dict[str, str]:
        ad = transport_associated_data(
            kiosk_id=self.kiosk_id, pack=pack, purpose=purpose, liveness=liveness
        )
        return {
            "pack": pack,
            "liveness": liveness,
            "sealed": b64encode(seal_to(self.server_public_key, encode_vector(vector), ad)),
        }

    def headers(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> dict[str, str]:
        stamp = int(self.clock()) if timestamp is None else timestamp
        once = nonce or secrets.token_urlsafe(18)
        signature = sign_request(
            self.private_key,
            method=method,
            path=path,
            body_sha256_hex=body_sha256_hex(body),
            timestamp=stamp,
            nonce=once,
            kiosk_id=self.kiosk_id,
        )
        return {
            "X-Facepay-Kiosk": self.kiosk_id,
            "X-Facepay-Timestamp": str(stamp),
            "X-Facepay-Nonce": once,
            "X-Facepay-Signature": signature,
            "Content-Type": "application/json",
        }

    def signed(self, method: str, path: str, payload: Any) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        return body, self.headers(method, path, body)


def register_kiosk(client: Any, pairing_code: str) -> SigningKiosk:
    """Register a fresh key pair with a pairing code, through the API (Flask test client)."""
    private_key = Ed25519PrivateKey.generate()
    response = client.post(
        "/v1/kiosks/register",
        json={
            "pairing_code": pairing_code,
            "public_key": b64encode(kiosk_public_key_bytes(private_key)),
        },
    )
    assert response.status_code == 201, response.get_json()
    data = response.get_json()
    return SigningKiosk(data["kiosk_id"], private_key, b64decode(data["server_public_key"]))


def enrollment_payload(
    kiosk: SigningKiosk,
    policy: dict[str, Any],
    vectors: list[np.ndarray],
    *,
    name: str = "Marie Tremblay",
    email: str = "marie@example.com",
    phone: str | None = None,
    locale: str = "en",
    wallet: int = 10_000,
    pack: str = DEFAULT_PACK,
    liveness: str = "none",
) -> dict[str, Any]:
    """An enrollment's body. Without a phone, every shopper's number ends in 0142 (the digits
    the tests type at step-up), and differs by its exchange, derived from the email address
    (a number names one account): marie@example.com's is +1 514 555 0142."""
    if phone is None:
        exchange = 555 if email == "marie@example.com" else zlib.crc32(email.encode()) % 900 + 100
        phone = f"+1 514 {exchange} 0142"
    return {
        "consent": {
            "policy_version": policy["version"],
            "text_sha256": policy["texts"][locale]["sha256"],
            "locale": locale,
            "signature_name": name,
            "signed_at": "2026-11-26T12:00:00+00:00",
        },
        "templates": [
            kiosk.seal(v, purpose="enroll", pack=pack, liveness=liveness) for v in vectors
        ],
        "contact": {"email": email, "phone": phone},
        "wallet": {"amount": wallet, "currency": "CAD"},
    }
