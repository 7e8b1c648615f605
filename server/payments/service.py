"""Payments: from a sealed probe to money moved exactly once.

Each function here runs inside the caller's transaction (an idempotent request's work) and
returns the answer as (HTTP status, body). Locks are taken in one order everywhere: the
payment, the shopper's wallet, the store's account, then the audit chain (last, because it is
the one lock every writer shares).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import bindparam, case, func, select
from sqlalchemy.orm import Session

from server.audit.service import record_event
from server.config import Settings
from server.consent.models import Consent
from server.db import utcnow
from server.enrollment.service import open_templates
from server.errors import ProblemError
from server.keys import InstanceKeys
from server.kiosks.models import Kiosk
from server.ledger import service as ledger
from server.matching.decision import Decision
from server.matching.risk import Rung
from server.matching.service import Gallery
from server.payments.models import (
    AUTHORIZED,
    CAPTURED,
    DECLINED,
    EXPIRED,
    STEP_UP_REQUIRED,
    VOIDED,
    Payment,
)
from server.shoppers.models import Shopper
from server.templates import b64decode

logger = logging.getLogger(__name__)

Answer = tuple[int, dict[str, Any]]

# Why a payment was declined: stable codes, part of the API.
DECLINE_CODES = (
    "no_match",
    "insufficient_funds",
    "limit_exceeded",
    "consent_withdrawn",
    "account_suspended",
    "currency_mismatch",
    "step_up_failed",
    "step_up_expired",
    "step_up_locked",
)


# What a kiosk is told of a decline. Every reason that depends on whose face it is (no match,
# a failed step-up, the shopper's funds, limits, consent, status or wallet currency) is said
# as one code, so that no answer tells an enrolled face from a stranger's before money moves;
# the reason itself stays in the payment row, the audit log and the shopper's export.
NOT_APPROVED = "not_approved"
_SAID_AS_NOT_APPROVED = frozenset(
    {
        "no_match",
        "step_up_failed",
        "insufficient_funds",
        "limit_exceeded",
        "consent_withdrawn",
        "account_suspended",
        "currency_mismatch",
    }
)
# The codes a kiosk can see.
PUBLIC_DECLINE_CODES = (NOT_APPROVED, "step_up_expired", "step_up_locked")


def public_decline(code: str | None) -> str | None:
    return NOT_APPROVED if code in _SAID_AS_NOT_APPROVED else code


class PaymentNotFound(ProblemError):
    status_code = 404
    code = "payment_not_found"
    title = "No such payment at this kiosk"


class PaymentConflict(ProblemError):
    status_code = 409
    code = "payment_state_conflict"
    title = "The payment is not in a state that allows this"


class CurrencyNotAccepted(ProblemError):
    status_code = 422
    code = "currency_not_accepted"
    title = "This server does not take payments in this currency"


class ManualAuthorizationsPaused(ProblemError):
    status_code = 429
    code = "manual_authorizations_paused"
    title = "Too many authorizations were voided here today: manual capture is paused"


def voids_today(session: Session, kiosk: Kiosk, now: dt.datetime) -> tuple[int, int]:
    """Authorizations voided in the last 24 hours at this kiosk, and at its store."""
    since = now - dt.timedelta(hours=24)
    voided = (
        select(func.count())
        .select_from(Payment)
        .where(Payment.state == VOIDED, Payment.updated_at > since)
    )
    at_kiosk = session.scalar(voided.where(Payment.kiosk_id == kiosk.id)) or 0
    at_store = session.scalar(voided.where(Payment.store == kiosk.store)) or 0
    return int(at_kiosk), int(at_store)


def _refuse_if_probing(
    session: Session, kiosk: Kiosk, settings: Settings, now: dt.datetime
) -> None:
    """Authorize-then-void is how a kiosk could learn about a face without moving money:
    past the day's voids at this kiosk or store, manual authorizations are refused (the
    route counts the refusal in a metric to alert on)."""
    at_kiosk, at_store = voids_today(session, kiosk, now)
    if at_kiosk >= settings.voids_per_kiosk_day or at_store >= settings.voids_per_store_day:
        raise ManualAuthorizationsPaused(
            "automatic capture still works; manual authorizations resume within a day"
        )


class AmountNotAllowed(ProblemError):
    status_code = 422
    code = "amount_not_allowed"
    title = "The amount is not allowed for this payment"


def _outcome(state: str) -> str:
    if state in (AUTHORIZED, CAPTURED, VOIDED, EXPIRED):
        return "approved"
    return state  # declined, step_up_required


def view(
    payment: Payment,
    *,
    tries_allowed: int = 0,
    label: str | None = None,
    balance: int | None = None,
) -> dict[str, Any]:
    """The API's picture of a payment: never a score, and nothing of the shopper (their label,
    their balance) until money has moved: a manual authorization holds money but says whose
    only once captured. `tries_allowed` is the step-up tries a challenge has (the
    `step_up_tries` setting)."""
    body: dict[str, Any] = {
        "payment_id": payment.id,
        "status": _outcome(payment.state),
        "state": payment.state,
        "amount": payment.amount,
        "currency": payment.currency,
        "capture_method": payment.capture_method,
        "captured_amount": payment.captured_amount,
        "refunded_amount": payment.refunded_amount,
        "created_at": payment.created_at.isoformat(),
    }
    if payment.state == DECLINED:
        body["decline_code"] = public_decline(payment.decline_code)
    if payment.state == STEP_UP_REQUIRED:
        body["challenge_id"] = payment.challenge_id
        body["step_up_reason"] = payment.step_up_reason
        body["step_up_ask"] = payment.step_up_ask or Rung.PHONE_LAST4.value
        body["tries_left"] = max(0, tries_allowed - payment.step_up_tries)
    if payment.expires_at is not None:
        body["expires_at"] = payment.expires_at.isoformat()
    if payment.state == CAPTURED and label is not None:
        body["shopper_label"] = label
    if payment.state == CAPTURED and balance is not None:
        body["wallet_balance"] = balance
    return body


# ---------------------------------------------------------------- authorization


def match_then_record(
    *,
    kiosk: Kiosk,
    body: Mapping[str, Any],
    keys: InstanceKeys,
    gallery: Gallery,
    settings: Settings,
) -> Callable[[Session], Answer]:
    """`POST /v1/payments` in two parts: open the probe and, where the risk rule lets a face
    alone decide, match it (no database, so outside the transaction); then record what
    approves, declines or asks for step-up, with its audit record, in the caller's
    transaction.

    The step-up rung is chosen from the gallery's size and the amount before any face is
    searched (`Gallery.rung`): at a gallery too large for a face alone, the face is not
    searched at all until the phone digits narrow it, and the answer (step-up, and which
    rung) is the same for every face."""
    now = utcnow()
    currency = body["currency"]
    if currency not in settings.accepted_currencies:
        raise CurrencyNotAccepted(f"accepted: {', '.join(sorted(settings.accepted_currencies))}")
    probe = body["probe"]
    pack, liveness, vectors = open_templates(
        [probe],
        kiosk_id=kiosk.id,
        purpose="pay",
        keys=keys,
        gallery=gallery,
        liveness_required=settings.liveness_required,
    )
    large = body["amount"] > settings.step_up_above
    rung = gallery.rung(pack, minimum=Rung.PHONE_LAST4 if large else Rung.FACE)
    if rung.rung is Rung.FACE:
        decision = gallery.identify(pack, vectors[0], rung)
    else:
        decision = Decision("step_up", None, f"rung_{rung.rung.value}")

    def record(session: Session) -> Answer:
        if body["capture_method"] == "manual":
            _refuse_if_probing(session, kiosk, settings, now)
        payment = Payment(
            id=str(uuid.uuid4()),
            kiosk_id=kiosk.id,
            store=kiosk.store,
            amount=body["amount"],
            currency=currency,
            capture_method=body["capture_method"],
            state=DECLINED,
            captured_amount=0,
            refunded_amount=0,
            stepped_up=False,
            step_up_tries=0,
            probe_pack=pack,
            probe_liveness=liveness,
            created_at=now,
        )
        session.add(payment)
        label, balance = None, None
        if decision.outcome == "match":
            assert decision.shopper_id is not None
            label, balance = settle(session, payment, decision.shopper_id, settings, now)
        elif decision.outcome == "step_up":
            # A thin margin at the face rung: the next rung up narrows the search.
            asked = rung if rung.rung is not Rung.FACE else gallery.rung(pack, Rung.PHONE_LAST4)
            reason = "amount" if large else "identity"
            sealed = b64decode(probe["sealed"])
            _open_challenge(payment, sealed, reason, asked.rung, settings, now)
        else:
            payment.decline_code = "no_match"
        session.flush()
        audit_attempt(session, keys, kiosk, payment, decision, purpose="pay")
        return 201, view(
            payment, tries_allowed=settings.step_up_tries, label=label, balance=balance
        )

    return record


def settle(
    session: Session, payment: Payment, shopper_id: str, settings: Settings, now: dt.datetime
) -> tuple[str | None, int | None]:
    """A face (and, after step-up, a phone ending) named the shopper: check what the rules
    ask, then capture or hold. Returns the label and balance to show when approved."""
    # The payment is written once, with its outcome, rather than inserted by the first query
    # and updated after: this is the hot path of every payment.
    with session.no_autoflush:
        return _settle_unflushed(session, payment, shopper_id, settings, now)


def _settle_unflushed(
    session: Session, payment: Payment, shopper_id: str, settings: Settings, now: dt.datetime
) -> tuple[str | None, int | None]:
    payment.shopper_id = shopper_id
    shopper = _shopper_and_consent(session, shopper_id)
    if shopper is None or shopper.status == "deleted":
        return decline(payment, "no_match")
    if shopper.status == "suspended":
        return decline(payment, "account_suspended")
    if not shopper.consented:
        return decline(payment, "consent_withdrawn")
    limits = Limits.of(shopper, settings)
    if payment.amount > limits.per_payment:
        return decline(payment, "limit_exceeded")
    wallet = ledger.wallet_of(session, shopper_id, lock=True)
    if wallet is None or wallet.currency != payment.currency:
        return decline(payment, "currency_mismatch")
    if wallet.debits_held:  # only a wallet with holds can have stale ones
        _expire_holds_of(session, shopper_id, now)
    if _spent_today(session, shopper_id, now) + payment.amount > limits.per_day:
        return decline(payment, "limit_exceeded")
    if wallet.available < payment.amount:
        return decline(payment, "insufficient_funds")
    payment.decline_code = None
    if payment.capture_method == "automatic":
        payment.state, payment.captured_amount = CAPTURED, payment.amount
        payment.expires_at = None
        session.flush()  # the payment row, before the transfer that refers to it
        store = ledger.store_account(session, payment.store, payment.currency)
        ledger.transfer(
            session,
            debit=wallet,
            credit=store,
            amount=payment.amount,
            kind="charge",
            payment_id=payment.id,
        )
    else:
        ledger.hold(wallet, payment.amount)
        payment.state = AUTHORIZED
        payment.expires_at = now + dt.timedelta(seconds=settings.authorization_ttl_s)
    # The retention clock starts again.
    session.connection().execute(_TOUCH_SHOPPER, {"shopper_id": shopper_id, "now": now})
    return shopper.masked_label, wallet.available


def decline(payment: Payment, code: str) -> tuple[None, None]:
    payment.state, payment.decline_code, payment.expires_at = DECLINED, code, None
    return None, None


def _open_challenge(
    payment: Payment,
    sealed: bytes,
    reason: str,
    asked: Rung,
    settings: Settings,
    now: dt.datetime,
) -> None:
    payment.state = STEP_UP_REQUIRED
    payment.step_up_reason = reason
    payment.step_up_ask = asked.value
    payment.challenge_id = str(uuid.uuid4())
    payment.sealed_probe = sealed
    payment.step_up_tries = 0
    payment.expires_at = now + dt.timedelta(seconds=settings.step_up_ttl_s)


def close_challenge(payment: Payment) -> None:
    """The probe is erased as soon as the challenge ends, whatever its end."""
    payment.sealed_probe = None
    payment.challenge_id = None
    payment.expires_at = None


class _ShopperFacts(NamedTuple):
    status: str
    masked_label: str
    consented: bool  # the latest consent stands
    limit_per_payment: int | None
    limit_per_day: int | None


@dataclass(frozen=True)
class Limits:
    """The limits a shopper's payments meet: the server's, or the shopper's own where lower."""

    per_payment: int
    per_day: int
    own_per_payment: int | None = None
    own_per_day: int | None = None

    @classmethod
    def of(cls, shopper: _ShopperFacts | Shopper, settings: Settings) -> Limits:
        own_payment, own_day = shopper.limit_per_payment, shopper.limit_per_day
        return cls(
            per_payment=min(settings.limit_per_payment, own_payment or settings.limit_per_payment),
            per_day=min(settings.limit_per_day, own_day or settings.limit_per_day),
            own_per_payment=own_payment,
            own_per_day=own_day,
        )

    def as_dict(self) -> dict[str, int | None]:
        return {
            "limit_per_payment": self.per_payment,
            "limit_per_day": self.per_day,
            "own_limit_per_payment": self.own_per_payment,
            "own_limit_per_day": self.own_per_day,
        }


