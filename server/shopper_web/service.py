"""The shopper's privacy requests on the web: deletion and export, confirmed by a one-time code
mailed to the shopper's address.

No user enumeration: asking for a code does the same work and gives the same answer whether
or not the address belongs to a shopper (a code row is made either way, and the hourly limit
counts both alike); only the mail differs, and the route sends it after the response. A code
is kept as a keyed hash, dies after `code_tries` wrong guesses or `code_ttl_s`, and works once.
Neither the code nor the address reaches a log line or the audit chain.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from marshmallow import ValidationError
from marshmallow.validate import Email
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.audit.service import record_event
from server.consent import service as consent
from server.crypto import CryptoError, DataKey, open_, seal
from server.db import utcnow
from server.keys import InstanceKeys
from server.privacy.models import OneTimeCode
from server.privacy.service import DELETED, Receipt, ShopperNotFound, delete_shopper, export_shopper
from server.shoppers.models import Shopper

logger = logging.getLogger(__name__)

PURPOSES = ("delete", "export")
CODE_DIGITS = 6
# Per address, whether or not it is a shopper's. With `code_tries` guesses per code, the
# hourly limit alone would still let someone guess at one address's codes all year long; the
# daily cap on wrong guesses keeps that to a few thousand guesses a year (of a million codes).
CODES_PER_HOUR = 5
WRONG_GUESSES_PER_DAY = 10
MAX_EMAIL_LENGTH = 254
_SESSION_AAD = b"facepay/web-pending-email/v1\x00"
_validate_email = Email()


class InvalidRequest(ValueError):
    """The form was filled in wrongly; `code` is shown on the page."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def normalise_email(raw: str) -> str:
    """The address as enrollment stores it (trimmed, lower case), or InvalidRequest."""
    email = raw.strip().lower()
    # Control characters could end a mail header early; the validator alone lets some pass.
    if not email or len(email) > MAX_EMAIL_LENGTH or not email.isprintable():
        raise InvalidRequest("invalid_email")
    try:
        _validate_email(email)
    except ValidationError:
        raise InvalidRequest("invalid_email") from None
    return email


def check_purpose(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise InvalidRequest("invalid_purpose")
    return purpose


@dataclass(frozen=True)
class Pending:
    """The request a browser is in the middle of (kept in its signed session cookie)."""

    request_id: str
    purpose: str
    email: str
    verified: bool = False  # deletion: the code was right, the final confirmation is due


@dataclass(frozen=True)
class CodeRequest:
    request_id: str | None  # None: this address asked for too many codes in the last hour
    mail_code: str | None  # the code to mail; None when no shopper has this address


@dataclass(frozen=True)
class Outcome:
    code: str  # ok, nothing_found, wrong_code, code_exhausted, code_expired, code_used, no_request
    tries_left: int = 0
    receipts: list[Receipt] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # shopper ids: finish after the commit
    document: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.code == "ok"

    @property
    def final(self) -> bool:
        """The request is over: success, nothing found, or a code that can no longer work."""
        return self.code != "wrong_code"


def _email_hash(keys: InstanceKeys, email: str) -> str:
    return keys.contact_hash("email", email)


def _code_hash(keys: InstanceKeys, request_id: str, code: str) -> str:
    return keys.contact_hash("code", f"{request_id}:{code}")


def new_request_id() -> str:
    return str(uuid.uuid4())


def shoppers_with_email(session: Session, email: str) -> list[str]:
    """Every shopper this address covers (the address is not unique), in a stable order."""
    return list(
        session.scalars(
            select(Shopper.id)
            .where(Shopper.email == email, Shopper.status != DELETED)
            .order_by(Shopper.created_at, Shopper.id)
        )
    )


def request_code(
    session: Session,
    keys: InstanceKeys,
    *,
    email: str,
    purpose: str,
    ttl_s: int,
    now: dt.datetime | None = None,
) -> CodeRequest:
    now = now or utcnow()
    email_hash = _email_hash(keys, email)
    last_hour, last_day = now - dt.timedelta(hours=1), now - dt.timedelta(days=1)
    codes, guesses = session.execute(
        select(
            func.count().filter(OneTimeCode.created_at > last_hour),
            func.coalesce(func.sum(OneTimeCode.attempts), 0),
        ).where(OneTimeCode.email_hash == email_hash, OneTimeCode.created_at > last_day)
    ).one()
    shoppers = shoppers_with_email(session, email)
    refused = None
    if int(codes) >= CODES_PER_HOUR:
        refused = "rate_limited"
    elif int(guesses) >= WRONG_GUESSES_PER_DAY:
        refused = "too_many_guesses"
    if refused is not None:
        record_event(
            session,
            keys.audit_key,
            "privacy.code_refused",
            actor="web",
            data={"purpose": purpose, "reason": refused},
        )
        return CodeRequest(None, None)
    request_id = new_request_id()
    code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    session.add(
        OneTimeCode(
            id=request_id,
            email_hash=email_hash,
            purpose=purpose,
            code_hash=_code_hash(keys, request_id, code),
            attempts=0,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ttl_s),
            used_at=None,
        )
    )
    session.flush()
    record_event(
        session,
        keys.audit_key,
        "privacy.code_requested",
        actor="web",
        data={"purpose": purpose, "request_id": request_id, "mailed": bool(shoppers)},
    )
    return CodeRequest(request_id, code if shoppers else None)


