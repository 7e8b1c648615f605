"""Liveness (`/healthz`: the process serves) and readiness (`/readyz`: database and gallery)."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from server.errors import ProblemError
from server.extensions import services

bp = APIBlueprint("health", __name__, tag="Health")


@bp.get("/healthz")
@bp.doc(summary="The server is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@bp.get("/readyz")
@bp.doc(summary="The database answers and the gallery is loaded; gallery sizes per pack")
def readyz() -> dict[str, Any]:
    svc = services()
    try:
        with svc.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError:
        raise ProblemError(
            "the database does not answer", code="database_unavailable", status=503
        ) from None
    if not svc.gallery.loaded:
        raise ProblemError("the gallery is still loading", code="gallery_loading", status=503)
    return {"status": "ready", "gallery": svc.gallery.sizes()}