# The statements on every payment's path are built once, with bound parameters: building one
# and computing its cache key costs several times what running it does.
_LATEST_CONSENT_WITHDRAWN = (
    select(case((Consent.withdrawn_at.is_(None), 0), else_=1))
    .where(Consent.shopper_id == Shopper.id)
    .order_by(Consent.recorded_at.desc())
    .limit(1)
    .scalar_subquery()
)
_SHOPPER_FACTS = select(
    Shopper.status,
    Shopper.masked_label,
    func.coalesce(_LATEST_CONSENT_WITHDRAWN, 1),
    Shopper.limit_per_payment,
    Shopper.limit_per_day,
).where(Shopper.id == bindparam("shopper_id"))
_SPENT_SINCE = select(
    func.coalesce(
        func.sum(case((Payment.state == CAPTURED, Payment.captured_amount), else_=Payment.amount)),
        0,
    )
).where(
    Payment.shopper_id == bindparam("shopper_id"),
    Payment.state.in_((AUTHORIZED, CAPTURED)),
    Payment.created_at > bindparam("since", type_=Payment.created_at.type),
)
_TOUCH_SHOPPER = (
    Shopper.__table__.update()  # type: ignore[attr-defined]
    .where(Shopper.__table__.c.id == bindparam("shopper_id"))
    .values(last_activity_at=bindparam("now"))
)


