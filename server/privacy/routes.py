"""Deletion at the kiosk ("delete my face data"): identified by face among the shoppers the
phone's last four digits or whole number name (whichever the risk rule asks at this gallery's
size), done at once, with a receipt."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import Response

from server.extensions import services
from server.guesses.notices import tell_locked_shoppers
from server.idempotency.http import respond_once
from server.kiosks.auth import SECURITY, current_kiosk, kiosk_required
from server.payments.schemas import IdempotencyHeaders
from server.privacy import kiosk as kiosk_deletion
from server.privacy import service
from server.privacy.schemas import DeletionOut, KioskDeletionIn

bp = APIBlueprint("privacy", __name__, url_prefix="/v1", tag="Privacy")


@bp.post("/deletions")
@kiosk_required
@bp.input(IdempotencyHeaders, location="headers", arg_name="headers")
@bp.input(KioskDeletionIn, arg_name="body")
@bp.output(DeletionOut)
@bp.doc(
    summary="Delete my face data: the face and the phone number (its last four digits, or all "
    "of it where the gallery is too large for four) must agree",
    security=SECURITY,
)
def delete_at_kiosk(headers: dict[str, Any], body: dict[str, Any]) -> Response:
    svc = services()
    kiosk = current_kiosk()
    after = kiosk_deletion.KioskDeletion()
    response = respond_once(
        headers,
        body,
        lambda session: kiosk_deletion.delete_at_kiosk(
            session, kiosk=kiosk, body=body, svc=svc, after=after
        ),
    )
    # Committed: now the keys go, with the index entries, and locked shoppers are told.
    service.finish_deletions(svc, after.deleted)
    tell_locked_shoppers(svc, after.locked_now)
    return response
