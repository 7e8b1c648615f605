"""The database: typed SQLAlchemy 2.0 models share one Base; one engine and sessions per app."""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, cast

from sqlalchemy import CursorResult, DateTime, Delete, Engine, MetaData, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

logger = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC timestamps on every database (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use timezone-aware UTC timestamps")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UTCDateTime}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


SQLITE_BUSY_TIMEOUT_S = 30.0
_WRITER_POLL_S = 0.0005


class _WriterTurn:
    """Whose turn it is to write to one SQLite database, across processes and threads.

    SQLite lets one writer in at a time and makes the others wait in its busy handler, which
    sleeps 1, 2, 5, 10, ... up to 100 ms between tries: with two gunicorn workers the waiter
    wakes long after the lock is free, so a second worker added latency, not throughput.
    Writers here first take an exclusive `flock` on a file beside the database, trying every
    half millisecond, and so start within a fraction of a millisecond of the previous commit.
    A thread that already holds the turn (a second session opened inside a transaction) does
    not wait for itself: it goes straight to SQLite, as before. A writer that has waited the
    busy timeout gives up as SQLite would have ("database is locked").
    """

    def __init__(self, database: str, timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> None:
        self.path = f"{database}.writer-lock"
        self.timeout_s = timeout_s
        self._held = threading.local()

    def take(self) -> int | None:
        """The lock file's descriptor once this thread has the turn; None if it need not."""
        if getattr(self._held, "depth", 0):
            self._held.depth += 1
            return None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise TimeoutError("the database is locked") from None
                time.sleep(_WRITER_POLL_S)
        self._held.depth = 1
        return fd

    def give_back(self, fd: int | None) -> None:
        self._held.depth = max(0, getattr(self._held, "depth", 0) - 1)
        if fd is not None:
            os.close(fd)  # closing the descriptor releases its flock


class _TurnTakingConnection(sqlite3.Connection):
    """A pysqlite connection that gives back the writer's turn when its transaction ends."""

    turn: _WriterTurn | None = None
    _turn_fd: int | None = None
    _in_turn = False

    def take_turn(self) -> None:
        if self.turn is not None and not self._in_turn:
            self._turn_fd = self.turn.take()
            self._in_turn = True

    def give_back_turn(self) -> None:
        if self.turn is not None and self._in_turn:
            fd, self._turn_fd, self._in_turn = self._turn_fd, None, False
            self.turn.give_back(fd)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.give_back_turn()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.give_back_turn()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.give_back_turn()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "factory": _TurnTakingConnection},
        )
        database = engine.url.database
        turn = (
            _WriterTurn(os.path.abspath(database))
            if database and database != ":memory:" and not database.startswith("file:")
            else None
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            # We issue BEGIN ourselves (below), so the driver must not.
            connection.isolation_level = None
            connection.turn = turn
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Any) -> None:
            # Writers take the lock when their transaction starts, so that read-then-write
            # sequences (audit chain head, balances) are serialized across processes.
            dbapi_connection = connection.connection.dbapi_connection
            try:
                dbapi_connection.take_turn()
            except TimeoutError:
                raise OperationalError(
                    "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
                ) from None
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                dbapi_connection.give_back_turn()
                raise

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def deleted_rows(session: Session, statement: Delete) -> int:
    """Run a bulk DELETE in the session's transaction; how many rows it removed."""
    result = session.execute(statement)
    return int(cast("CursorResult[Any]", result).rowcount)
