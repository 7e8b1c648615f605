"""The retention purge: nothing is kept longer than the published policy says.

`facepay server purge` (daily, from a systemd timer or cron) deletes every shopper with no
activity for `FACEPAY_RETENTION_DAYS` exactly as a deletion request would (templates, consent,
data key; a tombstone and an audit record stay), and clears pending data past its limits:
expired authorizations and step-up challenges (their held probes), used or expired one-time
codes and the development mails that carried them, idempotency keys and request nonces past
their time, and data keys left in the key store without a living shopper. After a database is
restored from a backup older than some deletions, it finishes those deletions: shoppers whose
data key is gone.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from server.audit.service import record_event
from server.config import Settings
from server.db import deleted_rows, transaction, utcnow
from server.guesses import service as guesses
from server.idempotency import service as idempotency
from server.keys import InstanceKeys
from server.kiosks.models import RequestNonce
from server.payments import service as payments
from server.privacy.models import OneTimeCode
from server.privacy.service import DELETED, delete_shopper, shred_key
from server.shoppers.models import Shopper

logger = logging.getLogger(__name__)

# Inactive shoppers are deleted this many to a transaction, so that a large purge neither
# holds locks for long nor loses its work to one failure.
BATCH = 200
# A data key is written just before its enrollment commits; a key is only called orphaned
# when its shopper row is still missing this long after the key was seen.
ORPHAN_GRACE_S = 5.0
CODES_KEPT = dt.timedelta(days=1)


class PurgeRefused(RuntimeError):
    """The purge will not run as asked; the message says why."""


@dataclass
class PurgeReport:
    cutoff: str
    retention_days: int
    inactive_shoppers: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "cutoff": self.cutoff,
            "retention_days": self.retention_days,
            "dry_run": self.dry_run,
            "shoppers_deleted": len(self.inactive_shoppers),
            **self.counts,
        }


def inactive_shoppers(session: Session, cutoff: dt.datetime) -> list[str]:
    """Shoppers not deleted yet whose last activity (enrollment or approved payment) is older
    than the cutoff."""
    return list(
        session.scalars(
            select(Shopper.id)
            .where(Shopper.status != DELETED, Shopper.last_activity_at < cutoff)
            .order_by(Shopper.id)
        )
    )


def purge(
    sessions: sessionmaker[Session],
    keys: InstanceKeys,
    settings: Settings,
    *,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    orphan_grace_s: float = ORPHAN_GRACE_S,
    finish_deletions: bool = False,
) -> PurgeReport:
    """`finish_deletions`: also delete the shoppers whose data key is gone (a database restored
    from a backup older than their deletion). Never by default: with a misplaced or wrong key
    store every shopper looks like that, so an operator asks for it after checking."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=settings.retention_days)
    report = PurgeReport(cutoff.isoformat(), settings.retention_days, dry_run=dry_run)
    held = set(keys.key_store.shopper_ids())
    with sessions() as session:
        keyless = keyless_shoppers(session, held)
        finishing = set(keyless) if finish_deletions else set()
        inactive = [s for s in inactive_shoppers(session, cutoff) if s not in finishing]
    report.counts["shoppers_without_key"] = len(keyless)
    if finish_deletions and keyless and not held:
        raise PurgeRefused(
            "the key store holds no key at all: check FACEPAY_KEY_STORE before finishing "
            "deletions (every shopper would be deleted)"
        )
    if dry_run:
        report.inactive_shoppers = inactive
        report.counts["deletions_finished"] = len(finishing)
        return report

    _delete_in_batches(sessions, keys, sorted(finishing), via="key_destroyed")
    report.counts["deletions_finished"] = len(finishing)
    _delete_in_batches(sessions, keys, inactive, via="retention")
    report.inactive_shoppers = inactive

    with transaction(sessions) as session:
        swept = payments.sweep(session, keys, now)
        report.counts["authorizations_expired"] = swept["authorizations"]
        report.counts["challenges_expired"] = swept["challenges"]
        report.counts["idempotency_keys"] = idempotency.prune(
            session, keep_hours=settings.idempotency_ttl_h
        )
        # Kept a day after they end: the web pages count a day's codes and wrong guesses per
        # address, and forgetting them sooner would reset those limits.
        report.counts["one_time_codes"] = deleted_rows(
            session,
            delete(OneTimeCode).where(
                or_(OneTimeCode.expires_at <= now, OneTimeCode.used_at.is_not(None)),
                OneTimeCode.created_at < now - CODES_KEPT,
            ),
        )
        nonce_cutoff = now - dt.timedelta(seconds=2 * settings.signature_window_s)
        report.counts["request_nonces"] = deleted_rows(
            session, delete(RequestNonce).where(RequestNonce.seen_at < nonce_cutoff)
        )
        # Failed step-ups count for a day (the guess limits); past that they are kept only in
        # the audit chain.
        report.counts["step_up_failures"] = guesses.purge_before(session, now - guesses.WINDOW)
    report.counts["outbox_mails"] = _prune_outbox(settings, now)
    report.counts["keys_destroyed"] = _destroy_stray_keys(sessions, keys, orphan_grace_s)

    with transaction(sessions) as session:
        record_event(
            session, keys.audit_key, "retention.purge", actor="purge", data=report.as_dict()
        )
    logger.info("purge: %s", report.as_dict())
    return report


