"""Liveness (`/healthz`: the process serves), readiness (`/readyz`: database and gallery) and
metrics (`/metrics`: Prometheus text, counts and timings only; see server.observability)."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from apiflask.schemas import FileSchema
from flask import Response, request
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from server.errors import ProblemError
from server.extensions import services
from server.matching.models import GalleryChange

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
        # A query on one of our tables: the database answers and its schema is in place.
        with svc.engine.connect() as connection:
            connection.execute(select(GalleryChange.seq).limit(1)).all()
    except SQLAlchemyError:
        raise ProblemError(
            "the database does not answer", code="not_ready", status=503, title="Not ready"
        ) from None
    if not svc.gallery.loaded:
        raise ProblemError(
            svc.not_ready_reason or "the gallery is still loading",
            code="not_ready",
            status=503,
            title="Not ready",
            headers={"Retry-After": "5"},
        )
    return {"status": "ready", "gallery": svc.gallery.sizes()}


@bp.get("/metrics")
@bp.output(
    FileSchema(type="string", format="text"),
    content_type="text/plain",
    description="Prometheus text format: this process's counts and timings",
)
@bp.doc(summary="Metrics of this server process (Prometheus)")
def metrics() -> Response:
    body, content_type = services().metrics.render(request.headers.get("Accept", ""))
    return Response(body, headers={"Content-Type": content_type})
