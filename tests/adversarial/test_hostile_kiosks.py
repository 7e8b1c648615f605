"""Hostile kiosks.

Requests that a stolen, cloned, buggy or malicious kiosk could send: each must be refused with
a clear problem+json error (never a 5xx), change nothing, and leave the server serving. On
SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask.testing import FlaskClient

from server.crypto import body_sha256_hex, sign_request
from server.db import transaction
from server.kiosks import service as kiosks
from tests.adversarial.conftest import LONG, Tally
from tests.support.kiosk import SigningKiosk, register_kiosk
from tests.support.payments import SyntheticFace, new_key, payment_payload
from tests.unit.server.test_payments import assert_ledger_ok, enroll, pay, signed

PAY = "/v1/payments"


def is_problem(response: Any, status: int | None = None, code: str | None = None) -> bool:
    """A clear refusal: a 4xx problem+json with a code (the one expected, when given)."""
    if not 400 <= response.status_code < 500:
        return False
    if status is not None and response.status_code != status:
        return False
    if response.mimetype != "application/problem+json":
        return False
    body = response.get_json(silent=True) or {}
    return bool(body.get("code")) and (code is None or body["code"] == code)


def payments_count(app: Any) -> int:
    from sqlalchemy import func, select

    from server.payments.models import Payment

    with app.extensions["facepay"].sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Payment)) or 0)


def second_kiosk(app: Any, client: FlaskClient, store: str) -> SigningKiosk:
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        created = kiosks.add_kiosk(session, svc.keys.audit_key, name="till-9", store=store)
    return register_kiosk(client, created.pairing_code)


def send_raw(
    client: FlaskClient, method: str, path: str, body: bytes, headers: dict[str, str]
) -> Any:
    return client.open(path, method=method, data=body, headers=headers)


@pytest.fixture
def shopper(client: FlaskClient, kiosk: SigningKiosk) -> SyntheticFace:
    face = SyntheticFace(np.random.default_rng(81))
    enroll(client, kiosk, face)
    return face


def test_replayed_requests(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, shopper: SyntheticFace, tally: Tally
) -> None:
    """Replayed requests (same bytes, same signature)."""
    rounds = 60 if LONG else 12
    for round_number in range(rounds):
        payload = payment_payload(kiosk, shopper.sample(), 100 + round_number)
        body = json.dumps(payload).encode()
        headers = {**kiosk.headers("POST", PAY, body), "Idempotency-Key": new_key()}
        first = send_raw(client, "POST", PAY, body, headers)
        assert first.status_code == 201, first.get_json()
        before = payments_count(app)
        for _ in range(2):
            replay = send_raw(client, "POST", PAY, body, headers)
            tally.case(
                is_problem(replay, 401, "request_replayed_or_stale")
                and payments_count(app) == before,
                f"replay answered {replay.status_code}",
            )
        path = f"/v1/payments/{first.get_json()['payment_id']}"
        get_headers = kiosk.headers("GET", path, b"")
        assert client.get(path, headers=get_headers).status_code == 200
        again = client.get(path, headers=get_headers)
        tally.case(is_problem(again, 401, "request_replayed_or_stale"), "GET replayed")
    assert_ledger_ok(app)


def test_resigned_and_tampered_requests(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, shopper: SyntheticFace, tally: Tally
) -> None:
    """Re-signed by another key, or tampered after signing."""
    attacker = Ed25519PrivateKey.generate()
    before = payments_count(app)

    def attempt(mutate: str) -> Any:
        payload = payment_payload(kiosk, shopper.sample(), 500)
        body = json.dumps(payload).encode()
        headers = {**kiosk.headers("POST", PAY, body), "Idempotency-Key": new_key()}
        path, method = PAY, "POST"
        if mutate == "resigned":
            stamp, nonce = int(time.time()), secrets.token_urlsafe(18)
            headers["X-Facepay-Timestamp"], headers["X-Facepay-Nonce"] = str(stamp), nonce
            headers["X-Facepay-Signature"] = sign_request(
                attacker,
                method="POST",
                path=PAY,
                body_sha256_hex=body_sha256_hex(body),
                timestamp=stamp,
                nonce=nonce,
                kiosk_id=kiosk.kiosk_id,
            )
        elif mutate == "amount":
            body = body.replace(b'"amount": 500', b'"amount": 5')
        elif mutate == "currency":
            body = body.replace(b'"CAD"', b'"USD"')
        elif mutate == "probe":
            other = payment_payload(kiosk, shopper.sample(), 500)
            body = json.dumps({**payload, "probe": other["probe"]}).encode()
        elif mutate == "timestamp":
            headers["X-Facepay-Timestamp"] = str(int(headers["X-Facepay-Timestamp"]) - 1)
        elif mutate == "nonce":
            headers["X-Facepay-Nonce"] = secrets.token_urlsafe(18)
        elif mutate == "kiosk":
            other = second_kiosk(app, client, "Montreal 01")
            headers["X-Facepay-Kiosk"] = other.kiosk_id
        elif mutate == "path":
            path = "/v1/deletions"
        elif mutate == "method":
            method = "PUT"
        elif mutate == "signature-bitflip":
            raw = bytearray(base64.urlsafe_b64decode(headers["X-Facepay-Signature"] + "=="))
            raw[0] ^= 1
            flipped = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
            headers["X-Facepay-Signature"] = flipped
        return send_raw(client, method, path, body, headers)

    mutations = [
        "resigned",
        "amount",
        "currency",
        "probe",
        "timestamp",
        "nonce",
        "kiosk",
        "path",
        "method",
        "signature-bitflip",
    ]
    for mutate in mutations * (5 if LONG else 1):
        answer = attempt(mutate)
        expected = 405 if mutate == "method" else 401
        tally.case(is_problem(answer, expected), f"{mutate}: {answer.status_code}")
    tally.case(payments_count(app) == before, "a tampered request made a payment")


def test_stale_and_malformed_signature_headers(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, shopper: SyntheticFace, tally: Tally
) -> None:
    """Stale, future, malformed or missing signature headers."""
    window = app.extensions["facepay"].settings.signature_window_s
    now = int(time.time())
    before = payments_count(app)
    payload = payment_payload(kiosk, shopper.sample(), 300)
    body = json.dumps(payload).encode()
    for skew in (-window - 5, window + 5, -86_400, 86_400 * 365):
        headers = {
            **kiosk.headers("POST", PAY, body, timestamp=now + skew),
            "Idempotency-Key": new_key(),
        }
        answer = send_raw(client, "POST", PAY, body, headers)
        tally.case(is_problem(answer, 401), f"timestamp skew {skew}: {answer.status_code}")
    for stamp in (-(10**12), 10**12, 0, -1):  # no kiosk could even sign these
        headers = {**kiosk.headers("POST", PAY, body), "Idempotency-Key": new_key()}
        headers["X-Facepay-Timestamp"] = str(stamp)
        answer = send_raw(client, "POST", PAY, body, headers)
        tally.case(is_problem(answer, 401), f"timestamp {stamp}: {answer.status_code}")
    bad_values = {
        "X-Facepay-Timestamp": ["", "abc", "1e9", "１２３", "-", str(10**40), " 1 "],
        "X-Facepay-Nonce": ["", "a" * 10_000, "\u0000", "é" * 20],
        "X-Facepay-Signature": ["", "!!!", "AAAA", base64.b64encode(b"x" * 200).decode()],
        "X-Facepay-Kiosk": ["", "not-a-uuid", "0" * 36, "'; DROP TABLE kiosks; --", "x" * 5000],
    }
    for header, values in bad_values.items():
        for value in values:
            headers = {**kiosk.headers("POST", PAY, body), "Idempotency-Key": new_key()}
            headers[header] = value
            answer = send_raw(client, "POST", PAY, body, headers)
            tally.case(is_problem(answer), f"{header}={value[:20]!r}: {answer.status_code}")
        headers = {**kiosk.headers("POST", PAY, body), "Idempotency-Key": new_key()}
        del headers[header]
        answer = send_raw(client, "POST", PAY, body, headers)
        tally.case(is_problem(answer, 401), f"without {header}: {answer.status_code}")
    tally.case(payments_count(app) == before, "a badly signed request made a payment")


@pytest.mark.settings(max_body_bytes=16 * 1024)
def test_oversized_bodies(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, shopper: SyntheticFace, tally: Tally
) -> None:
    """Oversized bodies, over the configured limit (FACEPAY_MAX_BODY_BYTES)."""
    limit = app.extensions["facepay"].settings.max_body_bytes
    assert limit == 16 * 1024
    before = payments_count(app)
    payload = payment_payload(kiosk, shopper.sample(), 300)
    for size in (limit + 1, 2 * limit, 1024 * 1024, 8 * 1024 * 1024):
        padded = {**payload, "padding": "x" * size}
        body = json.dumps(padded).encode()
        headers = {**kiosk.headers("POST", PAY, body), "Idempotency-Key": new_key()}
        answer = send_raw(client, "POST", PAY, body, headers)
        tally.case(is_problem(answer, 413, "payload_too_large"), f"{size} B: {answer.status_code}")
    for path in ("/v1/enrollments", "/v1/deletions", "/v1/kiosks/register"):
        body = b"{" + b'"a":"' + b"y" * (limit + 10) + b'"}'
        headers = kiosk.headers("POST", path, body)
        answer = send_raw(client, "POST", path, body, headers)
        tally.case(is_problem(answer, 413), f"{path}: {answer.status_code}")
    tally.case(payments_count(app) == before, "an oversized request made a payment")
    normal = pay(client, kiosk, shopper, 300)  # a normal request still fits and works
    tally.case(normal.status_code == 201, f"normal payment: {normal.status_code}")


def malformed_bodies(kiosk: SigningKiosk, shopper: SyntheticFace) -> list[tuple[str, bytes]]:
    good = payment_payload(kiosk, shopper.sample(), 300)
    sealed = good["probe"]["sealed"]
    cases: list[tuple[str, Any]] = [
        ("not json", b"this is not json"),
        ("invalid utf-8", b'{"amount": "\xff\xfe"}'),
        ("json array", b"[1, 2, 3]"),
        ("json null", b"null"),
        ("json string", b'"pay me"'),
        ("empty", b""),
        ("deep nesting", b'{"a":' * 5000 + b"1" + b"}" * 5000),
        ("NaN amount", json.dumps({**good}).replace('"amount": 300', '"amount": NaN').encode()),
        ("huge amount", {**good, "amount": 10**400}),
        ("negative amount", {**good, "amount": -300}),
        ("zero amount", {**good, "amount": 0}),
        ("float amount", {**good, "amount": 3.5}),
        ("string amount", {**good, "amount": "300"}),
        ("bool amount", {**good, "amount": True}),
        ("lowercase currency", {**good, "currency": "cad"}),
        ("unknown currency", {**good, "currency": "XXX"}),
        ("currency with NUL", {**good, "currency": "CA\u0000"}),
        ("no probe", {k: v for k, v in good.items() if k != "probe"}),
        ("probe not an object", {**good, "probe": "abc"}),
        ("sealed not base64", {**good, "probe": {**good["probe"], "sealed": "***"}}),
        ("sealed truncated", {**good, "probe": {**good["probe"], "sealed": sealed[:40]}}),
        ("sealed empty", {**good, "probe": {**good["probe"], "sealed": ""}}),
        ("sealed huge", {**good, "probe": {**good["probe"], "sealed": "A" * 12_000}}),
        ("unknown pack", {**good, "probe": {**good["probe"], "pack": "nope@1"}}),
        ("pack swapped", {**good, "probe": {**good["probe"], "pack": "insightface-buffalo-l@1"}}),
        ("liveness swapped", {**good, "probe": {**good["probe"], "liveness": "insightface"}}),
        ("unknown liveness", {**good, "probe": {**good["probe"], "liveness": "trust-me"}}),
        ("unknown capture", {**good, "capture_method": "later"}),
        ("extra fields", {**good, "shopper_id": "00000000-0000-0000-0000-000000000000"}),
        ("script in field", {**good, "currency": "<script>"}),
    ]
    return [
        (name, value if isinstance(value, bytes) else json.dumps(value).encode())
        for name, value in cases
    ]


def test_malformed_bodies_signed_properly(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, shopper: SyntheticFace, tally: Tally
) -> None:
    """Malformed bodies, correctly signed (they reach validation)."""
    before = payments_count(app)
    for name, body in malformed_bodies(kiosk, shopper):
        for content_type in ("application/json", "text/plain"):
            headers = {
                **kiosk.headers("POST", PAY, body),
                "Idempotency-Key": new_key(),
                "Content-Type": content_type,
            }
            answer = send_raw(client, "POST", PAY, body, headers)
            if name == "extra fields" and content_type == "application/json":
                # Unknown fields are refused too; the named shopper is never used.
                handled = is_problem(answer, 422)
            else:
                handled = is_problem(answer)
            tally.case(handled, f"{name} ({content_type}): {answer.status_code}")
    tally.case(payments_count(app) == before, "a malformed request made a payment")
    tally.case(client.get("/healthz").status_code == 200, "server stopped answering")


def test_revoked_kiosk(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, shopper: SyntheticFace, tally: Tally
) -> None:
    """A revoked kiosk, on every kiosk endpoint."""
    paid = pay(client, kiosk, shopper, 200, capture_method="manual").get_json()
    assert paid["status"] == "approved"
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        kiosks.revoke(session, svc.keys.audit_key, kiosk.kiosk_id)
    payment = paid["payment_id"]
    calls: list[tuple[str, str, Any]] = [
        ("POST", PAY, payment_payload(kiosk, shopper.sample(), 100)),
        ("GET", f"{PAY}/{payment}", None),
        ("POST", f"{PAY}/{payment}/capture", {"amount": 100}),
        ("POST", f"{PAY}/{payment}/void", {}),
        ("POST", f"{PAY}/{payment}/step-up", {"challenge_id": "x", "phone_last4": "0142"}),
        (
            "POST",
            "/v1/deletions",
            {"probe": kiosk.seal(shopper.sample(), purpose="delete"), "phone_last4": "0142"},
        ),
        ("POST", "/v1/enrollments", {}),
    ]
    for method, path, payload in calls:
        answer = signed(client, kiosk, method, path, payload, key=new_key())
        tally.case(
            is_problem(answer, 403, "kiosk_revoked"), f"{method} {path}: {answer.status_code}"
        )
    with svc.sessions() as session:
        from server.payments.models import Payment

        row = session.get(Payment, payment)
        tally.case(row is not None and row.state == "authorized", "revoked kiosk changed a payment")


def test_another_stores_operations(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, shopper: SyntheticFace, tally: Tally
) -> None:
    """A kiosk of another store acting on this store's payments."""
    paid = pay(client, kiosk, shopper, 200, capture_method="manual").get_json()
    stepped = pay(client, kiosk, shopper, 20_000).get_json()
    assert paid["status"] == "approved" and stepped["status"] == "step_up_required"
    intruder = second_kiosk(app, client, "Quebec 07")
    for target in (paid, stepped):
        payment = target["payment_id"]
        calls: list[tuple[str, str, Any]] = [
            ("GET", f"{PAY}/{payment}", None),
            ("POST", f"{PAY}/{payment}/capture", {"amount": 100}),
            ("POST", f"{PAY}/{payment}/void", {}),
            (
                "POST",
                f"{PAY}/{payment}/step-up",
                {"challenge_id": target.get("challenge_id") or "x", "phone_last4": "0142"},
            ),
        ]
        for method, path, payload in calls:
            answer = signed(client, intruder, method, path, payload, key=new_key())
            tally.case(is_problem(answer, 404), f"{method} {path}: {answer.status_code}")
    own = signed(client, kiosk, "GET", f"{PAY}/{paid['payment_id']}").get_json()
    tally.case(own["status"] == "approved" and own.get("captured_amount", 0) == 0, str(own))
    assert_ledger_ok(app)


@pytest.mark.settings(kiosk_rate_limit="20/second;200/minute")
def test_request_floods(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, shopper: SyntheticFace, tally: Tally
) -> None:
    """A request flood from one kiosk (per-kiosk rate limit)."""
    flood = 1_000 if LONG else 300
    limited = 0
    for _ in range(flood):
        payload = payment_payload(kiosk, shopper.sample(), 100)
        answer = signed(client, kiosk, "POST", PAY, payload, key=new_key())
        if answer.status_code == 429:
            limited += 1
            tally.case(
                is_problem(answer, 429, "too_many_requests")
                and int(answer.headers.get("Retry-After", "0")) >= 1,
                f"429 without Retry-After: {dict(answer.headers)}",
            )
        else:
            tally.case(answer.status_code in (201, 200), f"flood answer {answer.status_code}")
    tally.case(limited >= flood - 200, f"only {limited} of {flood} were limited")
    other = second_kiosk(app, client, "Montreal 01")
    answer = pay(client, other, shopper, 100)
    tally.case(answer.status_code == 201, f"another kiosk was limited: {answer.status_code}")
    tally.case(client.get("/healthz").status_code == 200, "the server stopped answering")
    assert_ledger_ok(app)