def _shopper_and_consent(session: Session, shopper_id: str) -> _ShopperFacts | None:
    """What a payment needs of the shopper, and whether their latest consent stands, in one
    query (columns, not the ORM object: this is on every payment's path)."""
    row = session.connection().execute(_SHOPPER_FACTS, {"shopper_id": shopper_id}).first()
    if row is None:
        return None
    status, label, withdrawn, per_payment, per_day = row
    return _ShopperFacts(status, label, withdrawn == 0, per_payment, per_day)


def _spent_today(session: Session, shopper_id: str, now: dt.datetime) -> int:
    """What the shopper's approved payments of the last 24 hours take (holds included)."""
    since = now - dt.timedelta(hours=24)
    total = (
        session.connection()
        .execute(_SPENT_SINCE, {"shopper_id": shopper_id, "since": since})
        .scalar()
    )
    return int(total or 0)


# ---------------------------------------------------------------- capture, void, expiry


def capture(
    session: Session,
    *,
    kiosk: Kiosk,
    payment_id: str,
    amount: int | None,
    keys: InstanceKeys,
) -> Answer:
    """Capture an authorization once, for at most the authorized amount; the rest is released."""
    payment = locked_payment(session, payment_id, kiosk)
    _require_open_authorization(payment, "captured")
    amount = payment.amount if amount is None else amount
    if not 0 < amount <= payment.amount:
        raise AmountNotAllowed(
            "capture at most the authorized amount", code="capture_exceeds_authorization"
        )
    assert payment.shopper_id is not None
    wallet = ledger.wallet_of(session, payment.shopper_id, lock=True)
    assert wallet is not None
    ledger.release(wallet, payment.amount)
    store = ledger.store_account(session, payment.store, payment.currency)
    ledger.transfer(
        session, debit=wallet, credit=store, amount=amount, kind="charge", payment_id=payment.id
    )
    payment.state, payment.captured_amount, payment.expires_at = CAPTURED, amount, None
    session.flush()
    audit_payment(session, keys, "payment.captured", payment, actor=kiosk.id)
    label = session.scalar(select(Shopper.masked_label).where(Shopper.id == payment.shopper_id))
    return 200, view(payment, label=label, balance=wallet.available)


