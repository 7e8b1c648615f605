"""Kiosk trust: pairing codes, registration of a kiosk's Ed25519 key, signed-request checks."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from server.audit.service import record_event
from server.crypto import (
    NonceStoreUnavailable,
    ReplayError,
    ReplayGuard,
    SignatureError,
    verify_signed_request,
)
from server.db import utcnow
from server.errors import ProblemError, Unavailable
from server.kiosks.models import Kiosk, RequestNonce

logger = logging.getLogger(__name__)

PAIRING_TTL = dt.timedelta(hours=24)
# Built once: every signed request runs both.
_KIOSK = select(Kiosk).where(Kiosk.id == bindparam("kiosk_id"))
_RECORD_NONCE = RequestNonce.__table__.insert()  # type: ignore[attr-defined]
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud at a till


class KioskAuthError(ProblemError):
    status_code = 401
    code = "kiosk_unauthenticated"
    title = "The request is not from a trusted kiosk"


class PairingError(ProblemError):
    status_code = 403
    code = "pairing_code_invalid"
    title = "The pairing code is not valid"


@dataclass(frozen=True)
class NewKiosk:
    kiosk_id: str
    pairing_code: str
    expires_at: dt.datetime


def _code_hash(code: str) -> str:
    normalised = code.replace("-", "").replace(" ", "").upper()
    return hashlib.sha256(b"facepay-pairing\x00" + normalised.encode()).hexdigest()


def add_kiosk(
    session: Session, audit_key: bytes, *, name: str, store: str, actor: str = "cli"
) -> NewKiosk:
    if not name.strip() or not store.strip():
        raise ValueError("a kiosk needs a name and a store")
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(12))
    code = "-".join(raw[i : i + 4] for i in range(0, 12, 4))
    kiosk = Kiosk(
        id=str(uuid.uuid4()),
        name=name.strip(),
        store=store.strip(),
        status="pending",
        pairing_code_hash=_code_hash(code),
        pairing_expires_at=utcnow() + PAIRING_TTL,
    )
    session.add(kiosk)
    session.flush()
    record_event(
        session,
        audit_key,
        "kiosk.added",
        subject=kiosk.id,
        actor=actor,
        data={"store": kiosk.store},
    )
    assert kiosk.pairing_expires_at is not None
    return NewKiosk(kiosk.id, code, kiosk.pairing_expires_at)


def register(
    session: Session, audit_key: bytes, *, pairing_code: str, public_key_b64: str
) -> Kiosk:
    """Bind a kiosk's public key to its pending record; the code works once."""
    public_key = _decode_key(public_key_b64)
    kiosk = session.scalars(
        select(Kiosk).where(Kiosk.pairing_code_hash == _code_hash(pairing_code)).with_for_update()
    ).first()
    if kiosk is None or kiosk.status != "pending":
        raise PairingError()
    if kiosk.pairing_expires_at is None or kiosk.pairing_expires_at < utcnow():
        raise PairingError("the pairing code has expired", code="pairing_code_expired")
    kiosk.public_key = public_key
    kiosk.pairing_code_hash = None
    kiosk.pairing_expires_at = None
    kiosk.status = "active"
    kiosk.paired_at = utcnow()
    try:
        session.flush()
    except IntegrityError:
        raise ProblemError(
            "this key is already registered", code="kiosk_key_in_use", status=409
        ) from None
    record_event(session, audit_key, "kiosk.registered", subject=kiosk.id, actor=kiosk.id)
    return kiosk


def revoke(session: Session, audit_key: bytes, kiosk_id: str, *, actor: str = "cli") -> Kiosk:
    kiosk = session.get(Kiosk, kiosk_id)
    if kiosk is None:
        raise ProblemError("no such kiosk", code="kiosk_not_found", status=404)
    if kiosk.status != "revoked":
        kiosk.status = "revoked"
        kiosk.revoked_at = utcnow()
        kiosk.pairing_code_hash = None
        record_event(session, audit_key, "kiosk.revoked", subject=kiosk.id, actor=actor)
    return kiosk


def _decode_key(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ProblemError(
            "public_key is not base64url", code="bad_public_key", status=422
        ) from None
    if len(raw) != 32:
        raise ProblemError(
            "public_key must be a 32-byte Ed25519 key", code="bad_public_key", status=422
        )
    return raw


@dataclass(frozen=True)
class SignedRequest:
    kiosk_id: str
    timestamp: int
    nonce: str
    signature: str


def authenticate(
    sessions: sessionmaker[Session],
    signed: SignedRequest,
    *,
    method: str,
    path: str,
    body_sha256_hex: str,
    window_seconds: int,
) -> Kiosk:
    """Check a kiosk request: known and active kiosk, fresh timestamp, valid signature, unused
    nonce. The nonce is committed before the request's own work, so a replay is refused even
    when the first request later fails. One transaction reads the kiosk and records the nonce:
    on SQLite each transaction takes the write lock, so a second one would cost as much again."""
    with sessions() as session:
        kiosk = (
            session.scalars(_KIOSK, {"kiosk_id": signed.kiosk_id}).first()
            if _plausible_id(signed.kiosk_id)
            else None
        )
        if kiosk is None or kiosk.public_key is None:
            raise KioskAuthError("unknown kiosk", code="kiosk_unknown")
        if kiosk.status != "active":
            raise KioskAuthError("this kiosk has been revoked", code="kiosk_revoked", status=403)

        def seen(kiosk_id: str, nonce: str) -> bool:
            try:
                session.connection().execute(
                    _RECORD_NONCE, {"kiosk_id": kiosk_id, "nonce": nonce, "seen_at": utcnow()}
                )
                session.commit()
            except IntegrityError:
                session.rollback()
                return True
            cutoff = utcnow() - dt.timedelta(seconds=2 * window_seconds)
            if secrets.randbelow(100) == 0:  # prune old nonces now and then, not on every call
                session.execute(delete(RequestNonce).where(RequestNonce.seen_at < cutoff))
                session.commit()
            return False

        guard = ReplayGuard(seen, window_seconds=window_seconds)
        try:
            verify_signed_request(
                bytes(kiosk.public_key),
                signed.signature,
                guard,
                method=method,
                path=path,
                body_sha256_hex=body_sha256_hex,
                timestamp=signed.timestamp,
                nonce=signed.nonce,
                kiosk_id=signed.kiosk_id,
            )
        except NonceStoreUnavailable:
            # The database did not answer: not a replay, so the kiosk sends the request again.
            raise Unavailable(
                "the request's nonce could not be recorded; send the request again",
                code="database_unavailable",
            ) from None
        except ReplayError as exc:
            raise KioskAuthError(str(exc), code="request_replayed_or_stale") from None
        except SignatureError:
            raise KioskAuthError(
                "the request signature does not verify", code="bad_signature"
            ) from None
    return kiosk


def _plausible_id(kiosk_id: str) -> bool:
    try:
        uuid.UUID(kiosk_id)
    except ValueError:
        return False
    return True
