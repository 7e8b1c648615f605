"""Operators of the console: creation, sign-in with lockout, disabling and unlocking.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile) and
re-hashed on sign-in when those defaults move. Every change and every sign-in attempt is
appended to the audit log; a password never is, nor any hash of it.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import logging
import re
import secrets
import uuid
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.audit.service import record_event
from server.db import utcnow
from server.errors import ProblemError
from server.operators.models import ROLES, Operator

logger = logging.getLogger(__name__)

MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 pre-hashes, but a megabyte of "password" is not one
_NAME = re.compile(r"[\w.@-]{1,100}")

_hasher = PasswordHasher()


class OperatorError(ProblemError):
    status_code = 422
    code = "operator_invalid"
    title = "The operator cannot be saved"


class OperatorNotFound(ProblemError):
    status_code = 404
    code = "operator_not_found"
    title = "No such operator"


@dataclass(frozen=True)
class LoginPolicy:
    tries: int
    lockout: dt.timedelta


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@functools.cache
def _dummy_hash() -> str:
    # Verified against when the name is unknown, so that an answer takes as long either way.
    return _hasher.hash("not a password: facepay timing equaliser")


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise OperatorError(
            f"the password needs at least {MIN_PASSWORD} characters", code="password_too_short"
        )
    if len(password) > MAX_PASSWORD:
        raise OperatorError("the password is too long", code="password_too_long")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise OperatorError(
            "a name is 1 to 100 letters, digits or . _ @ -", code="operator_name_invalid"
        )
    return name


def status_of(operator: Operator, now: dt.datetime | None = None) -> str:
    if operator.disabled_at is not None:
        return "disabled"
    if operator.locked_until is not None and operator.locked_until > (now or utcnow()):
        return "locked"
    return "active"


def by_name(session: Session, name: str, *, for_update: bool = False) -> Operator | None:
    query = select(Operator).where(Operator.name == name)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).first()


def get(session: Session, operator_id: str) -> Operator | None:
    return session.get(Operator, operator_id)


def list_operators(session: Session) -> list[Operator]:
    return list(session.scalars(select(Operator).order_by(Operator.name)))


def create(
    session: Session, audit_key: bytes, *, name: str, role: str, password: str, actor: str
) -> Operator:
    check_name(name)
    if role not in ROLES:
        raise OperatorError(f"the role must be one of {', '.join(ROLES)}", code="role_invalid")
    check_password(password)
    if by_name(session, name) is not None:
        raise OperatorError("an operator has this name already", code="operator_exists", status=409)
    operator = Operator(
        id=str(uuid.uuid4()), name=name, role=role, password_hash=hash_password(password)
    )
    session.add(operator)
    session.flush()
    record_event(
        session,
        audit_key,
        "operator.added",
        subject=operator.id,
        actor=actor,
        data={"name": name, "role": role},
    )
    return operator


def authenticate(
    session: Session, audit_key: bytes, *, name: str, password: str, policy: LoginPolicy
) -> Operator | None:
    """The operator if the name and password are right and the account is usable, else None.

    Every refusal looks the same to the caller (no telling an unknown name from a wrong password,
    a lockout or a disabled account); the audit log keeps the reason. `policy.tries` failures in
    a row lock the account for `policy.lockout`; each further failure after that locks it again
    until a sign-in succeeds or someone unlocks it.
    """
    now = utcnow()
    operator = by_name(session, name, for_update=True) if _NAME.fullmatch(name) else None
    if operator is None:
        _verify(_dummy_hash(), password)
        _failed(session, audit_key, None, "unknown_operator")
        return None
    # Verified whatever the account's state, so that the time taken does not tell it either.
    correct = _verify(operator.password_hash, password)
    if operator.disabled_at is not None:
        _failed(session, audit_key, operator, "disabled")
        return None
    if operator.locked_until is not None and operator.locked_until > now:
        _failed(session, audit_key, operator, "locked")
        return None
    if not correct:
        operator.failed_logins += 1
        _failed(session, audit_key, operator, "wrong_password")
        if operator.failed_logins >= policy.tries:
            operator.locked_until = now + policy.lockout
            record_event(
                session,
                audit_key,
                "operator.locked",
                subject=operator.id,
                actor="console",
                data={
                    "failures": operator.failed_logins,
                    "until": operator.locked_until.isoformat(),
                },
            )
            logger.warning("operator %s locked out after repeated failures", operator.id)
        return None
    operator.failed_logins = 0
    operator.locked_until = None
    operator.last_login_at = now
    if _hasher.check_needs_rehash(operator.password_hash):
        operator.password_hash = hash_password(password)
    record_event(
        session, audit_key, "operator.login", subject=operator.id, actor=operator.name, data={}
    )
    return operator


def _failed(session: Session, audit_key: bytes, operator: Operator | None, reason: str) -> None:
    # An unknown name is not recorded: people type their password into the name field.
    record_event(
        session,
        audit_key,
        "operator.login_failed",
        subject=operator.id if operator else None,
        actor=operator.name if operator else None,
        data={"reason": reason},
    )


def _existing(session: Session, name: str) -> Operator:
    # Not a name an operator can have (from a URL, say): nothing to look up.
    operator = by_name(session, name, for_update=True) if _NAME.fullmatch(name) else None
    if operator is None:
        raise OperatorNotFound("no operator has this name")
    return operator


def disable(session: Session, audit_key: bytes, name: str, *, actor: str) -> Operator:
    """No more sign-ins, and any open session ends at its next request."""
    operator = _existing(session, name)
    if operator.disabled_at is None:
        operator.disabled_at = utcnow()
        record_event(
            session, audit_key, "operator.disabled", subject=operator.id, actor=actor, data={}
        )
    return operator


def unlock(session: Session, audit_key: bytes, name: str, *, actor: str) -> Operator:
    operator = _existing(session, name)
    operator.failed_logins = 0
    operator.locked_until = None
    record_event(session, audit_key, "operator.unlocked", subject=operator.id, actor=actor, data={})
    return operator


def open_session(operator: Operator) -> str:
    """A new console session for this operator (the only one: an earlier one ends)."""
    token = secrets.token_urlsafe(32)
    operator.session_token_hash = session_token_hash(token)
    return token


def session_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def holds_session(operator: Operator, token: str) -> bool:
    expected = operator.session_token_hash
    return expected is not None and hmac.compare_digest(expected, session_token_hash(token))


def close_session(operator: Operator) -> None:
    operator.session_token_hash = None


def record_logout(session: Session, audit_key: bytes, operator: Operator) -> None:
    record_event(
        session, audit_key, "operator.logout", subject=operator.id, actor=operator.name, data={}
    )
