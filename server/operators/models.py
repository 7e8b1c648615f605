from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, utcnow

ROLES = ("auditor", "privacy_officer", "admin")


class Operator(Base):
    """A person who signs in to the console, with one role (see ROLES)."""

    __tablename__ = "operators"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str] = mapped_column(String(255))  # argon2id, PHC string
    failed_logins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[dt.datetime | None]
    # sha256 of the open console session's token (in the signed cookie): signing out or in
    # elsewhere replaces it, so a copied cookie stops working at once.
    session_token_hash: Mapped[str | None] = mapped_column(String(64))
    disabled_at: Mapped[dt.datetime | None]
