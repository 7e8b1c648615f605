"""The payment API for kiosks: thin routes over `server.payments.service`, each POST run once
per idempotency key."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from apiflask import APIBlueprint
from flask import Response

from server.db import transaction
from server.errors import json_response
from server.extensions import services
from server.guesses.notices import tell_locked_shoppers
from server.idempotency import service as idempotency
from server.idempotency.http import respond_once
from server.kiosks.auth import SECURITY, current_kiosk, kiosk_required
from server.payments import service
from server.payments import step_up as step_up_service
from server.payments.schemas import CaptureIn, IdempotencyHeaders, PaymentIn, PaymentOut, StepUpIn

logger = logging.getLogger(__name__)

bp = APIBlueprint("payments", __name__, url_prefix="/v1", tag="Payments")

_HOUSEKEEPING_CHANCE = 200  # about one request in this many expires stale holds and keys


def _once(
    headers: Mapping[str, Any],
    parameters: Mapping[str, Any],
    work: idempotency.Work | idempotency.Staged,
) -> Response:
    response = respond_once(headers, parameters, work)
    if idempotency.now_and_then(_HOUSEKEEPING_CHANCE):
        _housekeeping()
    return response


def _housekeeping() -> None:
    svc = services()
    try:
        with transaction(svc.sessions) as session:
            service.sweep(session, svc.keys)
            idempotency.prune(session, keep_hours=svc.settings.idempotency_ttl_h)
    except Exception as exc:  # never fails the request it rides on; the CLI sweep remains
        logger.warning("payments housekeeping failed: %s", type(exc).__name__)


@bp.post("/payments")
@kiosk_required
@bp.input(IdempotencyHeaders, location="headers", arg_name="headers")
@bp.input(PaymentIn, arg_name="body")
@bp.output(PaymentOut, status_code=201)
@bp.doc(
    summary="Pay by face: approved, declined with a code, or step-up required",
    security=SECURITY,
)
def create_payment(headers: dict[str, Any], body: dict[str, Any]) -> Response:
    svc = services()
    kiosk = current_kiosk()
    response = _once(
        headers,
        body,
        idempotency.Staged(
            lambda: service.match_then_record(
                kiosk=kiosk, body=body, keys=svc.keys, gallery=svc.gallery, settings=svc.settings
            )
        ),
    )
    if response.status_code == service.ManualAuthorizationsPaused.status_code:
        # The refusal is the request's stored answer, not an exception: count it here.
        svc.metrics.manual_authorizations_refused.labels(store=kiosk.store).inc()
    return response


@bp.get("/payments/<payment_id>")
@kiosk_required
@bp.output(PaymentOut)
@bp.doc(summary="A payment this kiosk made", security=SECURITY)
def get_payment(payment_id: str) -> Response:
    svc = services()
    with svc.sessions() as session:
        body = service.get(
            session,
            kiosk=current_kiosk(),
            payment_id=payment_id,
            tries_allowed=svc.settings.step_up_tries,
        )
    # The same body as the POST answers (already JSON-ready), so not re-serialized.
    return json_response(200, body)


@bp.post("/payments/<payment_id>/step-up")
@kiosk_required
@bp.input(IdempotencyHeaders, location="headers", arg_name="headers")
@bp.input(StepUpIn, arg_name="body")
@bp.output(PaymentOut)
@bp.doc(
    summary="Answer a step-up challenge: the phone's last four digits or the whole number, "
    "as the challenge's step_up_ask says",
    security=SECURITY,
)
def step_up(payment_id: str, headers: dict[str, Any], body: dict[str, Any]) -> Response:
    svc = services()
    kiosk = current_kiosk()
    locked_now: list[str] = []
    response = _once(
        headers,
        body,
        lambda session: step_up_service.step_up(
            session,
            kiosk=kiosk,
            payment_id=payment_id,
            body=body,
            keys=svc.keys,
            gallery=svc.gallery,
            settings=svc.settings,
            locked_now=locked_now,
        ),
    )
    tell_locked_shoppers(svc, locked_now)  # committed: now the mail
    return response


@bp.post("/payments/<payment_id>/capture")
@kiosk_required
@bp.input(IdempotencyHeaders, location="headers", arg_name="headers")
@bp.input(CaptureIn, arg_name="body")
@bp.output(PaymentOut)
@bp.doc(summary="Capture an authorization, once, for at most its amount", security=SECURITY)
def capture(payment_id: str, headers: dict[str, Any], body: dict[str, Any]) -> Response:
    svc = services()
    kiosk = current_kiosk()
    return _once(
        headers,
        body,
        lambda session: service.capture(
            session, kiosk=kiosk, payment_id=payment_id, amount=body["amount"], keys=svc.keys
        ),
    )


@bp.post("/payments/<payment_id>/void")
@kiosk_required
@bp.input(IdempotencyHeaders, location="headers", arg_name="headers")
@bp.output(PaymentOut)
@bp.doc(summary="Void an authorization: its hold goes back to the wallet", security=SECURITY)
def void(payment_id: str, headers: dict[str, Any]) -> Response:
    svc = services()
    kiosk = current_kiosk()
    response = _once(
        headers,
        {},
        lambda session: service.void(session, kiosk=kiosk, payment_id=payment_id, keys=svc.keys),
    )
    if response.status_code == 200:
        svc.metrics.voids.labels(store=kiosk.store).inc()
    return response