def void(session: Session, *, kiosk: Kiosk, payment_id: str, keys: InstanceKeys) -> Answer:
    """Cancel an authorization: its hold goes back to the wallet, nothing is charged."""
    payment = locked_payment(session, payment_id, kiosk)
    _require_open_authorization(payment, "voided")
    _release_hold(session, payment, VOIDED)
    audit_payment(session, keys, "payment.voided", payment, actor=kiosk.id)
    return 200, view(payment)


def _require_open_authorization(payment: Payment, verb: str) -> None:
    if payment.state != AUTHORIZED:
        raise PaymentConflict(
            f"only an open authorization can be {verb}; this payment is {payment.state}",
            code="payment_not_authorized",
        )
    if payment.expires_at is not None and payment.expires_at <= utcnow():
        raise PaymentConflict(
            "the authorization has expired and its hold is released",
            code="authorization_expired",
        )


def _release_hold(session: Session, payment: Payment, state: str) -> None:
    assert payment.shopper_id is not None
    wallet = ledger.wallet_of(session, payment.shopper_id, lock=True)
    assert wallet is not None
    ledger.release(wallet, payment.amount)
    payment.state, payment.expires_at = state, None
    session.flush()


def _expire_holds_of(session: Session, shopper_id: str, now: dt.datetime) -> None:
    stale = session.scalars(
        select(Payment).where(
            Payment.shopper_id == shopper_id,
            Payment.state == AUTHORIZED,
            Payment.expires_at <= now,
        )
    ).all()
    for payment in stale:
        _release_hold(session, payment, EXPIRED)


