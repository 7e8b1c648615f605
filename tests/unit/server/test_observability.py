"""Readiness, metrics, request ids and JSON logs, on SQLite and PostgreSQL: counts only, never
a score."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from server.config import ConfigError
from server.observability import JsonFormatter, configure_logging
from tests.support.kiosk import SigningKiosk
from tests.support.payments import SyntheticFace, new_key, payment_payload
from tests.unit.server.test_payments import enroll, pay, signed

SCORE_LIKE = re.compile(r"score|similarit|distance|cosine", re.IGNORECASE)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Everything the server's loggers write during the test, through the JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    server_logger = logging.getLogger("server")
    previous = server_logger.level
    server_logger.addHandler(handler)
    server_logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        server_logger.removeHandler(handler)
        server_logger.setLevel(previous)


def samples(client: FlaskClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.get_data(as_text=True)
    assert not SCORE_LIKE.search(text)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    return sum(value for (key, have), value in found.items() if key == name and wanted <= have)


def test_metrics_count_a_payment_its_decision_and_the_gallery(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    enroll(client, kiosk, SyntheticFace(rng), name="Other Shopper", phone="+1 514 555 0100")
    face = SyntheticFace(rng)
    enroll(client, kiosk, face)
    response = pay(client, kiosk, face, 1_250)
    assert response.status_code == 201, response.get_json()
    payment_id = response.get_json()["payment_id"]

    found = samples(client)
    assert total(found, "facepay_decisions_total", outcome="match", reason="matched") == 1
    assert total(found, "facepay_decisions_total") == 1
    assert total(found, "facepay_match_seconds_count", purpose="payments.create_payment") == 1
    sizes = app.extensions["facepay"].gallery.sizes()
    assert sum(sizes.values()) == 2
    for pack, size in sizes.items():
        assert total(found, "facepay_gallery_shoppers", pack=pack) == size
    assert (
        total(
            found, "facepay_http_requests_total", method="POST", route="/v1/payments", status="201"
        )
        == 1
    )
    assert not any(payment_id in dict(labels).get("route", "") for _, labels in found)


def test_a_replayed_idempotent_request_is_counted(
    client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator
) -> None:
    face = SyntheticFace(rng)
    enroll(client, kiosk, face)
    payload, key = payment_payload(kiosk, face.sample(), 1_250), new_key()
    first = signed(client, kiosk, "POST", "/v1/payments", payload, key=key)
    assert first.status_code == 201
    assert total(samples(client), "facepay_idempotent_replays_total") == 0
    again = signed(client, kiosk, "POST", "/v1/payments", payload, key=key)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.get_json() == first.get_json()
    found = samples(client)
    assert total(found, "facepay_idempotent_replays_total") == 1
    assert total(found, "facepay_decisions_total") == 1  # the replay did not search again


def test_readyz_needs_the_database_schema_and_the_loaded_gallery(
    app_config: dict[str, Any],
) -> None:
    from server import create_app
    from server.cli import initialise
    from server.extensions import services

    application = create_app(app_config)
    client = application.test_client()

    def not_ready(detail: str) -> None:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["code"] == "not_ready"
        assert response.get_json()["detail"] == detail

    try:
        not_ready("the database does not answer")  # no schema yet
        with application.app_context():
            initialise(services())
        not_ready("the gallery is still loading")
        with application.app_context():
            services().start()
        response = client.get("/readyz")
        assert response.status_code == 200
        assert response.get_json()["status"] == "ready"
        assert client.get("/healthz").status_code == 200
    finally:
        application.extensions["facepay"].stop()


def test_each_app_has_its_own_metrics(app: Any, app_config: dict[str, Any]) -> None:
    from server import create_app

    other = create_app(app_config)
    try:
        app.test_client().get("/healthz")
        assert (
            total(samples(app.test_client()), "facepay_http_requests_total", route="/healthz") == 1
        )
        assert (
            total(samples(other.test_client()), "facepay_http_requests_total", route="/healthz")
            == 0
        )
    finally:
        other.extensions["facepay"].stop()


def test_the_request_id_is_taken_when_sane_and_made_otherwise(client: FlaskClient) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-Id": "till-1.req-42"}).headers["X-Request-Id"]
        == "till-1.req-42"
    )
    for insane in ("", "has space", "x" * 65, "<script>"):
        made = client.get("/healthz", headers={"X-Request-Id": insane}).headers["X-Request-Id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made)
    first, second = (client.get("/nowhere").headers["X-Request-Id"] for _ in range(2))
    assert first != second


def test_json_logs_carry_the_request_id(app: Any, log_lines: io.StringIO) -> None:
    with app.test_request_context("/healthz", headers={"X-Request-Id": "req-7"}):
        app.preprocess_request()
        logging.getLogger("server.test").info("counted %d things", 3)
        try:
            raise ValueError("a message that could quote request data")
        except ValueError:
            logging.getLogger("server.test").exception("failed")
    logging.getLogger("server.test").warning("outside a request")
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    assert lines[0]["message"] == "counted 3 things"
    assert lines[0]["request_id"] == "req-7"
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "server.test"
    assert {"time", "level", "logger", "message"} <= lines[0].keys()
    assert lines[1]["exc_type"] == "ValueError"
    assert "quote request data" not in log_lines.getvalue()
    assert "request_id" not in lines[2]


def test_logs_of_a_payment_are_json_lines_without_scores(
    client: FlaskClient, kiosk: SigningKiosk, rng: np.random.Generator, log_lines: io.StringIO
) -> None:
    face = SyntheticFace(rng)
    enroll(client, kiosk, face)
    assert pay(client, kiosk, face, 1_250).status_code == 201
    for line in log_lines.getvalue().splitlines():
        document = json.loads(line)
        assert not SCORE_LIKE.search(line), document


def test_the_log_format_is_checked(app_config: dict[str, Any]) -> None:
    from server import create_app

    with pytest.raises(ConfigError, match="FACEPAY_LOG_FORMAT"):
        create_app({**app_config, "log_format": "xml"})
    with pytest.raises(ConfigError, match="FACEPAY_LOG_FORMAT"):
        configure_logging("xml")
