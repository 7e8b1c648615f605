"""Guess limits across payments, deletions, workers and replicas: every failed step-up is a
row in the database, counted over the last 24 hours.

- **Per shopper**: after `step_up_failures_per_day` failures counted against a shopper, their
  step-up is locked: even the right face with the right digits is refused (`step_up_locked`)
  until the oldest of those failures is a day old. The shopper is mailed when the lock
  starts, and every failure is audited against them (`step_up.failed`, in their export).
- **Per kiosk**: after `step_up_failures_per_kiosk_day` failures at one kiosk, its step-ups
  are refused the same way until the day has passed (a till used to try many victims).
- **Per face**: the failed probe is kept (sealed) for the day; after
  `step_up_failures_per_day` failures of the same face (a probe at or above the pack's base
  threshold to it), whatever digits each typed, that face's step-ups are refused. When the
  locked face then types digits that name a shopper it matches (a victim's face guessing
  their digits has found them), that shopper is told and the attempts are audited against
  them.

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

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from server.audit.service import record_event
from server.crypto import CryptoError
from server.db import deleted_rows
from server.guesses.models import StepUpFailure
from server.keys import InstanceKeys
from server.kiosks.models import Kiosk
from server.matching.decision import Decision
from server.matching.risk import Rung, RungRisk
from server.matching.service import Gallery
from server.templates import TemplateInvalid, decode_vector, transport_associated_data

WINDOW = dt.timedelta(hours=24)


@dataclass(frozen=True)
class GuessLimits:
    per_shopper: int
    per_kiosk: int


@dataclass(frozen=True)
class FailedProbe:
    """The probe of an attempt as the kiosk sealed it, with what opens it again."""

    pack: str
    liveness: str
    sealed: bytes


# The failed probes a step-up compares its face with: the most recent of the day (opening one
# costs about 0.1 ms).
FACE_ROWS = 200


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
    probe: FailedProbe,
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
            probe_pack=probe.pack,
            probe_liveness=probe.liveness,
            sealed_probe=probe.sealed,
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


def same_face_failures(
    session: Session,
    keys: InstanceKeys,
    probe: npt.NDArray[np.float32],
    *,
    pack: str,
    threshold: float,
    now: dt.datetime,
) -> int:
    """Failed step-ups of the day whose probe is this face (scores stay in here)."""
    rows = session.execute(
        select(
            StepUpFailure.kiosk_id,
            StepUpFailure.purpose,
            StepUpFailure.probe_liveness,
            StepUpFailure.sealed_probe,
        )
        .where(
            StepUpFailure.at > now - WINDOW,
            StepUpFailure.probe_pack == pack,
            StepUpFailure.sealed_probe.is_not(None),
        )
        .order_by(StepUpFailure.at.desc())
        .limit(FACE_ROWS)
    ).all()
    same = 0
    for kiosk_id, purpose, liveness, sealed in rows:
        if sealed is None:
            continue
        aad = transport_associated_data(
            kiosk_id=kiosk_id, pack=pack, purpose=purpose, liveness=liveness or "none"
        )
        try:
            earlier = decode_vector(keys.sealing.open(bytes(sealed), aad), probe.shape[0])
        except (CryptoError, TemplateInvalid):
            continue  # a probe the current keys cannot open counts for nothing
        same += float(np.dot(earlier, probe)) >= threshold
    return same


def tell_found_victim(
    session: Session,
    keys: InstanceKeys,
    *,
    shopper_id: str,
    kiosk: Kiosk,
    purpose: str,
    failures: int,
) -> None:
    """A locked face has typed digits naming a shopper it matches: their face has been tried
    with guessed digits, `failures` times today. Audited against them (the caller mails them
    after commit)."""
    record_event(
        session,
        keys.audit_key,
        "step_up.locked",
        subject=shopper_id,
        actor=kiosk.id,
        data={"why": "face", "purpose": purpose, "store": kiosk.store, "failures": failures},
    )


@dataclass(frozen=True)
class Guarded:
    """A step-up's search within the guess limits: the decision, whether the attempt is
    refused for a lock (then no money moves and nothing is deleted), and the shopper a
    locked face has just been found to be (to mail after the commit)."""

    decision: Decision
    locked: bool
    found: str | None = None


def identify_within_limits(
    session: Session,
    keys: InstanceKeys,
    gallery: Gallery,
    *,
    kiosk: Kiosk,
    pack: str,
    probe: npt.NDArray[np.float32],
    rung: RungRisk,
    candidates: set[str],
    purpose: str,
    limits: GuessLimits,
    now: dt.datetime,
) -> Guarded:
    """The search a step-up makes, and the locks around it, for payments and deletions alike:
    a locked kiosk, or the locked one shopper of a whole number, is refused before any face is
    searched; a locked face is refused (and, when it matched, its owner found); a matched
    shopper who is locked is refused."""
    nobody = Decision("no_match", None, "locked")
    if kiosk_locked(session, kiosk.id, limits, now) or (
        rung.rung is Rung.PHONE and any_locked(session, candidates, limits, now)
    ):
        return Guarded(nobody, locked=True)
    decision = gallery.identify(pack, probe, rung, restrict_to=candidates)
    matched = decision.shopper_id if decision.outcome == "match" else None
    threshold = gallery.base_threshold(pack)
    failures = same_face_failures(session, keys, probe, pack=pack, threshold=threshold, now=now)
    if failures >= limits.per_shopper:
        if matched is not None:  # the face has found its digits: its owner is told
            tell_found_victim(
                session,
                keys,
                shopper_id=matched,
                kiosk=kiosk,
                purpose=purpose,
                failures=failures,
            )
        return Guarded(decision, locked=True, found=matched)
    if matched is not None and shopper_locked(session, matched, limits, now):
        return Guarded(decision, locked=True)
    return Guarded(decision, locked=False)


def purge_before(session: Session, cutoff: dt.datetime) -> int:
    """Failures older than the window count for nothing: removed (the retention purge)."""
    return deleted_rows(session, delete(StepUpFailure).where(StepUpFailure.at < cutoff))
