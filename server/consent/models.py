from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, utcnow


class PolicyVersion(Base):
    """A published version of the consent notice; its texts (one per locale) never change."""

    __tablename__ = "policy_versions"

    version: Mapped[int] = mapped_column(primary_key=True)
    purpose: Mapped[str] = mapped_column(Text)
    retention_days: Mapped[int]
    effective_at: Mapped[dt.datetime]
    published_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PolicyText(Base):
    __tablename__ = "policy_texts"
    __table_args__ = (UniqueConstraint("version", "locale"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(ForeignKey("policy_versions.version"))
    locale: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))


class Consent(Base):
    """What a shopper agreed to, when, where, and the name they typed as signature."""

    __tablename__ = "consents"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    shopper_id: Mapped[str] = mapped_column(ForeignKey("shoppers.id"), index=True)
    policy_version: Mapped[int] = mapped_column(ForeignKey("policy_versions.version"))
    locale: Mapped[str] = mapped_column(String(16))
    text_sha256: Mapped[str] = mapped_column(String(64))
    signature_name: Mapped[str] = mapped_column(String(200))
    signed_at: Mapped[dt.datetime]
    kiosk_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"))
    recorded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    withdrawn_at: Mapped[dt.datetime | None]
