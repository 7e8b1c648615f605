from __future__ import annotations

from dataclasses import asdict
from typing import Any

from apiflask import APIBlueprint

from server.enrollment import service
from server.enrollment.schemas import EnrollmentIn, EnrollmentOut
from server.extensions import services
from server.kiosks.auth import SECURITY, current_kiosk, kiosk_required

bp = APIBlueprint("enrollment", __name__, url_prefix="/v1", tag="Enrollment")


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
    return asdict(enrolled)
