"""Idempotency keys as Stripe defines them: a retry with the same key and the same parameters
gets the stored response (errors included), a retry while the first request still runs gets
409, and the same key with other parameters gets 422.

A request runs in two transactions. The first claims the key (a row in state ``running``,
with an owner token and a lease); the second does the work and records the response in the
same commit, so the work and its recorded answer land together or not at all. If the owner
dies between the two, nothing of its work is committed and, once the lease has passed, a retry
takes the key over and runs the work itself. The owner token makes a late original unable to
record a second result after a takeover: its commit is refused and rolled back.

Responses are stored only once the work started, as Stripe does: a request whose parameters
fail validation never reaches here, and an unexpected error releases the key so that a retry
runs again (nothing of the failed attempt was committed). So does a 5xx problem (`Unavailable`:
the database, the key store or the gallery down for the moment): it is no answer to the
request, and stored it would be replayed to every retry long after the outage.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from server.db import deleted_rows, transaction, utcnow
from server.errors import ProblemError, error_document
from server.idempotency.models import IdempotencyKey

logger = logging.getLogger(__name__)

RUNNING = "running"
DONE = "done"
MAX_KEY_LENGTH = 255

Work = Callable[[Session], tuple[int, dict[str, Any]]]

# Built once, with bound parameters: every idempotent request runs both.
_KEYS = cast(Table, IdempotencyKey.__table__)
_CLAIM = _KEYS.insert()
_COMPLETE = (
    _KEYS.update()
    .where(
        _KEYS.c.id == bindparam("record_id"),
        _KEYS.c.owner == bindparam("claim_owner"),
        _KEYS.c.state == RUNNING,
    )
    .values(
        state=DONE,
        response_status=bindparam("status"),
        response_body=bindparam("body"),
        completed_at=bindparam("at"),
    )
)


@dataclass(frozen=True)
class Staged:
    """Work in two parts: `prepare` needs no database and returns the `Work` that does."""

    prepare: Callable[[], Work]


class KeyInUse(ProblemError):
    status_code = 409
    code = "idempotency_key_in_use"
    title = "A request with this idempotency key is still running"


class KeyReused(ProblemError):
    status_code = 422
    code = "idempotency_key_reused"
    title = "This idempotency key was used with other parameters"


class KeyInvalid(ProblemError):
    status_code = 400
    code = "idempotency_key_invalid"
    title = "A valid Idempotency-Key header is required"


@dataclass(frozen=True)
class Outcome:
    status: int
    body: dict[str, Any]
    replayed: bool = False


@dataclass(frozen=True)
class Claim:
    record_id: int
    owner: str


def check_key(key: str | None) -> str:
    """A key a client may use: 1 to 255 printable ASCII characters (a UUID is typical)."""
    if not key:
        raise KeyInvalid("send an Idempotency-Key header made before the first attempt")
    if len(key) > MAX_KEY_LENGTH or not all(32 < ord(c) < 127 for c in key):
        raise KeyInvalid("an idempotency key is 1 to 255 printable ASCII characters, no spaces")
    return key


def fingerprint(method: str, path: str, parameters: Mapping[str, Any]) -> str:
    """What makes two requests "the same": method, path and the parsed parameters."""
    canonical = json.dumps(
        [method.upper(), path, parameters], sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def run(
    sessions: sessionmaker[Session],
    *,
    scope: str,
    key: str,
    fingerprint: str,
    lease_s: float,
    work: Work | Staged,
) -> Outcome:
    """Run `work` at most once for this key; returns its (status, body) or the stored one.

    A `Staged` work first runs its part that needs no database (opening and matching a probe)
    outside the transaction, then the `Work` it returns inside it: on SQLite a transaction
    holds the write lock from its first statement, so the lock is not held while matching."""
    claimed = claim(sessions, scope=scope, key=key, fingerprint=fingerprint, lease_s=lease_s)
    if isinstance(claimed, Outcome):
        return claimed
    try:
        with transaction(sessions) as session:
            # Whether the claim is still ours is checked when the answer is recorded, in the
            # same commit as the work, so a request taken over cannot record a second result.
            try:
                todo = work.prepare() if isinstance(work, Staged) else work
                with session.begin_nested():
                    status, body = todo(session)
            except ProblemError as error:  # an answer too: stored and replayed like any other
                if error.status_code >= 500:
                    raise  # not an answer: nothing kept, the key released for the retry
                status, body = error.status_code, error_document(error)
            _complete(session, claimed, status, body)
    except KeyInUse:
        raise
    except BaseException:
        release(sessions, claimed)
        raise
    return Outcome(status, body)


def claim(
    sessions: sessionmaker[Session],
    *,
    scope: str,
    key: str,
    fingerprint: str,
    lease_s: float,
) -> Claim | Outcome:
    """Claim the key, or return its stored response; raises `KeyInUse` or `KeyReused`."""
    owner = str(uuid.uuid4())
    with sessions() as session:
        now = utcnow()
        try:
            inserted = session.connection().execute(
                _CLAIM,
                {
                    "scope": scope,
                    "key": key,
                    "fingerprint": fingerprint,
                    "state": RUNNING,
                    "owner": owner,
                    "lease_until": now + dt.timedelta(seconds=lease_s),
                    "created_at": now,
                },
            )
            row_key = inserted.inserted_primary_key
            assert row_key is not None
            session.commit()
            return Claim(int(row_key[0]), owner)
        except IntegrityError:
            session.rollback()
        existing = session.scalars(
            select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
        ).one()
        if existing.fingerprint != fingerprint:
            raise KeyReused("make a new key for a new request")
        if existing.state == DONE:
            return _stored(existing)
        now = utcnow()
        if existing.lease_until > now:
            raise KeyInUse("retry later with the same key", headers={"Retry-After": "1"})
        taken = session.execute(
            update(IdempotencyKey)
            .where(
                IdempotencyKey.id == existing.id,
                IdempotencyKey.owner == existing.owner,
                IdempotencyKey.state == RUNNING,
            )
            .values(owner=owner, lease_until=now + dt.timedelta(seconds=lease_s))
        )
        session.commit()
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            logger.warning("idempotency: took over a key whose request did not finish")
            return Claim(existing.id, owner)
        session.expire_all()
        again = session.get(IdempotencyKey, existing.id)
        if again is not None and again.state == DONE:
            return _stored(again)
        raise KeyInUse("retry later with the same key", headers={"Retry-After": "1"})


def _complete(session: Session, claimed: Claim, status: int, body: dict[str, Any]) -> None:
    done = session.connection().execute(
        _COMPLETE,
        {
            "record_id": claimed.record_id,
            "claim_owner": claimed.owner,
            "status": status,
            "body": json.dumps(body, separators=(",", ":")),
            "at": utcnow(),
        },
    )
    if done.rowcount != 1:
        raise KeyInUse("another attempt with this key took over; retry with the same key")


def release(sessions: sessionmaker[Session], claimed: Claim) -> None:
    """Let a retry run at once after an unexpected error (nothing of this attempt committed)."""
    try:
        with transaction(sessions) as session:
            session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.id == claimed.record_id,
                    IdempotencyKey.owner == claimed.owner,
                    IdempotencyKey.state == RUNNING,
                )
            )
    except Exception as exc:  # the lease still frees the key later
        logger.warning("idempotency: could not release a key: %s", type(exc).__name__)


def _stored(record: IdempotencyKey) -> Outcome:
    body = json.loads(record.response_body or "{}")
    return Outcome(int(record.response_status or 500), body, replayed=True)


def prune(session: Session, *, keep_hours: int) -> int:
    """Forget keys older than `keep_hours` (at least 24 by the settings); returns how many."""
    cutoff = utcnow() - dt.timedelta(hours=keep_hours)
    return deleted_rows(session, delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))


def now_and_then(chance: int) -> bool:
    """True about once in `chance` calls: for housekeeping kept off most requests."""
    return secrets.randbelow(chance) == 0