def _locked_code(session: Session, request_id: str) -> OneTimeCode | None:
    # Locked until the commit: concurrent guesses are counted one after the other.
    return session.scalars(
        select(OneTimeCode).where(OneTimeCode.id == request_id).with_for_update()
    ).first()


def _unusable(
    row: OneTimeCode | None, keys: InstanceKeys, pending: Pending, tries: int, now: dt.datetime
) -> str | None:
    if (
        row is None
        or row.purpose != pending.purpose
        or not hmac.compare_digest(row.email_hash, _email_hash(keys, pending.email))
    ):
        return "no_request"
    if row.used_at is not None:
        return "code_used"
    if row.attempts >= tries:
        return "code_exhausted"
    if row.expires_at <= now:
        return "code_expired"
    return None


def _failed(session: Session, keys: InstanceKeys, pending: Pending, outcome: Outcome) -> Outcome:
    record_event(
        session,
        keys.audit_key,
        "privacy.code_failed",
        actor="web",
        data={
            "purpose": pending.purpose,
            "request_id": pending.request_id,
            "reason": outcome.code,
        },
    )
    return outcome


def _check(
    session: Session,
    keys: InstanceKeys,
    pending: Pending,
    code: str,
    *,
    tries: int,
    now: dt.datetime,
) -> tuple[Outcome, OneTimeCode | None]:
    row = _locked_code(session, pending.request_id)
    problem = _unusable(row, keys, pending, tries, now)
    if problem is not None or row is None:
        return _failed(session, keys, pending, Outcome(problem or "no_request")), None
    given = "".join(code.split())[: 4 * CODE_DIGITS]
    if not hmac.compare_digest(_code_hash(keys, row.id, given), row.code_hash):
        row.attempts += 1
        left = max(tries - row.attempts, 0)
        outcome = Outcome("wrong_code" if left else "code_exhausted", tries_left=left)
        return _failed(session, keys, pending, outcome), None
    record_event(
        session,
        keys.audit_key,
        "privacy.code_confirmed",
        actor="web",
        data={"purpose": pending.purpose, "request_id": row.id},
    )
    return Outcome("ok"), row


def verify_for_deletion(
    session: Session,
    keys: InstanceKeys,
    pending: Pending,
    code: str,
    *,
    tries: int,
    now: dt.datetime | None = None,
) -> Outcome:
    """The first step of a deletion: the code is right. It stays unused until the shopper
    confirms (`delete_for_email`), so an expiry in between still applies."""
    outcome, _row = _check(session, keys, pending, code, tries=tries, now=now or utcnow())
    return outcome


def delete_for_email(
    session: Session,
    keys: InstanceKeys,
    pending: Pending,
    *,
    tries: int,
    now: dt.datetime | None = None,
) -> Outcome:
    """Delete every shopper with the address, one receipt each, in the caller's transaction;
    after the commit the caller destroys the data keys (`finish_deletions(outcome.deleted)`)."""
    now = now or utcnow()
    row = _locked_code(session, pending.request_id)
    problem = "no_request" if not pending.verified else _unusable(row, keys, pending, tries, now)
    if problem is not None or row is None:
        return _failed(session, keys, pending, Outcome(problem or "no_request"))
    row.used_at = now
    receipts, deleted = [], []
    for shopper_id in shoppers_with_email(session, pending.email):
        try:
            receipts.append(
                delete_shopper(
                    session, shopper_id=shopper_id, keys=keys, via="web", actor="shopper"
                )
            )
        except ShopperNotFound:  # deleted meanwhile (at a kiosk): nothing left to do
            continue
        deleted.append(shopper_id)
    record_event(
        session,
        keys.audit_key,
        "privacy.deletion_confirmed",
        actor="shopper",
        data={"request_id": row.id, "deletion_ids": [receipt.request_id for receipt in receipts]},
    )
    return Outcome("ok" if receipts else "nothing_found", receipts=receipts, deleted=deleted)


