"""The audit log in the database: every event through one function, tampering detected."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner
from sqlalchemy import select, update

from server.audit import service
from server.audit.models import AuditRecord
from server.db import transaction


def _fill(app: Any, count: int = 6) -> None:
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        for index in range(count):
            service.record_event(
                session, svc.keys.audit_key, "test.event", subject=f"s{index}", data={"n": index}
            )


def _verify(app: Any) -> Any:
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        return service.verify(session, svc.keys.audit_key)


def test_intact_chain_verifies(app: Any) -> None:
    _fill(app)
    result = _verify(app)
    assert result.ok, result.detail


def test_edited_record_is_caught(app: Any) -> None:
    _fill(app)
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        row = session.get(AuditRecord, 4)
        assert row is not None
        session.execute(
            update(AuditRecord)
            .where(AuditRecord.seq == 4)
            .values(record=row.record.replace('"n":3', '"n":9'))
        )
    result = _verify(app)
    assert not result.ok and result.first_bad_seq == 4 and result.problem.value == "edited"


def test_deleted_record_is_caught(app: Any) -> None:
    _fill(app)
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        session.delete(session.get(AuditRecord, 3))
    result = _verify(app)
    assert not result.ok and result.first_bad_seq == 3 and result.problem.value == "deleted"


def test_reordered_records_are_caught(app: Any) -> None:
    _fill(app)
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        a, b = session.get(AuditRecord, 2), session.get(AuditRecord, 3)
        assert a is not None and b is not None
        (ra, ha), (rb, hb) = (a.record, a.hash), (b.record, b.hash)
        a.record, a.hash = rb, hb
        b.record, b.hash = ra, ha
    result = _verify(app)
    assert not result.ok and result.first_bad_seq in (2, 3)


def test_cli_verify_exit_status(app: Any, app_config: dict[str, Any], monkeypatch: Any) -> None:
    from server.cli import server_group

    _fill(app)
    monkeypatch.setenv("FACEPAY_INSTANCE", app_config["instance"])
    monkeypatch.setenv("FACEPAY_DATABASE_URL", app_config["database_url"])
    good = CliRunner().invoke(server_group, ["audit", "verify", "--json"])
    assert good.exit_code == 0, good.output
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        session.execute(update(AuditRecord).where(AuditRecord.seq == 2).values(kind="edited"))
        row = session.scalars(select(AuditRecord).where(AuditRecord.seq == 5)).one()
        row.record = row.record.replace("s4", "s7")
    bad = CliRunner().invoke(server_group, ["audit", "verify"])
    assert bad.exit_code == 1 and "record 5" in bad.output