def sweep(session: Session, keys: InstanceKeys, now: dt.datetime | None = None) -> dict[str, int]:
    """Expire authorizations and step-up challenges past their time (a challenge's held probe
    is erased). Run by `facepay server payments expire` and now and then by the server."""
    now = now or utcnow()
    expired = session.scalars(
        select(Payment)
        .where(Payment.state.in_((AUTHORIZED, STEP_UP_REQUIRED)), Payment.expires_at <= now)
        .order_by(Payment.id)
        .with_for_update(skip_locked=True)
    ).all()
    counts = {"authorizations": 0, "challenges": 0}
    for payment in expired:
        if payment.state == AUTHORIZED:
            _release_hold(session, payment, EXPIRED)
            audit_payment(session, keys, "payment.expired", payment, actor="server")
            counts["authorizations"] += 1
        else:
            close_challenge(payment)
            decline(payment, "step_up_expired")
            audit_payment(session, keys, "payment.declined", payment, actor="server")
            counts["challenges"] += 1
    return counts


# ---------------------------------------------------------------- refunds


def refund(
    session: Session,
    *,
    payment_id: str,
    amount: int | None,
    operator: str,
    reason: str,
    keys: InstanceKeys,
) -> Answer:
    """An operator gives back all or part of a captured payment: a new transfer from the
    store to the wallet; the charge itself is never edited."""
    payment = session.scalars(
        select(Payment).where(Payment.id == payment_id).with_for_update()
    ).first()
    if payment is None:
        raise PaymentNotFound("no payment with this id")
    if payment.state != CAPTURED:
        raise PaymentConflict(
            f"only a captured payment can be refunded; this one is {payment.state}",
            code="payment_not_captured",
        )
    remaining = payment.captured_amount - payment.refunded_amount
    amount = remaining if amount is None else amount
    if not 0 < amount <= remaining:
        raise AmountNotAllowed(
            f"at most {remaining} is left to refund", code="refund_exceeds_captured"
        )
    assert payment.shopper_id is not None
    wallet = ledger.wallet_of(session, payment.shopper_id, lock=True)
    assert wallet is not None
    store = ledger.store_account(session, payment.store, payment.currency)
    ledger.transfer(
        session,
        debit=store,
        credit=wallet,
        amount=amount,
        kind="refund",
        payment_id=payment.id,
        reference=reason[:64] or None,
    )
    payment.refunded_amount += amount
    session.flush()
    audit_payment(
        session, keys, "payment.refunded", payment, actor=f"operator:{operator}", amount=amount
    )
    return 200, view(payment)


