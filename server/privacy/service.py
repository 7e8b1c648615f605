"""Deletion is withdrawal of consent: crypto-shred the shopper's data key, drop their
templates from every index and from the database, and keep a tombstone and an audit record
with no biometric data. Payments and ledger entries stay (the law asks for them) but no
longer lead to any biometric."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from server.audit.service import record_event
from server.consent.models import Consent
from server.crypto import KeyStoreError
from server.db import utcnow
from server.enrollment.models import Template
from server.errors import ProblemError
from server.keys import InstanceKeys
from server.matching.service import record_change
from server.privacy.models import Deletion
from server.shoppers.models import Shopper

logger = logging.getLogger(__name__)

DELETED = "deleted"


class ShopperNotFound(ProblemError):
    status_code = 404
    code = "shopper_not_found"
    title = "No such shopper"


@dataclass(frozen=True)
class Receipt:
    request_id: str
    done_at: str
    templates_deleted: int

    def as_dict(self) -> dict[str, object]:
        return {
            "request_id": self.request_id,
            "done_at": self.done_at,
            "templates_deleted": self.templates_deleted,
        }


def delete_shopper(
    session: Session, *, shopper_id: str, keys: InstanceKeys, via: str, actor: str
) -> Receipt:
    """Everything in the database, in the caller's transaction; the caller then commits and
    calls `shred_key` (after the commit, so that a failed transaction never leaves an active
    shopper without a key) and applies the gallery change locally."""
    shopper = session.scalars(
        select(Shopper).where(Shopper.id == shopper_id).with_for_update()
    ).first()
    if shopper is None or shopper.status == DELETED:
        raise ShopperNotFound("no enrolled shopper with this id")
    packs = set(session.scalars(select(Template.pack).where(Template.shopper_id == shopper_id)))
    count = session.scalar(
        select(func.count()).select_from(Template).where(Template.shopper_id == shopper_id)
    )
    session.execute(delete(Template).where(Template.shopper_id == shopper_id))
    now = utcnow()
    session.execute(
        update(Consent)
        .where(Consent.shopper_id == shopper_id, Consent.withdrawn_at.is_(None))
        .values(withdrawn_at=now)
    )
    # The tombstone: the id that payments and ledger entries name, without contact details.
    shopper.status = DELETED
    shopper.deleted_at = now
    shopper.email = ""
    shopper.phone = ""
    shopper.phone_last4_hash = ""
    for pack in sorted(packs):
        record_change(session, kind="remove_shopper", shopper_id=shopper_id, pack=pack)
    receipt = Deletion(
        id=str(uuid.uuid4()),
        shopper_id=shopper_id,
        via=via,
        actor=actor,
        templates_deleted=int(count or 0),
        requested_at=now,
        done_at=now,
    )
    session.add(receipt)
    session.flush()
    record_event(
        session,
        keys.audit_key,
        "shopper.deleted",
        subject=shopper_id,
        actor=actor,
        data={
            "via": via,
            "deletion_id": receipt.id,
            "template_count": receipt.templates_deleted,
        },
    )
    return Receipt(receipt.id, now.isoformat(), receipt.templates_deleted)


def shred_key(keys: InstanceKeys, shopper_id: str) -> bool:
    """Destroy the shopper's data key: every copy of their templates, backups included, can no
    longer be opened. A failure is logged; the retention purge destroys keys left behind."""
    try:
        return keys.key_store.destroy(shopper_id)
    except KeyStoreError as exc:
        logger.error("deletion: the data key could not be destroyed yet: %s", type(exc).__name__)
        return False
