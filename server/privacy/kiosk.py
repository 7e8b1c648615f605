"""Deletion at the kiosk: the face among the shoppers the phone digits name, by the same risk
rule and guess limits as a payment's step-up, then the deletion itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from server.audit.service import record_event
from server.db import utcnow
from server.enrollment.service import open_templates
from server.errors import ProblemError, error_document
from server.guesses import service as guesses
from server.kiosks.models import Kiosk
from server.matching.risk import Rung
from server.privacy import service
from server.shoppers import service as shoppers
from server.templates import b64decode


class FullPhoneRequired(ProblemError):
    status_code = 422
    code = "full_phone_required"
    title = "The whole phone number is needed"


class DeletionLocked(ProblemError):
    status_code = 423
    code = "step_up_locked"
    title = "Too many failed attempts today: deletion at a kiosk is locked for now"


def _locked() -> tuple[int, dict[str, Any]]:
    """The refusal as the request's answer (returned, not raised: what the attempt recorded,
    an audit record naming a found victim, is kept)."""
    refusal = DeletionLocked("try again tomorrow, or delete on the privacy web page")
    return refusal.status_code, error_document(refusal)


@dataclass
class KioskDeletion:
    """What the route does after the commit: keys to destroy, shoppers to tell of a lock."""

    deleted: list[str] = field(default_factory=list)
    locked_now: list[str] = field(default_factory=list)


def delete_at_kiosk(
    session: Session, *, kiosk: Kiosk, body: Mapping[str, Any], svc: Any, after: KioskDeletion
) -> tuple[int, dict[str, Any]]:
    now = utcnow()
    limits = svc.settings.guess_limits
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
    guarded = guesses.identify_within_limits(
        session,
        svc.keys,
        svc.gallery,
        kiosk=kiosk,
        pack=pack,
        probe=vectors[0],
        rung=rung,
        candidates=candidates,
        purpose="delete",
        limits=limits,
        now=now,
    )
    if guarded.found is not None:
        after.locked_now.append(guarded.found)
    if guarded.locked:
        return _locked()
    decision = guarded.decision
    matched = decision.shopper_id if decision.outcome == "match" else None
    answer: dict[str, Any] = {"status": "not_found"}
    if matched is not None:
        receipt = service.delete_shopper(
            session, shopper_id=matched, keys=svc.keys, via="kiosk", actor=kiosk.id
        )
        after.deleted.append(matched)
        answer = {"status": "deleted", **receipt.as_dict()}
    elif guesses.record_failure(
        session,
        svc.keys,
        kiosk=kiosk,
        shopper_id=decision.candidate,
        purpose="delete",
        limits=limits,
        now=now,
        probe=guesses.FailedProbe(
            pack, body["probe"]["liveness"], b64decode(body["probe"]["sealed"])
        ),
    ):
        after.locked_now.append(str(decision.candidate))
    record_event(
        session,
        svc.keys.audit_key,
        "match.attempt",
        subject=matched,
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
