"""Shopper look-ups that matching and enrollment need, without biometrics."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from server.errors import ProblemError
from server.keys import InstanceKeys
from server.matching.risk import Rung
from server.shoppers.models import Shopper

# A number's national part: its last ten digits (the pilot's numbering plan, where a country
# code may or may not be typed in front). Shorter numbers are taken whole.
NATIONAL_DIGITS = 10


def phone_digits(phone: str) -> str:
    """The digits of a typed phone number (spaces, dashes, dots, parentheses, + dropped)."""
    return re.sub(r"\D", "", phone)


def national_number(phone: str) -> str:
    """The form a whole phone number is compared in: its last ten digits."""
    return phone_digits(phone)[-NATIONAL_DIGITS:]


def with_phone_ending(session: Session, keys: InstanceKeys, last4: str) -> set[str]:
    """Active shoppers whose phone ends in these four digits: the step-up gallery."""
    if len(last4) != 4 or not last4.isdigit():
        raise ValueError("step-up needs exactly four digits")
    rows = session.scalars(
        select(Shopper.id).where(
            Shopper.phone_last4_hash == keys.phone_last4_hash(last4), Shopper.status == "active"
        )
    )
    return set(rows)


def with_phone(session: Session, keys: InstanceKeys, phone: str) -> set[str]:
    """The active shopper with this whole phone number (at most one: enrollment refuses a
    number already in use), as a one-shopper step-up gallery."""
    number = national_number(phone)
    if len(number) < 7:
        raise ValueError("a phone number has at least seven digits")
    rows = session.scalars(
        select(Shopper.id).where(
            Shopper.phone_hash == keys.phone_hash(number), Shopper.status == "active"
        )
    )
    return set(rows)


def claimed_by(session: Session, keys: InstanceKeys, *, email: str, phone: str) -> bool:
    """Whether a shopper not deleted already uses this email address or phone number."""
    found = session.scalar(
        select(Shopper.id)
        .where(
            Shopper.status != "deleted",
            or_(
                Shopper.email == email.strip().lower(),
                Shopper.phone_hash == keys.phone_hash(national_number(phone)),
            ),
        )
        .limit(1)
    )
    return found is not None


def hash_missing_phones(session: Session, keys: InstanceKeys) -> int:
    """Fill in the phone hash of shoppers enrolled before it existed; how many were."""
    rows = session.execute(
        select(Shopper.id, Shopper.phone).where(
            Shopper.phone_hash.is_(None), Shopper.status != "deleted"
        )
    ).all()
    for shopper_id, phone in rows:
        session.execute(
            update(Shopper)
            .where(Shopper.id == shopper_id)
            .values(phone_hash=keys.phone_hash(national_number(phone)))
        )
    return len(rows)


class StepUpAnswerMismatch(ProblemError):
    status_code = 422
    code = "step_up_answer_mismatch"
    title = "The answer is not what the step-up asked for"


def narrowed(
    session: Session, keys: InstanceKeys, asked: Rung, answer: Mapping[str, Any]
) -> set[str]:
    """The shoppers a step-up answer narrows the search to: those whose phone ends in the
    four digits (`phone_last4`), or the one with the whole number (`phone`). The answer must
    be what was asked: four digits where the whole number was asked would weaken the rung."""
    if asked is Rung.PHONE and "phone" in answer:
        return with_phone(session, keys, answer["phone"])
    if asked is Rung.PHONE_LAST4 and "phone_last4" in answer:
        return with_phone_ending(session, keys, answer["phone_last4"])
    wanted = "the whole phone number" if asked is Rung.PHONE else "the phone's last four digits"
    raise StepUpAnswerMismatch(f"this step-up asks for {wanted} ({asked.value})")