def export_for_email(
    session: Session,
    keys: InstanceKeys,
    pending: Pending,
    code: str,
    *,
    tries: int,
    now: dt.datetime | None = None,
) -> Outcome:
    """Check the code and, if right, use it up and gather everything held about every
    shopper with the address."""
    now = now or utcnow()
    outcome, row = _check(session, keys, pending, code, tries=tries, now=now)
    if row is None:
        return outcome
    row.used_at = now
    shopper_ids = shoppers_with_email(session, pending.email)
    if not shopper_ids:
        return Outcome("nothing_found")
    document = {"shoppers": [export_shopper(session, shopper_id) for shopper_id in shopper_ids]}
    for shopper_id in shopper_ids:
        record_event(
            session,
            keys.audit_key,
            "shopper.exported",
            subject=shopper_id,
            actor="shopper",
            data={"via": "web", "request_id": row.id},
        )
    return Outcome("ok", document=document)


# The pending request's address travels in the browser's session cookie, which is signed but
# readable: it is sealed (AES-GCM, bound to the request id) so that the cookie never shows it.
# Likewise, that a deletion's code was right is kept as a keyed hash of the request id: the
# cookie's signature alone (the Flask secret key) is not enough to mark a request confirmed.
def verification_proof(keys: InstanceKeys, request_id: str) -> str:
    return keys.contact_hash("web-code-verified", request_id)


def proves_verification(keys: InstanceKeys, request_id: str, proof: object) -> bool:
    return isinstance(proof, str) and hmac.compare_digest(
        proof, verification_proof(keys, request_id)
    )


def _cookie_key(keys: InstanceKeys) -> DataKey:
    return DataKey(
        bytes.fromhex(keys.contact_hash("web-cookie-key-id", "v1"))[:16],
        bytes.fromhex(keys.contact_hash("web-cookie-key", "v1")),
    )


def seal_email(keys: InstanceKeys, request_id: str, email: str) -> str:
    blob = seal(_cookie_key(keys), email.encode("utf-8"), _SESSION_AAD + request_id.encode())
    return base64.urlsafe_b64encode(blob).decode("ascii")


def open_email(keys: InstanceKeys, request_id: str, sealed: str) -> str | None:
    try:
        blob = base64.urlsafe_b64decode(sealed.encode("ascii"))
        plain = open_(_cookie_key(keys), blob, _SESSION_AAD + request_id.encode())
        return plain.decode("utf-8")
    except (CryptoError, binascii.Error, UnicodeError, ValueError):
        return None


@dataclass(frozen=True)
class PolicyPage:
    version: int
    purpose: str
    retention_days: int
    effective_on: str
    text_locale: str
    paragraphs: list[str]


def policy_page(session: Session, lang: str) -> PolicyPage:
    """The current notice for the human-readable page, in `lang` when published in it."""
    policy = consent.current(session)
    locale = lang if lang in policy.texts else ("en" if "en" in policy.texts else "")
    locale = locale or sorted(policy.texts)[0]
    blocks = policy.texts[locale].replace("\r\n", "\n").split("\n\n")
    return PolicyPage(
        version=policy.version,
        purpose=policy.purpose,
        retention_days=policy.retention_days,
        effective_on=policy.effective_at.date().isoformat(),
        text_locale=locale,
        paragraphs=[" ".join(block.split()) for block in blocks if block.strip()],
    )


def code_mail(purpose: str, code: str, ttl_s: int) -> tuple[str, str]:
    """Subject and body of the code's mail, in English and French. No link: a link built from
    the request's Host header could point a shopper at someone else's site."""
    minutes = max(ttl_s // 60, 1)
    what_en = (
        "delete the face data and contact details held for this address"
        if purpose == "delete"
        else "export everything held about this address"
    )
    what_fr = (
        "supprimer les données faciales et les coordonnées liées à cette adresse"
        if purpose == "delete"
        else "exporter tout ce qui est détenu au sujet de cette adresse"
    )
    body = (
        f"Your facepay code: {code}\n\n"
        f"Someone asked on the facepay privacy page to {what_en}. Enter this code on the page "
        f"where you asked, within {minutes} minutes. It works once.\n\n"
        "If you did not ask, ignore this message: nothing happens without the code. Never give "
        "this code to anyone; no one from the store will ask you for it.\n\n"
        "---\n\n"
        f"Votre code facepay : {code}\n\n"
        f"Quelqu'un a demandé, sur la page de confidentialité de facepay, de {what_fr}. Entrez "
        f"ce code sur la page où la demande a été faite, d'ici {minutes} minutes. Il ne sert "
        "qu'une fois.\n\n"
        "Si vous n'avez rien demandé, ignorez ce message : rien ne se fait sans le code. Ne "
        "donnez ce code à personne; personne du magasin ne vous le demandera.\n"
    )
    return "Your facepay code / Votre code facepay", body