# ---------------------------------------------------------------- a shopper's own limits


class ShopperNotFound(ProblemError):
    status_code = 404
    code = "shopper_not_found"
    title = "No such shopper"


def set_limits(
    session: Session,
    *,
    shopper_id: str,
    per_payment: int | None,
    per_day: int | None,
    operator: str,
    keys: InstanceKeys,
    settings: Settings,
) -> Limits:
    """Set (or, with None, clear) a shopper's own limits, at their request: they apply where
    lower than the server's. Recorded in the audit log."""
    for value in (per_payment, per_day):
        if value is not None and value <= 0:
            raise AmountNotAllowed("a limit is a positive amount", code="limit_not_positive")
    shopper = _live_shopper(session, shopper_id, lock=True)
    shopper.limit_per_payment, shopper.limit_per_day = per_payment, per_day
    session.flush()
    record_event(
        session,
        keys.audit_key,
        "shopper.limits_set",
        subject=shopper_id,
        actor=f"operator:{operator}",
        data={"limit_per_payment": per_payment, "limit_per_day": per_day},
    )
    return Limits.of(shopper, settings)


def limits_of(session: Session, shopper_id: str, settings: Settings) -> Limits:
    return Limits.of(_live_shopper(session, shopper_id), settings)


def _live_shopper(session: Session, shopper_id: str, *, lock: bool = False) -> Shopper:
    shopper = session.get(Shopper, shopper_id, with_for_update=lock or None)
    if shopper is None or shopper.status == "deleted":
        raise ShopperNotFound("no shopper with this id")
    return shopper


# ---------------------------------------------------------------- reading


def get(session: Session, *, kiosk: Kiosk, payment_id: str, tries_allowed: int) -> dict[str, Any]:
    payment = session.get(Payment, payment_id) if _plausible_id(payment_id) else None
    if payment is None or payment.kiosk_id != kiosk.id:
        raise PaymentNotFound("no payment with this id at this kiosk")
    return view(payment, tries_allowed=tries_allowed)


def locked_payment(session: Session, payment_id: str, kiosk: Kiosk) -> Payment:
    payment = None
    if _plausible_id(payment_id):
        payment = session.scalars(
            select(Payment).where(Payment.id == payment_id).with_for_update()
        ).first()
    if payment is None or payment.kiosk_id != kiosk.id:
        raise PaymentNotFound("no payment with this id at this kiosk")
    return payment


def _plausible_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- audit


def audit_attempt(
    session: Session,
    keys: InstanceKeys,
    kiosk: Kiosk,
    payment: Payment,
    decision: Decision,
    *,
    purpose: str,
) -> None:
    """One record per match attempt: its outcome and what became of the payment, no score."""
    record_event(
        session,
        keys.audit_key,
        "match.attempt",
        subject=payment.shopper_id,
        actor=kiosk.id,
        data={
            "purpose": purpose,
            "pack": payment.probe_pack,
            "liveness": payment.probe_liveness,
            "outcome": decision.outcome,
            "reason": decision.reason,
            "payment_id": payment.id,
            "payment_state": payment.state,
            "decline_code": payment.decline_code if payment.state == DECLINED else None,
            "amount": payment.amount,
            "currency": payment.currency,
            "store": payment.store,
        },
    )


def audit_payment(
    session: Session, keys: InstanceKeys, kind: str, payment: Payment, *, actor: str, **extra: Any
) -> None:
    record_event(
        session,
        keys.audit_key,
        kind,
        subject=payment.shopper_id,
        actor=actor,
        data={
            "payment_id": payment.id,
            "payment_state": payment.state,
            "decline_code": payment.decline_code if payment.state == DECLINED else None,
            "amount": payment.amount,
            "captured_amount": payment.captured_amount,
            "refunded_amount": payment.refunded_amount,
            "currency": payment.currency,
            "store": payment.store,
            **extra,
        },
    )
