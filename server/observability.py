"""Metrics, request ids and structured logs: counts and timings only, never biometric data.

Metrics (Prometheus text format at `GET /metrics`, one `CollectorRegistry` per application so
that many apps can live in one process, as they do in tests):

- ``facepay_match_seconds`` (histogram; labels ``pack``, ``purpose``: the endpoint that
  searched, ``none`` outside a request): time of one `Gallery.identify`.
- ``facepay_decisions_total`` (counter; labels ``outcome``, ``reason``): match decisions, by
  the `Decision`'s outcome and reason. Never a score.
- ``facepay_gallery_shoppers`` (gauge; label ``pack``): shoppers in this process's gallery,
  read from `Gallery.sizes()` at scrape time.
- ``facepay_idempotent_replays_total`` (counter): answers replayed for a reused idempotency key.
- ``facepay_http_requests_total`` (counter; labels ``method``, ``route``: the URL rule, not
  the path, so no payment id reaches a label; ``status``).

Under gunicorn every worker process has its own registry. With PROMETHEUS_MULTIPROC_DIR set
(the container sets it; server.gunicorn_conf empties it when gunicorn starts), prometheus_client
writes every worker's counters and histograms to files there and a scrape, whichever worker
answers it, sums them over all workers. The gallery gauge is always the answering worker's own
(every worker loads the same gallery). Without the variable, figures are per process.

Each request gets an id, from a sane incoming `X-Request-Id` header or freshly made, echoed in
the response's `X-Request-Id` header and added to log records by `JsonFormatter`.
`configure_logging("json")` (FACEPAY_LOG_FORMAT=json, used by `server.wsgi`) writes one JSON
object per line. Log lines never carry request bodies, templates, scores, signatures or keys:
the formatter writes the message and the name of an exception's type, nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
import uuid
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from flask import Flask, Response, g, has_request_context, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.config import ConfigError

if TYPE_CHECKING:
    from server.matching.decision import Decision
    from server.matching.service import Gallery

__all__ = [
    "LOG_FORMATS",
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "Metrics",
    "configure_logging",
    "current_request_id",
    "init_app",
    "observe_match",
]

REQUEST_ID_HEADER: Final = "X-Request-Id"
LOG_FORMATS: Final = ("text", "json")

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# Match latency: an exhaustive search of a large gallery may take a good part of a second.
_MATCH_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class _GallerySizes(Collector):
    """`facepay_gallery_shoppers`, read from the gallery at each scrape."""

    def __init__(self, gallery: Gallery) -> None:
        self._gallery = gallery

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "facepay_gallery_shoppers", "Shoppers in this process's gallery", labels=["pack"]
        )
        for pack, size in sorted(self._gallery.sizes().items()):
            family.add_metric([pack], size)
        yield family


class Metrics:
    """One application's metrics, in a registry of its own."""

    def __init__(self, gallery: Gallery) -> None:
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if folder:  # a command-line tool run with the server's environment needs it too
            os.makedirs(folder, mode=0o700, exist_ok=True)
        self.registry = CollectorRegistry(auto_describe=True)
        self.match_seconds = Histogram(
            "facepay_match_seconds",
            "Time of one gallery search and decision",
            ["pack", "purpose"],
            buckets=_MATCH_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "facepay_decisions",
            "Match decisions by outcome and reason",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.replays = Counter(
            "facepay_idempotent_replays",
            "Stored answers replayed for a reused idempotency key",
            registry=self.registry,
        )
        # Authorize-then-void probing: alert on a store's voids, and on refusals past its limit.
        self.voids = Counter(
            "facepay_authorizations_voided",
            "Authorizations voided, by store",
            ["store"],
            registry=self.registry,
        )
        self.manual_authorizations_refused = Counter(
            "facepay_manual_authorizations_refused",
            "Manual authorizations refused past the day's voids, by store",
            ["store"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "facepay_http_requests",
            "HTTP requests by method, URL rule and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._gallery_sizes = _GallerySizes(gallery)
        self.registry.register(self._gallery_sizes)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The metrics in the format the `Accept` header asks for, and its content type."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        return encoder(self._scraped()), content_type

    def _scraped(self) -> CollectorRegistry:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return self.registry
        from prometheus_client import multiprocess

        summed = CollectorRegistry()
        multiprocess.MultiProcessCollector(summed)  # type: ignore[no-untyped-call]
        summed.register(self._gallery_sizes)
        return summed


# The gallery does not know about Flask or metrics: `observe_match` finds its metrics here.
_BY_GALLERY: weakref.WeakKeyDictionary[Gallery, Metrics] = weakref.WeakKeyDictionary()


def observe_match(gallery: Gallery, pack: str, seconds: float, decision: Decision) -> None:
    """Count one decision and its search time (called by `Gallery.identify`)."""
    metrics = _BY_GALLERY.get(gallery)
    if metrics is None:
        return
    purpose = (request.endpoint or "none") if has_request_context() else "none"
    metrics.match_seconds.labels(pack=pack, purpose=purpose).observe(seconds)
    metrics.decisions.labels(outcome=decision.outcome, reason=decision.reason).inc()


def init_app(app: Flask, gallery: Gallery) -> Metrics:
    """Make this app's metrics and hook request ids and request counts into it."""
    metrics = Metrics(gallery)
    _BY_GALLERY[gallery] = metrics

    @app.before_request
    def _request_id() -> None:
        g.request_id = _incoming_request_id() or uuid.uuid4().hex

    @app.after_request
    def _count_and_echo(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.http_requests.labels(
            method=request.method, route=route, status=str(response.status_code)
        ).inc()
        response.headers[REQUEST_ID_HEADER] = current_request_id() or uuid.uuid4().hex
        return response

    return metrics


def _incoming_request_id() -> str | None:
    value = request.headers.get(REQUEST_ID_HEADER, "")
    return value if _SANE_REQUEST_ID.fullmatch(value) else None


def current_request_id() -> str | None:
    """This request's id; None outside a request."""
    if not has_request_context():
        return None
    found: str | None = g.get("request_id")
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and, in a request, request_id.

    An exception is reduced to its type's name: its message and traceback could quote request
    data (and request data can hold templates).
    """

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, str] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id is not None:
            document["request_id"] = request_id
        if record.exc_info and record.exc_info[0] is not None:
            document["exc_type"] = record.exc_info[0].__name__
        return json.dumps(document, ensure_ascii=False)


_HANDLER_NAME = "facepay"


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Log to stderr in `log_format` ("text" or "json") from the root logger; idempotent."""
    if log_format not in LOG_FORMATS:
        raise ConfigError("FACEPAY_LOG_FORMAT must be text or json")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
