"""Deletion is withdrawal of consent: crypto-shred the shopper's data key, drop their
templates from every index and from the database, and keep a tombstone and an audit record
with no biometric data. Payments and ledger entries stay (the law asks for them) but no
longer lead to any biometric."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from server.audit.models import AuditRecord
from server.audit.service import record_event
from server.consent.models import Consent, PolicyText, PolicyVersion
from server.crypto import KeyNotFoundError, KeyStoreError
from server.db import utcnow
from server.enrollment.models import Enrollment, Template
from server.errors import ProblemError, Unavailable
from server.keys import InstanceKeys
from server.ledger.models import Account, Transfer
from server.matching.service import record_change
from server.payments.models import Payment
from server.privacy.models import Deletion
from server.shoppers.models import Shopper

if TYPE_CHECKING:
    from server.extensions import Services

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
    shopper without a key) and applies the gallery change locally.

    Refused with 503 (`Unavailable`, nothing changed) while the key store cannot be used: the
    receipt says the data is gone, which needs the data key destroyed, so the deletion waits
    for the store rather than leaving the key behind in silence."""
    shopper = session.scalars(
        select(Shopper).where(Shopper.id == shopper_id).with_for_update()
    ).first()
    if shopper is None or shopper.status == DELETED:
        raise ShopperNotFound("no enrolled shopper with this id")
    _check_key_store(keys, shopper_id)
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
    # The tombstone: the id that payments and ledger entries name, without name or contact
    # details. The consent record keeps the name typed as signature: it is the evidence that
    # consent was given, and when it was withdrawn.
    shopper.status = DELETED
    shopper.deleted_at = now
    shopper.full_name = ""
    shopper.masked_label = ""
    shopper.email = ""
    shopper.phone = ""
    shopper.phone_last4_hash = ""
    shopper.phone_hash = None
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


def _check_key_store(keys: InstanceKeys, shopper_id: str) -> None:
    """The key store answers about this shopper's key (having none is an answer: a database
    restored from a backup, which the purge finishes); if it cannot tell, refuse."""
    try:
        keys.key_store.get(shopper_id)
    except KeyNotFoundError:
        return
    except KeyStoreError as exc:
        logger.error("deletion refused: the key store cannot be used: %s", type(exc).__name__)
        raise Unavailable(
            "the shopper key store cannot be used; nothing was deleted, try again",
            code="key_store_unavailable",
            retry_after_s=5,
        ) from exc


def shred_key(keys: InstanceKeys, shopper_id: str) -> bool:
    """Destroy the shopper's data key: every copy of their templates, backups included, can no
    longer be opened. A failure is logged; the retention purge destroys keys left behind."""
    try:
        return keys.key_store.destroy(shopper_id)
    except KeyStoreError as exc:
        logger.error("deletion: the data key could not be destroyed yet: %s", type(exc).__name__)
        return False


