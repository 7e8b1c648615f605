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