def keyless_shoppers(session: Session, held: set[str]) -> list[str]:
    """Shoppers not deleted whose data key is not among `held` (the key store's): usually a
    database restored from a backup taken before their deletion, whose templates cannot be
    opened any more. (A new enrollment writes its key before it commits, so a committed
    shopper without a key is never one still being enrolled.)"""
    return [
        shopper_id
        for shopper_id in session.scalars(
            select(Shopper.id).where(Shopper.status != DELETED).order_by(Shopper.id)
        )
        if shopper_id not in held
    ]


def _delete_in_batches(
    sessions: sessionmaker[Session], keys: InstanceKeys, shopper_ids: list[str], *, via: str
) -> None:
    for start in range(0, len(shopper_ids), BATCH):
        batch = shopper_ids[start : start + BATCH]
        with transaction(sessions) as session:
            for shopper_id in batch:
                delete_shopper(session, shopper_id=shopper_id, keys=keys, via=via, actor="purge")
        for shopper_id in batch:  # after the commit, as for any deletion
            shred_key(keys, shopper_id)


def _prune_outbox(settings: Settings, now: dt.datetime) -> int:
    """Development mails carry one-time codes: none outlives its code."""
    outbox = Path(settings.instance) / "outbox"
    if not outbox.is_dir():
        return 0
    limit = now.timestamp() - settings.code_ttl_s
    removed = 0
    for mail in outbox.glob("*.eml"):
        if mail.stat().st_mtime < limit:
            mail.unlink(missing_ok=True)
            removed += 1
    return removed


def _destroy_stray_keys(sessions: sessionmaker[Session], keys: InstanceKeys, grace_s: float) -> int:
    """Keys of deleted shoppers whose shredding failed at the time, and keys whose enrollment
    never committed: no living shopper, so nothing may be readable with them."""
    held = set(keys.key_store.shopper_ids())
    stray = held - _living(sessions, held)
    if stray and grace_s > 0:
        time.sleep(grace_s)
        stray -= _living(sessions, stray)
    return sum(1 for shopper_id in sorted(stray) if shred_key(keys, shopper_id))


def _living(sessions: sessionmaker[Session], shopper_ids: set[str]) -> set[str]:
    living: set[str] = set()
    ids = sorted(shopper_ids)
    with sessions() as session:
        for start in range(0, len(ids), 500):
            living.update(
                session.scalars(
                    select(Shopper.id).where(
                        Shopper.id.in_(ids[start : start + 500]), Shopper.status != DELETED
                    )
                )
            )
    return living
