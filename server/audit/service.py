"""Appending to and verifying the audit chain in the database: the one way events are recorded."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from server.audit.chain import (
    FIRST_SEQ,
    GENESIS_HASH,
    VerifyResult,
    canonical_bytes,
    link_record,
    verify_chain,
)
from server.audit.models import AuditRecord
from server.db import utcnow

logger = logging.getLogger(__name__)

# An arbitrary constant: the PostgreSQL advisory lock that serializes appends to the chain.
_AUDIT_LOCK = 0x6661636570  # "facep"
# Built once: every match attempt and payment appends a record.
_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_HEAD = select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)
_APPEND = AuditRecord.__table__.insert()  # type: ignore[attr-defined]


def record_event(
    session: Session,
    audit_key: bytes,
    kind: str,
    *,
    subject: str | None = None,
    actor: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> int:
    """Append one event to the chain, inside the caller's transaction; returns its number.

    Appends are serialized (an advisory lock on PostgreSQL; SQLite transactions already start
    with a write lock), so the chain never forks.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_ADVISORY_LOCK, {"key": _AUDIT_LOCK})
    head = session.execute(_HEAD).first()
    seq, previous = (head[0] + 1, bytes(head[1])) if head else (FIRST_SEQ, GENESIS_HASH)
    at = utcnow()
    record: dict[str, Any] = {
        "seq": seq,
        "at": at.isoformat(),
        "kind": kind,
        "subject": subject,
        "actor": actor,
        "data": dict(data or {}),
    }
    digest = link_record(audit_key, previous, seq, record)
    # A plain insert, not an ORM object: nothing reads the row back in this transaction, and
    # every match attempt and payment writes one.
    session.connection().execute(
        _APPEND,
        {
            "seq": seq,
            "at": at,
            "kind": kind,
            "subject": subject,
            "record": canonical_bytes(record).decode("utf-8"),
            "hash": digest,
        },
    )
    return seq


def _rows(session: Session) -> Iterator[tuple[int, bytes, bytes]]:
    result = session.execute(
        select(AuditRecord.seq, AuditRecord.record, AuditRecord.hash).order_by(AuditRecord.seq)
    )
    for seq, record, digest in result:
        yield seq, record.encode("utf-8"), bytes(digest)


def verify(session: Session, audit_key: bytes) -> VerifyResult:
    """Check the whole chain; the result names the first record edited, deleted, inserted or
    reordered."""
    return verify_chain(audit_key, _rows(session))


def events_about(session: Session, subject: str) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(AuditRecord).where(AuditRecord.subject == subject).order_by(AuditRecord.seq)
    )
    return [json.loads(row.record) for row in rows]
