"""Hostile input at the API.

Schemathesis generates requests from the committed OpenAPI document (server/openapi.yaml),
both conforming to it and violating it, and sends them to a running server (werkzeug on
loopback), once as generated (bad or no signature) and once signed by a registered kiosk so
that they reach validation and the handlers. No answer may be a 5xx, and every error must be
problem+json with a code. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from werkzeug.serving import make_server

from tests.adversarial.conftest import LONG, Tally
from tests.support.kiosk import SigningKiosk

SCHEMA = schemathesis.openapi.from_path(
    Path(__file__).resolve().parents[2] / "server" / "openapi.yaml"
)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
EXAMPLES = 150 if LONG else 12
SIGNATURE_HEADERS = ("X-Facepay-Kiosk", "X-Facepay-Timestamp", "X-Facepay-Nonce")


@pytest.fixture
def base_url(app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def body_bytes(case: Any) -> bytes | None:
    if case.body is None or type(case.body).__name__ == "NotSet":
        return None
    if isinstance(case.body, bytes):
        return case.body
    try:
        return json.dumps(case.body, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        return json.dumps(case.body).encode("ascii")


def well_formed(response: requests.Response) -> tuple[bool, str]:
    if response.status_code >= 500:
        return False, f"{response.status_code}"
    if response.status_code >= 400:
        if response.headers.get("Content-Type", "").split(";")[0] != "application/problem+json":
            return False, f"{response.status_code} as {response.headers.get('Content-Type')}"
        try:
            code = response.json().get("code")
        except ValueError:
            return False, "error body is not JSON"
        if not code:
            return False, "problem without a code"
    return True, ""


def send(
    http: requests.Session, base_url: str, case: Any, kiosk: SigningKiosk | None
) -> requests.Response | None:
    body = body_bytes(case)
    headers = {str(k): str(v) for k, v in (case.headers or {}).items() if str(k).lower() != "host"}
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    path = case.formatted_path
    if kiosk is not None:
        for name in (*SIGNATURE_HEADERS, "X-Facepay-Signature"):
            headers.pop(name, None)
        url_path = requests.Request("GET", base_url + path, params=case.query).prepare().path_url
        headers.update(kiosk.headers(case.method.upper(), url_path, body or b""))
        if body is None:
            headers.pop("Content-Type", None)
    try:
        return http.request(
            case.method.upper(),
            base_url + path,
            params=case.query,
            data=body,
            headers=headers,
            timeout=30,
        )
    except (ValueError, UnicodeError, requests.exceptions.InvalidHeader):
        return None  # not even sendable over HTTP: nothing reached the server


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("signing", ["signed", "as generated"])
def test_generated_requests(
    base_url: str, kiosk: SigningKiosk, tally: Tally, mode: GenerationMode, signing: str
) -> None:
    """Requests generated from the OpenAPI document (Schemathesis)."""
    http = requests.Session()
    signer = kiosk if signing == "signed" else None
    for operation in OPERATIONS:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def exercise(case: Any) -> None:
            response = send(http, base_url, case, signer)
            if response is None:
                return
            ok, why = well_formed(response)
            tally.case(ok, f"{case.method} {case.formatted_path} ({mode.value}): {why}")

        try:
            exercise()
        except Unsatisfiable:  # nothing in this operation can be made invalid (no inputs)
            assert mode is GenerationMode.NEGATIVE, operation.path
    assert http.get(f"{base_url}/healthz", timeout=5).status_code == 200
