from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, utcnow


class Deletion(Base):
    """A shopper's deletion, done: the receipt shown to them (request id and time done).

    It names the shopper's id only, which after deletion is a tombstone: no biometric, no
    contact details."""

    __tablename__ = "deletions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    shopper_id: Mapped[str] = mapped_column(ForeignKey("shoppers.id"), index=True)
    via: Mapped[str] = mapped_column(String(16))  # kiosk, web, officer
    actor: Mapped[str] = mapped_column(String(100))  # kiosk id, "shopper", officer name
    templates_deleted: Mapped[int]
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    done_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class OneTimeCode(Base):
    """A code sent to a shopper's email to confirm a deletion or an export on the web.

    Only keyed hashes are kept: of the email (to find the request) and of the code."""

    __tablename__ = "one_time_codes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(String(16))  # delete, export
    code_hash: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]
