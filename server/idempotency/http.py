"""Idempotent kiosk requests in Flask: the key from the `Idempotency-Key` header, the scope
the signed kiosk, and the answer (stored or fresh) as a JSON response."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Response, request

from server.errors import json_response
from server.extensions import services
from server.idempotency import service as idempotency
from server.kiosks.auth import current_kiosk


def respond_once(
    headers: Mapping[str, Any],
    parameters: Mapping[str, Any],
    work: idempotency.Work | idempotency.Staged,
) -> Response:
    """Run `work` once for this kiosk's key and these parameters; replays say so in a header."""
    svc = services()
    outcome = idempotency.run(
        svc.sessions,
        scope=f"kiosk:{current_kiosk().id}",
        key=idempotency.check_key(headers.get("idempotency_key")),
        fingerprint=idempotency.fingerprint(request.method, request.path, parameters),
        lease_s=svc.settings.idempotency_lease_s,
        work=work,
    )
    response = json_response(outcome.status, outcome.body)
    if outcome.replayed:
        svc.metrics.replays.inc()
        response.headers["Idempotent-Replayed"] = "true"
    return response