def finish_deletions(svc: Services, shopper_ids: Iterable[str]) -> None:
    """After the deletion's transaction committed: destroy each data key and drop the shopper
    from this process's index at once (other processes follow the change feed)."""
    for shopper_id in shopper_ids:
        shred_key(svc.keys, shopper_id)
        with svc.sessions() as session:
            for pack in svc.gallery.packs:
                svc.gallery.apply_local(session, "remove_shopper", shopper_id, pack)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def export_shopper(session: Session, shopper_id: str) -> dict[str, Any]:
    """Everything held about one shopper, as JSON-ready data: profile, consents with the notice
    text agreed to, enrollments (never template bytes), payments, ledger transfers of their
    wallet, deletion receipts and the audit events about them. Nothing about anyone else."""
    shopper = session.get(Shopper, shopper_id)
    if shopper is None:
        raise ShopperNotFound("no shopper with this id")
    consents = []
    for consent in session.scalars(
        select(Consent).where(Consent.shopper_id == shopper_id).order_by(Consent.signed_at)
    ):
        version = session.get(PolicyVersion, consent.policy_version)
        text = session.scalar(
            select(PolicyText.text).where(
                PolicyText.version == consent.policy_version, PolicyText.locale == consent.locale
            )
        )
        consents.append(
            {
                "id": consent.id,
                "policy_version": consent.policy_version,
                "locale": consent.locale,
                "notice_sha256": consent.text_sha256,
                "notice_text": text,
                "purpose": version.purpose if version else None,
                "retention_days": version.retention_days if version else None,
                "signature_name": consent.signature_name,
                "signed_at": _iso(consent.signed_at),
                "kiosk_id": consent.kiosk_id,
                "withdrawn_at": _iso(consent.withdrawn_at),
            }
        )
    enrollments = [
        {
            "id": row.id,
            "consent_id": row.consent_id,
            "kiosk_id": row.kiosk_id,
            "pack": row.pack,
            "template_count": row.template_count,
            "created_at": _iso(row.created_at),
        }
        for row in session.scalars(
            select(Enrollment)
            .where(Enrollment.shopper_id == shopper_id)
            .order_by(Enrollment.created_at)
        )
    ]
    templates_held = session.scalar(
        select(func.count()).select_from(Template).where(Template.shopper_id == shopper_id)
    )
    payments = [
        {
            "id": row.id,
            "store": row.store,
            "kiosk_id": row.kiosk_id,
            "amount": row.amount,
            "currency": row.currency,
            "state": row.state,
            "decline_code": row.decline_code,
            "captured_amount": row.captured_amount,
            "refunded_amount": row.refunded_amount,
            "stepped_up": row.stepped_up,
            "created_at": _iso(row.created_at),
        }
        for row in session.scalars(
            select(Payment).where(Payment.shopper_id == shopper_id).order_by(Payment.created_at)
        )
    ]
    wallets = list(
        session.scalars(
            select(Account).where(Account.kind == "wallet", Account.owner == shopper_id)
        )
    )
    wallet_ids = [wallet.id for wallet in wallets]
    transfers = [
        {
            "id": row.id,
            "kind": row.kind,
            "direction": "debit" if row.debit_account in wallet_ids else "credit",
            "amount": row.amount,
            "currency": row.currency,
            "payment_id": row.payment_id,
            "created_at": _iso(row.created_at),
        }
        for row in session.scalars(
            select(Transfer)
            .where(
                (Transfer.debit_account.in_(wallet_ids)) | (Transfer.credit_account.in_(wallet_ids))
            )
            .order_by(Transfer.created_at)
        )
    ]
    deletions = [
        {"request_id": row.id, "via": row.via, "done_at": _iso(row.done_at)}
        for row in session.scalars(select(Deletion).where(Deletion.shopper_id == shopper_id))
    ]
    audit = [
        json.loads(row.record)
        for row in session.scalars(
            select(AuditRecord).where(AuditRecord.subject == shopper_id).order_by(AuditRecord.seq)
        )
    ]
    return {
        "shopper": {
            "id": shopper.id,
            "full_name": shopper.full_name,
            "email": shopper.email,
            "phone": shopper.phone,
            "status": shopper.status,
            "created_at": _iso(shopper.created_at),
            "last_activity_at": _iso(shopper.last_activity_at),
            "deleted_at": _iso(shopper.deleted_at),
            "own_limit_per_payment": shopper.limit_per_payment,
            "own_limit_per_day": shopper.limit_per_day,
        },
        "consents": consents,
        "enrollments": enrollments,
        "templates_held": int(templates_held or 0),
        "payments": payments,
        "wallets": [
            {
                "id": wallet.id,
                "currency": wallet.currency,
                "balance": wallet.credits_posted - wallet.debits_posted,
                "held": wallet.debits_held,
            }
            for wallet in wallets
        ],
        "transfers": transfers,
        "deletions": deletions,
        "audit_events": audit,
    }
