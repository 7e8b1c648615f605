"""Server fixtures: an app per test on SQLite and on PostgreSQL, a paired kiosk, real faces."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from tests.support.kiosk import SigningKiosk, register_kiosk

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def postgres_admin_url() -> str | None:
    """FACEPAY_TEST_POSTGRES_URL when CI sets it (then PostgreSQL must work: tests fail, never
    skip); else the machine's default server if it answers."""
    configured = os.environ.get("FACEPAY_TEST_POSTGRES_URL")
    if configured:
        return configured
    try:
        engine = sa.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
    except sa.exc.OperationalError:
        return None
    return POSTGRES_ADMIN_URL


@pytest.fixture(scope="session")
def postgres_server() -> str | None:
    return postgres_admin_url()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server: str | None
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'facepay.db'}"
        return
    if postgres_server is None:
        pytest.skip(
            "no PostgreSQL server here (CI sets FACEPAY_TEST_POSTGRES_URL, and then it must work)"
        )
    name = f"facepay_test_{uuid.uuid4().hex[:12]}"
    # pool_pre_ping: the database is dropped on a fresh connection even if the server was
    # restarted meanwhile (tests/adversarial/test_faults.py restarts it).
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# The tests' galleries hold a handful of shoppers. With this stranger target (1e-2 a try, not
# the default 1e-4) the risk rule lets a face alone pay in them, so that tests of payments,
# limits and privacy need no step-up; the ladder's own tests set the default back
# (`DEFAULT_RISK`) or run without this fixture (test_matching_risk.py, test_step_up_ladder.py).
FACE_ALONE_IN_SMALL_GALLERIES = {"risk_stranger": 1e-2}
DEFAULT_RISK = {"risk_stranger": 1e-4}


@pytest.fixture
def app_config(tmp_path: Path, database_url: str) -> dict[str, Any]:
    return {
        "instance": str(tmp_path / "instance"),
        "database_url": database_url,
        "change_poll_s": 0.1,
        **FACE_ALONE_IN_SMALL_GALLERIES,
    }


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Any]:
    from server import create_app
    from server.cli import initialise
    from server.extensions import services

    application = create_app(app_config)
    application.config["TESTING"] = True
    with application.app_context():
        initialise(services())
        services().start()
    yield application
    application.extensions["facepay"].stop()


@pytest.fixture
def client(app: Any) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def kiosk(app: Any, client: FlaskClient) -> SigningKiosk:
    from server.db import transaction
    from server.kiosks import service

    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        created = service.add_kiosk(session, svc.keys.audit_key, name="till-1", store="Montreal 01")
    return register_kiosk(client, created.pairing_code)


@pytest.fixture
def cli(app_config: dict[str, Any], app: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`facepay server …` on the test's instance and database (click's CliRunner)."""
    from click.testing import CliRunner

    from server.cli import server_group

    monkeypatch.setenv("FACEPAY_INSTANCE", app_config["instance"])
    monkeypatch.setenv("FACEPAY_DATABASE_URL", app_config["database_url"])

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(server_group, list(args))

    return invoke
