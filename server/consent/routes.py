from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint

from server.consent import service
from server.consent.schemas import PolicyOut
from server.extensions import services

bp = APIBlueprint("consent", __name__, url_prefix="/v1", tag="Consent")


@bp.get("/policy")
@bp.output(PolicyOut)
@bp.doc(summary="The current consent notice, in full, with its sha256 per locale (public)")
def policy() -> dict[str, Any]:
    with services().sessions() as session:
        return service.current(session).as_dict()
