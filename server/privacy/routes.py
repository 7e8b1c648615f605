"""Deletion at the kiosk ("delete my face data"): identified by face, confirmed by the phone's
last four digits, done at once, with a receipt."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import Response

from server.audit.service import record_event
from server.enrollment.service import open_templates
from server.extensions import services
from server.idempotency.http import respond_once
from server.kiosks.auth import SECURITY, current_kiosk, kiosk_required
from server.payments.schemas import IdempotencyHeaders
from server.privacy import service
from server.privacy.schemas import DeletionOut, KioskDeletionIn
from server.shoppers import service as shoppers

bp = APIBlueprint("privacy", __name__, url_prefix="/v1", tag="Privacy")


@bp.post("/deletions")
@kiosk_required
@bp.input(IdempotencyHeaders, location="headers", arg_name="headers")
@bp.input(KioskDeletionIn, arg_name="body")
@bp.output(DeletionOut)
@bp.doc(
    summary="Delete my face data: the face and the phone's last four digits must agree",
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
        candidates = shoppers.with_phone_ending(session, svc.keys, body["phone_last4"])
        decision = svc.gallery.identify(pack, vectors[0], restrict_to=candidates)
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
