"""Service shape: configuration, production refusals, key files, CLI, OpenAPI in step with code."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from server.config import ConfigError, load_settings


def test_settings_from_environment() -> None:
    settings = load_settings(
        environ={"FACEPAY_ENV": "production", "FACEPAY_RISK_STRANGER": "0.001"}
    )
    assert settings.is_production and settings.risk_stranger == 0.001 and settings.liveness_required
    with pytest.raises(ConfigError):
        load_settings(environ={"FACEPAY_RISK_STRANGER": "lots"})
    with pytest.raises(ConfigError):
        load_settings(environ={"FACEPAY_RISK_TARGETED": "2"})  # a share, at most 1
    with pytest.raises(ConfigError):
        load_settings(environ={"FACEPAY_STEP_UP_FAILURES_PER_DAY": "0"})
    with pytest.raises(ConfigError):
        load_settings(environ={"FACEPAY_ENV": "staging"})


def test_production_refuses_without_keys(tmp_path: Path) -> None:
    from server import create_app

    with pytest.raises(ConfigError, match="FACEPAY_SECRET_KEY"):
        create_app({"mode": "production", "instance": str(tmp_path)})
    with pytest.raises(ConfigError, match="FACEPAY_MASTER_KEY_FILE"):
        create_app({"mode": "production", "instance": str(tmp_path), "secret_key": "s" * 40})
    assert not (tmp_path / "keys").exists(), "production mode must never create keys"


def test_development_creates_private_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from server import create_app

    app = create_app({"instance": str(tmp_path)})
    app.extensions["facepay"].engine.dispose()
    assert "DEVELOPMENT MODE" in caplog.text
    for name in ("master.key", "audit.key", "phone.key", "sealing.key", "secret_key"):
        mode = stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))


def test_kiosk_add_prints_code_alone_on_last_line(
    app_config: dict[str, Any], app: Any, monkeypatch: Any
) -> None:
    from server.cli import server_group

    monkeypatch.setenv("FACEPAY_INSTANCE", app_config["instance"])
    monkeypatch.setenv("FACEPAY_DATABASE_URL", app_config["database_url"])
    result = CliRunner().invoke(server_group, ["kiosk", "add", "till-9", "--store", "Laval 02"])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert len(last) == 14 and last.count("-") == 2
    listed = CliRunner().invoke(server_group, ["kiosk", "list", "--json"])
    assert json.loads(listed.output)[0]["status"] == "pending"


def test_openapi_document_matches_the_code() -> None:
    from server.openapi import COMMITTED, render

    generated = render()
    assert COMMITTED.read_text(encoding="utf-8") == generated, (
        "server/openapi.yaml is out of date: "
        "run `facepay server openapi --output server/openapi.yaml`"
    )
    spec = json.loads(json.dumps(__import__("yaml").safe_load(generated)))
    assert "/v1/enrollments" in spec["paths"] and "/v1/policy" in spec["paths"]
    assert not any("identify" in path or "search" in path for path in spec["paths"]), (
        "no find-this-face API"
    )


def test_migrations_match_the_models(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    from server import migrate
    from server.models_registry import metadata

    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    engine.dispose()
    assert differences == []


def test_rotate_master_key_rewraps_without_touching_templates(
    app: Any,
    app_config: dict[str, Any],
    client: Any,
    kiosk: Any,
    face_vectors: Any,
    monkeypatch: Any,
) -> None:
    from sqlalchemy import select

    from server import create_app
    from server.cli import server_group
    from server.enrollment.models import Template
    from server.extensions import services
    from tests.support.kiosk import enrollment_payload

    policy = client.get("/v1/policy").get_json()
    body, headers = kiosk.signed(
        "POST", "/v1/enrollments", enrollment_payload(kiosk, policy, face_vectors["p03"][:3])
    )
    shopper_id = client.post("/v1/enrollments", data=body, headers=headers).get_json()["shopper_id"]
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        before = sorted(bytes(t.ciphertext) for t in session.scalars(select(Template)))
    old_master = svc.keys.master.key_id

    monkeypatch.setenv("FACEPAY_INSTANCE", app_config["instance"])
    monkeypatch.setenv("FACEPAY_DATABASE_URL", app_config["database_url"])
    result = CliRunner().invoke(server_group, ["rotate-master-key", "--json"])
    assert result.exit_code == 0, result.output
    rotated = json.loads(result.output)
    assert rotated["rewrapped"] == 1 and rotated["old_key_id"] == old_master

    restarted = create_app(app_config)
    try:
        with restarted.app_context():
            new = services()
            assert new.keys.master.key_id == rotated["new_key_id"] != old_master
            with new.sessions() as session:
                assert (
                    sorted(bytes(t.ciphertext) for t in session.scalars(select(Template))) == before
                )
                new.gallery.load(session)
            assert new.gallery.sizes()["dlib-resnet-v1@1"] == 1
            assert new.keys.key_store.get(shopper_id).master_key_id == rotated["new_key_id"]
    finally:
        restarted.extensions["facepay"].stop()


def test_operator_publishes_a_new_notice(
    app_config: dict[str, Any], app: Any, client: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    from server.cli import server_group

    monkeypatch.setenv("FACEPAY_INSTANCE", app_config["instance"])
    monkeypatch.setenv("FACEPAY_DATABASE_URL", app_config["database_url"])
    (tmp_path / "en.txt").write_text("Store notice, version two.", encoding="utf-8")
    (tmp_path / "fr.txt").write_text("Avis du magasin, version deux.", encoding="utf-8")
    result = CliRunner().invoke(
        server_group,
        [
            "policy",
            "publish",
            "--text",
            f"en={tmp_path / 'en.txt'}",
            "--text",
            f"fr={tmp_path / 'fr.txt'}",
            "--retention-days",
            "180",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    policy = client.get("/v1/policy").get_json()
    assert policy["version"] == 2 and policy["retention_days"] == 180
    assert policy["texts"]["fr"]["text"] == "Avis du magasin, version deux."
    bad = CliRunner().invoke(server_group, ["policy", "publish", "--text", "en"])
    assert bad.exit_code != 0
