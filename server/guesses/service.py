"""Guess limits across payments, deletions, workers and replicas: every failed step-up is a
row in the database, counted over the last 24 hours.

- **Per shopper**: after `step_up_failures_per_day` failures counted against a shopper, their
  step-up is locked: even the right face with the right digits is refused (`step_up_locked`)
  until the oldest of those failures is a day old. The shopper is mailed when the lock
  starts, and every failure is audited against them (`step_up.failed`, in their export).
- **Per kiosk**: after `step_up_failures_per_kiosk_day` failures at one kiosk, its step-ups
  are refused the same way until the day has passed (a till used to try many victims).

What a failure is counted against: the one shopper with the typed number; among the shoppers
with the typed last four digits, the closest face (the one the attempt most resembles, so
random digits cannot lock strangers out); nobody when the digits named nobody (the kiosk's
count still grows).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from server.audit.service import record_event
from server.db import deleted_rows
from server.guesses.models import StepUpFailure
from server.keys import InstanceKeys
from server.kiosks.models import Kiosk

WINDOW = dt.timedelta(hours=24)


@dataclass(frozen=True)
class GuessLimits:
    per_shopper: int
    per_kiosk: int


def _failures_since(
    session: Session, column: InstrumentedAttribute[Any], value: str, since: dt.datetime
) -> int:
    found = session.scalar(
        select(func.count())
        .select_from(StepUpFailure)
        .where(column == value, StepUpFailure.at > since)
    )
    return int(found or 0)


def shopper_locked(
    session: Session, shopper_id: str, limits: GuessLimits, now: dt.datetime
) -> bool:
    return (
        _failures_since(session, StepUpFailure.shopper_id, shopper_id, now - WINDOW)
        >= limits.per_shopper
    )


def any_locked(
    session: Session, shopper_ids: Collection[str], limits: GuessLimits, now: dt.datetime
) -> bool:
    return any(shopper_locked(session, shopper_id, limits, now) for shopper_id in shopper_ids)


def kiosk_locked(session: Session, kiosk_id: str, limits: GuessLimits, now: dt.datetime) -> bool:
    return (
        _failures_since(session, StepUpFailure.kiosk_id, kiosk_id, now - WINDOW) >= limits.per_kiosk
    )


def record_failure(
    session: Session,
    keys: InstanceKeys,
    *,
    kiosk: Kiosk,
    shopper_id: str | None,
    purpose: str,
    limits: GuessLimits,
    now: dt.datetime,
    payment_id: str | None = None,
) -> bool:
    """Count a failed step-up and audit it against its candidate; whether this failure is
    the one that locks the candidate's step-up (then the caller mails them, after commit)."""
    session.add(
        StepUpFailure(
            id=str(uuid.uuid4()),
            at=now,
            kiosk_id=kiosk.id,
            store=kiosk.store,
            shopper_id=shopper_id,
            purpose=purpose,
        )
    )
    session.flush()
    record_event(
        session,
        keys.audit_key,
        "step_up.failed",
        subject=shopper_id,
        actor=kiosk.id,
        data={"purpose": purpose, "store": kiosk.store, "payment_id": payment_id},
    )
    if shopper_id is None:
        return False
    count = _failures_since(session, StepUpFailure.shopper_id, shopper_id, now - WINDOW)
    if count == limits.per_shopper:
        record_event(
            session,
            keys.audit_key,
            "step_up.locked",
            subject=shopper_id,
            actor=kiosk.id,
            data={"failures": count, "store": kiosk.store},
        )
        return True
    return False


def purge_before(session: Session, cutoff: dt.datetime) -> int:
    """Failures older than the window count for nothing: removed (the retention purge)."""
    return deleted_rows(session, delete(StepUpFailure).where(StepUpFailure.at < cutoff))
