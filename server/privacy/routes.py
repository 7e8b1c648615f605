"""Deletion at the kiosk ("delete my face data"): identified by face among the shoppers the
phone's last four digits or whole number name (whichever the risk rule asks at this gallery's
size), done at once, with a receipt."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import Response

from server.audit.service import record_event
from server.enrollment.service import open_templates
from server.errors import ProblemError
from server.extensions import services
from server.idempotency.http import respond_once
from server.kiosks.auth import SECURITY, current_kiosk, kiosk_required
from server.matching.risk import Rung
from server.payments.schemas import IdempotencyHeaders
from server.privacy import service
from server.privacy.schemas import DeletionOut, KioskDeletionIn
from server.shoppers import service as shoppers

bp = APIBlueprint("privacy", __name__, url_prefix="/v1", tag="Privacy")


class FullPhoneRequired(ProblemError):
    status_code = 422
    code = "full_phone_required"
    title = "The whole phone number is needed"


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
    deleted: list[str] = []

    def work(session: Any) -> tuple[int, dict[str, Any]]:
        pack, liveness, vectors = open_templates(
            [body["probe"]],
            kiosk_id=kiosk.id,
            purpose="delete",
            keys=svc.keys,
            gallery=svc.gallery,
            liveness_required=svc.settings.liveness_required,
        )
        sent = Rung.PHONE if "phone" in body else Rung.PHONE_LAST4
        rung = svc.gallery.rung(pack, minimum=sent)
        if rung.rung is not sent:
            raise FullPhoneRequired(
                "at this gallery's size the last four digits are not enough: "
                "send the whole phone number"
            )
        candidates = shoppers.narrowed(session, svc.keys, rung.rung, body)
        decision = svc.gallery.identify(pack, vectors[0], rung, restrict_to=candidates)
        answer: dict[str, Any] = {"status": "not_found"}
        if decision.outcome == "match" and decision.shopper_id is not None:
            receipt = service.delete_shopper(
                session, shopper_id=decision.shopper_id, keys=svc.keys, via="kiosk", actor=kiosk.id
            )
            deleted.append(decision.shopper_id)
            answer = {"status": "deleted", **receipt.as_dict()}
        record_event(
            session,
            svc.keys.audit_key,
            "match.attempt",
            subject=decision.shopper_id if deleted else None,
            actor=kiosk.id,
            data={
                "purpose": "delete",
                "pack": pack,
                "liveness": liveness,
                "outcome": decision.outcome,
                "reason": decision.reason,
            },
        )
        return 200, answer

    response = respond_once(headers, body, work)
    service.finish_deletions(svc, deleted)  # committed: now the key goes, and the index entry
    return response
