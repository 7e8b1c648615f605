from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, utcnow


class Template(Base):
    """One encrypted face template: AES-256-GCM under the shopper's data key, bound to this row."""

    __tablename__ = "templates"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    shopper_id: Mapped[str] = mapped_column(ForeignKey("shoppers.id"), index=True)
    pack: Mapped[str] = mapped_column(String(80), index=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    liveness: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Enrollment(Base):
    """When, where and with which pack a shopper enrolled (no template bytes)."""

    __tablename__ = "enrollments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    shopper_id: Mapped[str] = mapped_column(ForeignKey("shoppers.id"), index=True)
    consent_id: Mapped[str] = mapped_column(ForeignKey("consents.id"))
    kiosk_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"))
    pack: Mapped[str] = mapped_column(String(80))
    template_count: Mapped[int]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
