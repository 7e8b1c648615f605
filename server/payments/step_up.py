"""`POST /v1/payments/{id}/step-up`: the face again, among the shoppers the answer narrows to,
at the threshold the risk rule sets for the rung asked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from server.config import Settings
from server.db import utcnow
from server.enrollment.service import open_templates
from server.guesses import service as guesses
from server.keys import InstanceKeys
from server.kiosks.models import Kiosk
from server.matching.risk import Rung
from server.matching.service import Gallery
from server.payments.models import STEP_UP_REQUIRED
from server.payments.service import (
    Answer,
    PaymentConflict,
    audit_attempt,
    audit_payment,
    close_challenge,
    decline,
    locked_payment,
    settle,
    view,
)
from server.shoppers import service as shoppers
from server.templates import b64encode


def step_up(
    session: Session,
    *,
    kiosk: Kiosk,
    payment_id: str,
    body: Mapping[str, Any],
    keys: InstanceKeys,
    gallery: Gallery,
    settings: Settings,
    locked_now: list[str] | None = None,
) -> Answer:
    """Search again among the shoppers the answer names (the phone's last four digits, or the
    whole number: what the challenge asked), at that rung's threshold for today's gallery
    size; `step_up_tries` wrong answers decline the payment.

    Guess limits (`server.guesses`): a kiosk or a shopper past their failures of the day is
    refused with `step_up_locked`, even with the right face and digits; every failure is
    counted against its candidate, and the shoppers it locks are appended to `locked_now`
    (the route mails them once the transaction is committed)."""
    now = utcnow()
    limits = settings.guess_limits
    payment = locked_payment(session, payment_id, kiosk)
    if payment.state != STEP_UP_REQUIRED:
        raise PaymentConflict(f"the payment is {payment.state}", code="challenge_closed")
    if body["challenge_id"] != payment.challenge_id:
        raise PaymentConflict("this is not the payment's open challenge", code="challenge_mismatch")
    if payment.expires_at is not None and payment.expires_at <= now:
        close_challenge(payment)
        decline(payment, "step_up_expired")
        audit_payment(session, keys, "payment.declined", payment, actor=kiosk.id)
        return 200, view(payment)
    assert payment.sealed_probe is not None and payment.probe_pack is not None
    asked = Rung(payment.step_up_ask or Rung.PHONE_LAST4.value)
    candidates = shoppers.narrowed(session, keys, asked, body)
    _, _, vectors = open_templates(
        [
            {
                "pack": payment.probe_pack,
                "liveness": payment.probe_liveness or "none",
                "sealed": b64encode(payment.sealed_probe),
            }
        ],
        kiosk_id=kiosk.id,
        purpose="pay",
        keys=keys,
        gallery=gallery,
        liveness_required=settings.liveness_required,
    )
    pack = payment.probe_pack
    guarded = guesses.identify_within_limits(
        session,
        keys,
        gallery,
        kiosk=kiosk,
        pack=pack,
        probe=vectors[0],
        rung=gallery.at_rung(pack, asked),  # the rung asked, at today's size
        candidates=candidates,
        purpose="pay",
        limits=limits,
        now=now,
    )
    if guarded.found is not None and locked_now is not None:
        locked_now.append(guarded.found)
    if guarded.locked:
        return _locked_out(session, keys, kiosk, payment)
    decision = guarded.decision
    payment.step_up_tries += 1
    label, balance = None, None
    if decision.outcome == "match":
        assert decision.shopper_id is not None
        close_challenge(payment)
        payment.stepped_up = True
        label, balance = settle(session, payment, decision.shopper_id, settings, now)
    else:
        locks = guesses.record_failure(
            session,
            keys,
            kiosk=kiosk,
            shopper_id=decision.candidate,
            purpose="pay",
            limits=limits,
            now=now,
            probe=guesses.FailedProbe(
                pack, payment.probe_liveness or "none", bytes(payment.sealed_probe)
            ),
            payment_id=payment.id,
        )
        if locks and locked_now is not None and decision.candidate is not None:
            locked_now.append(decision.candidate)
        if payment.step_up_tries >= settings.step_up_tries:
            close_challenge(payment)
            decline(payment, "step_up_failed")
    session.flush()
    audit_attempt(session, keys, kiosk, payment, decision, purpose="pay_step_up")
    return 200, view(payment, tries_allowed=settings.step_up_tries, label=label, balance=balance)


def _locked_out(session: Session, keys: InstanceKeys, kiosk: Kiosk, payment: Any) -> Answer:
    """Refuse a step-up past the guess limits: the challenge ends, the probe is erased."""
    close_challenge(payment)
    decline(payment, "step_up_locked")
    session.flush()
    audit_payment(session, keys, "payment.declined", payment, actor=kiosk.id)
    return 200, view(payment)
