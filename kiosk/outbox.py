"""The kiosk's outbox: one SQLite file in the kiosk's home holding, for each request that
must happen exactly once, its idempotency key and exact body, committed before the first
attempt, then its final answer (the server's JSON, as it came). kiosk.client says when an
entry is pending, answered or abandoned, and how pending entries are resolved.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kiosk.errors import KioskError

PENDING: Final = "pending"
ANSWERED: Final = "answered"
ABANDONED: Final = "abandoned"

# Requests resent with their key until answered: one at a time, each resolved before the next.
PAYMENT_KINDS: Final = ("payment", "step_up", "capture", "void")
DELETION: Final = "deletion"
RESENT_KINDS: Final = (*PAYMENT_KINDS, DELETION)


class OutboxPending(KioskError):
    """A payment's (or deletion's) answer is not known yet: `resolve_pending()` first."""

    code = "outbox_pending"


@dataclass(frozen=True)
class OutboxEntry:
    key: str
    kind: str
    method: str
    path: str
    state: str
    attempts: int
    created_at: str
    answered_at: str | None
    response_status: int | None
    replayed: bool
    body: bytes | None = field(repr=False)  # the exact request; erased once answered
    response: bytes | None = field(repr=False)  # the final answer (JSON), kept for the record


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    idempotency_key TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    method          TEXT NOT NULL,
    path            TEXT NOT NULL,
    body            BLOB,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'answered', 'abandoned')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    answered_at     TEXT,
    response_status INTEGER,
    response        BLOB,
    replayed        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, created_at);
"""
_COLUMNS = (
    "idempotency_key, kind, method, path, state, attempts, created_at, answered_at, "
    "response_status, replayed, body, response"
)


class Outbox:
    """The kiosk's record of requests it must see answered, in one SQLite file (0600).

    Every write is its own committed transaction (WAL, ``synchronous=FULL``: durable when the
    call returns); erased bodies are overwritten on disk (``secure_delete``). Connections are
    short-lived, so two clients on one file (a restarted kiosk) see each other's entries.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r})"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        connection = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA secure_delete=ON")
            connection.executescript(_SCHEMA)
            yield connection
        finally:
            connection.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def add(self, *, key: str, kind: str, method: str, path: str, body: bytes, now: str) -> None:
        """Record a request before its first attempt. A payment or deletion request is refused
        with `OutboxPending` while another one is pending (checked in the same
        transaction, so two callers cannot both pass)."""
        with self._transaction() as connection:
            if kind in RESENT_KINDS:
                marks = ",".join("?" for _ in RESENT_KINDS)
                waiting = connection.execute(
                    f"SELECT count(*) FROM outbox WHERE state = ? AND kind IN ({marks})",
                    (PENDING, *RESENT_KINDS),
                ).fetchone()[0]
                if waiting:
                    raise OutboxPending(
                        f"{waiting} earlier request(s) still wait for the server's answer: "
                        "resolve them before a new payment"
                    )
            connection.execute(
                "INSERT INTO outbox (idempotency_key, kind, method, path, body, state, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, kind, method, path, body, PENDING, now),
            )

    def count_attempt(self, key: str) -> None:
        """Committed before each attempt: ``attempts > 0`` means it may have been sent."""
        with self._transaction() as connection:
            connection.execute(
                "UPDATE outbox SET attempts = attempts + 1 WHERE idempotency_key = ?", (key,)
            )

    def answer(self, key: str, *, status: int, response: bytes, replayed: bool, now: str) -> None:
        """Record the final answer and erase the request body."""
        with self._transaction() as connection:
            connection.execute(
                "UPDATE outbox SET state = ?, body = NULL, response_status = ?, response = ?, "
                "replayed = ?, answered_at = ? WHERE idempotency_key = ? AND state = ?",
                (ANSWERED, status, response, int(replayed), now, key, PENDING),
            )

    def abandon(self, key: str, *, now: str) -> None:
        """An entry that will not be resent (an enrollment, or one too old to resend safely):
        its body is erased."""
        with self._transaction() as connection:
            connection.execute(
                "UPDATE outbox SET state = ?, body = NULL, answered_at = ? "
                "WHERE idempotency_key = ? AND state = ?",
                (ABANDONED, now, key, PENDING),
            )

    def get(self, key: str) -> OutboxEntry | None:
        with self._connect() as connection:
            row = connection.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE idempotency_key = ?", (key,)
            ).fetchone()
        return _entry(row) if row is not None else None

    def entries(self, state: str | None = None) -> list[OutboxEntry]:
        """The entries (in `state`, if given), oldest first."""
        where, parameters = ("WHERE state = ?", (state,)) if state is not None else ("", ())
        with self._connect() as connection:
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM outbox {where} ORDER BY created_at, rowid", parameters
            ).fetchall()
        return [_entry(row) for row in rows]

    def pending(self) -> list[OutboxEntry]:
        """Pending entries, oldest first."""
        return self.entries(PENDING)

    def has_pending(self) -> bool:
        """True while a payment or deletion request waits for its answer (an enrollment
        left pending does not count: it is abandoned, not resent)."""
        return any(entry.kind in RESENT_KINDS for entry in self.pending())


def _entry(row: Sequence[Any]) -> OutboxEntry:
    key, kind, method, path, state, attempts, created, answered, status, replayed, body, resp = row
    return OutboxEntry(
        key=key,
        kind=kind,
        method=method,
        path=path,
        state=state,
        attempts=int(attempts),
        created_at=created,
        answered_at=answered,
        response_status=status,
        replayed=bool(replayed),
        body=bytes(body) if body is not None else None,
        response=bytes(resp) if resp is not None else None,
    )


__all__ = [
    "ABANDONED",
    "ANSWERED",
    "DELETION",
    "PAYMENT_KINDS",
    "PENDING",
    "RESENT_KINDS",
    "Outbox",
    "OutboxEntry",
    "OutboxPending",
]
