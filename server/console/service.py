"""What the console's pages read: pages of the audit log, consents and payments, kiosks, and
shopper look-ups for the privacy officer (by email or id, never by face). Nothing here returns
a template, a score or a key."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.audit.models import AuditRecord
from server.audit.service import record_event
from server.consent.models import Consent
from server.enrollment.models import Enrollment, Template
from server.errors import ProblemError
from server.kiosks.models import Kiosk
from server.payments.models import Payment
from server.privacy import service as privacy
from server.privacy.models import Deletion
from server.privacy.service import ShopperNotFound
from server.shoppers.models import Shopper

PER_PAGE = 100
MAX_FOUND = 50
Row = TypeVar("Row")


@dataclass(frozen=True)
class Page(Generic[Row]):
    items: list[Row]
    number: int
    pages: int
    total: int


@dataclass(frozen=True)
class AuditRow:
    seq: int
    at: dt.datetime
    kind: str
    subject: str | None
    actor: str | None
    data: str


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def page_number(raw: str | None) -> int:
    try:
        number = int(raw or "1")
    except ValueError:
        return 1
    return min(max(number, 1), 10**9)


def _page(session: Session, model: Any, order: Any, number: int) -> Page[Any]:
    total = int(session.scalar(select(func.count()).select_from(model)) or 0)
    pages = max(1, -(-total // PER_PAGE))
    number = min(number, pages)
    items = list(
        session.scalars(
            select(model).order_by(*order).offset((number - 1) * PER_PAGE).limit(PER_PAGE)
        )
    )
    return Page(items, number, pages, total)


def audit_page(session: Session, number: int) -> Page[AuditRow]:
    """Newest first. Who did it and the event's data come from the hashed record itself."""
    page = _page(session, AuditRecord, (AuditRecord.seq.desc(),), number)
    rows = []
    for record in page.items:
        try:
            content = json.loads(record.record)
        except ValueError:
            content = {}
        content = content if isinstance(content, dict) else {}
        data = content.get("data") or {}
        rows.append(
            AuditRow(
                seq=record.seq,
                at=record.at,
                kind=record.kind,
                subject=record.subject,
                actor=str(content["actor"]) if content.get("actor") is not None else None,
                data=json.dumps(data, sort_keys=True, ensure_ascii=False) if data else "",
            )
        )
    return Page(rows, page.number, page.pages, page.total)


def consents_page(session: Session, number: int) -> Page[Consent]:
    return _page(session, Consent, (Consent.recorded_at.desc(), Consent.id), number)


def payments_page(session: Session, number: int) -> Page[Payment]:
    return _page(session, Payment, (Payment.created_at.desc(), Payment.id), number)


def kiosks(session: Session) -> list[Kiosk]:
    return list(session.scalars(select(Kiosk).order_by(Kiosk.created_at, Kiosk.id)))


def check_kiosk_fields(name: str, store: str) -> tuple[str, str]:
    name, store = name.strip(), store.strip()
    # Printable only: PostgreSQL refuses a NUL in text, and no control character belongs here.
    if not all(1 <= len(field) <= 100 and field.isprintable() for field in (name, store)):
        raise ProblemError(
            "a kiosk needs a name and a store, each 1 to 100 printable characters",
            code="kiosk_invalid",
            status=422,
        )
    return name, store


def search_shoppers(
    session: Session, audit_key: bytes, query: str, *, actor: str
) -> tuple[str, list[Shopper]]:
    """`find_shoppers`, on the record: who looked, how, and whom they found; not what they
    typed (an email address)."""
    by, found = find_shoppers(session, query)
    record_event(
        session,
        audit_key,
        "console.shopper_search",
        actor=actor,
        data={"by": by or "unrecognised", "found": [shopper.id for shopper in found]},
    )
    return by, found


def find_shoppers(session: Session, query: str) -> tuple[str, list[Shopper]]:
    """Shoppers whose id or email is exactly `query`: ("id" | "email" | "", matches)."""
    query = query.strip()
    if not query.isprintable():  # no address or id holds a control character (or a NUL,
        return "", []  # which PostgreSQL refuses in a query)
    try:
        shopper_id = str(uuid.UUID(query))
    except ValueError:
        shopper_id = ""
    if shopper_id:
        found = session.get(Shopper, shopper_id)
        return "id", [found] if found else []
    if "@" in query and len(query) <= 254:
        rows = session.scalars(
            select(Shopper)
            .where(Shopper.email == query.lower())
            .order_by(Shopper.created_at)
            .limit(MAX_FOUND)
        )
        return "email", list(rows)
    return "", []


@dataclass(frozen=True)
class ShopperSummary:
    shopper: Shopper
    phone_ending: str
    consents: int
    enrollments: int
    templates_held: int
    payments: int
    deletions: list[Deletion]


def _count(session: Session, model: Any, column: Any, value: str) -> int:
    return int(session.scalar(select(func.count()).select_from(model).where(column == value)) or 0)


def shopper_summary(session: Session, shopper_id: str) -> ShopperSummary | None:
    if not is_uuid(shopper_id):
        return None
    shopper = session.get(Shopper, shopper_id)
    if shopper is None:
        return None
    deletions = session.scalars(
        select(Deletion).where(Deletion.shopper_id == shopper_id).order_by(Deletion.done_at)
    )
    digits = "".join(ch for ch in shopper.phone if ch.isdigit())
    return ShopperSummary(
        shopper=shopper,
        phone_ending=digits[-4:] if len(digits) >= 4 else "",
        consents=_count(session, Consent, Consent.shopper_id, shopper_id),
        enrollments=_count(session, Enrollment, Enrollment.shopper_id, shopper_id),
        templates_held=_count(session, Template, Template.shopper_id, shopper_id),
        payments=_count(session, Payment, Payment.shopper_id, shopper_id),
        deletions=list(deletions),
    )


def view_shopper(
    session: Session, audit_key: bytes, shopper_id: str, *, actor: str
) -> ShopperSummary | None:
    summary = shopper_summary(session, shopper_id)
    if summary is not None:
        record_event(
            session, audit_key, "console.shopper_viewed", subject=shopper_id, actor=actor, data={}
        )
    return summary


def export_shopper(
    session: Session, audit_key: bytes, shopper_id: str, *, actor: str
) -> dict[str, Any]:
    """Everything held about the shopper (server.privacy's export), on the record."""
    if not is_uuid(shopper_id):
        raise ShopperNotFound("no shopper with this id")
    document = privacy.export_shopper(session, shopper_id)
    record_event(session, audit_key, "console.export", subject=shopper_id, actor=actor, data={})
    return document


def deletion(session: Session, request_id: str) -> Deletion | None:
    if not is_uuid(request_id):
        return None
    return session.get(Deletion, request_id)
