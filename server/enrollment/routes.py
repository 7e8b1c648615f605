from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint

from server.enrollment import service
from server.enrollment.schemas import EnrollmentIn, EnrollmentOut
from server.extensions import services
from server.kiosks.auth import SECURITY, current_kiosk, kiosk_required
from server.shoppers.notices import mail_shopper

bp = APIBlueprint("enrollment", __name__, url_prefix="/v1", tag="Enrollment")

_DUPLICATE_SUBJECT = "A new facepay enrollment looked like your face"
_DUPLICATE_BODY = (
    "Someone enrolled at a facepay kiosk (store {store}) today with a face our system found "
    "very close to yours. Nothing about your account was shown to them, and your account is "
    "unchanged.\n\n"
    "If it was you, you now have two accounts: you can delete one at the privacy page.\n"
    "If it was not you, no action is needed; write to us if you want us to look into it.\n"
)


@bp.post("/enrollments")
@kiosk_required
@bp.input(EnrollmentIn, arg_name="body")
@bp.output(EnrollmentOut, status_code=201)
@bp.doc(
    summary="Enroll a shopper with consent: 3 to 5 sealed templates of one pack", security=SECURITY
)
def enroll(body: dict[str, Any]) -> dict[str, Any]:
    svc = services()
    kiosk = current_kiosk()
    with svc.sessions() as session:
        enrolled = service.enroll(
            session,
            body=body,
            kiosk=kiosk,
            keys=svc.keys,
            gallery=svc.gallery,
            liveness_required=svc.settings.liveness_required,
        )
        session.commit()
        svc.gallery.apply_local(session, "add_shopper", enrolled.shopper_id, enrolled.pack)
    if enrolled.face_duplicate_of is not None:  # after the session: SQLite has one writer
        _tell_existing_account(enrolled.face_duplicate_of, kiosk.store)
    return {
        "enrollment_id": enrolled.enrollment_id,
        "shopper_id": enrolled.shopper_id,
        "masked_label": enrolled.masked_label,
        "pack": enrolled.pack,
        "wallet_balance": enrolled.wallet_balance,
        "currency": enrolled.currency,
    }


def _tell_existing_account(shopper_id: str, store: str) -> None:
    """Mail the account a new enrollment's face matched (committed already; the audit
    record stays whether or not the mail goes)."""
    mail_shopper(services(), shopper_id, _DUPLICATE_SUBJECT, _DUPLICATE_BODY.format(store=store))
