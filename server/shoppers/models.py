from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, utcnow


class Shopper(Base):
    __tablename__ = "shoppers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    full_name: Mapped[str] = mapped_column(String(200))
    # Shown at the till after a payment: first name and initial, never the full name.
    masked_label: Mapped[str] = mapped_column(String(64))
    email: Mapped[str] = mapped_column(String(254), index=True)
    phone: Mapped[str] = mapped_column(String(32))
    # Keyed hash of the phone's last four digits: narrows the gallery at step-up without
    # keeping the digits in a searchable form.
    phone_last4_hash: Mapped[str] = mapped_column(String(64), index=True)
    # Keyed hash of the whole number (its last ten digits): the full-number step-up's 1:1
    # look-up. Null only for rows enrolled before it existed, until the server fills it in.
    phone_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    # active, suspended, deleted
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_activity_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[dt.datetime | None]
    # The shopper's own payment limits (minor units), set by an operator at their request:
    # they can only lower the server's (FACEPAY_LIMIT_PER_PAYMENT, FACEPAY_LIMIT_PER_DAY).
    limit_per_payment: Mapped[int | None] = mapped_column(BigInteger)
    limit_per_day: Mapped[int | None] = mapped_column(BigInteger)
