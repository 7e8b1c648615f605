"""SQLite writers take turns through a lock file beside the database (server.db): a second
writer starts after the first one's commit, never inside it, and a thread that already holds
the turn is not made to wait for itself."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from server.db import _WriterTurn, make_engine


def _engine(path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS events (what TEXT)"))
    return engine


def test_a_second_writer_waits_for_the_first_commit(tmp_path: Path) -> None:
    database = tmp_path / "turns.db"
    first, second = _engine(database), _engine(database)  # as two gunicorn workers would
    order: list[str] = []
    second_asked = threading.Event()

    def second_writer() -> None:
        second_asked.set()
        with second.begin() as connection:
            order.append("second began")
            connection.execute(text("INSERT INTO events VALUES ('second')"))

    with first.begin() as connection:
        connection.execute(text("INSERT INTO events VALUES ('first')"))
        waiter = threading.Thread(target=second_writer)
        waiter.start()
        second_asked.wait(5)
        waiter.join(0.05)  # the second writer is waiting for its turn, not writing
        order.append("first committing")
    waiter.join(10)

    assert not waiter.is_alive()
    assert order == ["first committing", "second began"]
    assert (database.parent / "turns.db.writer-lock").exists()
    with first.connect() as connection:
        written = connection.execute(text("SELECT what FROM events")).scalars().all()
    assert written == ["first", "second"]


def test_a_thread_holding_the_turn_is_not_made_to_wait_for_itself(tmp_path: Path) -> None:
    turn = _WriterTurn(str(tmp_path / "nested.db"))
    outer = turn.take()
    inner = turn.take()  # a second session inside the first transaction: no wait, no lock
    assert outer is not None and inner is None
    others: list[int | None] = []
    other = threading.Thread(target=lambda: others.append(turn.take()))
    other.start()
    other.join(0.05)
    assert other.is_alive()  # another thread waits while this one holds the turn
    turn.give_back(inner)
    other.join(0.05)
    assert other.is_alive()  # still held: the outer transaction has not ended
    turn.give_back(outer)
    other.join(10)
    assert not other.is_alive() and others[0] is not None
    turn.give_back(others[0])


def test_a_writer_that_waited_the_busy_timeout_gives_up(tmp_path: Path) -> None:
    turn = _WriterTurn(str(tmp_path / "stuck.db"), timeout_s=0.05)
    holder_has_it, let_go = threading.Event(), threading.Event()

    def frozen_holder() -> None:  # a process stopped inside its transaction
        fd = turn.take()
        holder_has_it.set()
        let_go.wait(10)
        turn.give_back(fd)

    holder = threading.Thread(target=frozen_holder)
    holder.start()
    holder_has_it.wait(5)
    with pytest.raises(TimeoutError):
        turn.take()
    let_go.set()
    holder.join(10)
    turn.give_back(turn.take())  # free again once the holder lets go
