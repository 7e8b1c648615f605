from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, utcnow


class Kiosk(Base):
    __tablename__ = "kiosks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    store: Mapped[str] = mapped_column(String(100), index=True)
    # pending (waiting for its pairing code), active, revoked
    status: Mapped[str] = mapped_column(String(16), default="pending")
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True)
    pairing_code_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    pairing_expires_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    paired_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class RequestNonce(Base):
    """Nonces seen inside the signature window: a second use of one is a replay."""

    __tablename__ = "request_nonces"

    kiosk_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
