from __future__ import annotations

import datetime as dt

from sqlalchemy import Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, utcnow


class IdempotencyKey(Base):
    """A client-made key and the response it earned, replayed for a retry of the same request.

    `owner` names the request that holds the key while it runs; a retry may take the key over
    once `lease_until` has passed (its owner crashed), and the original request can then no
    longer record its result, so the work is done at most once.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("scope", "key", name="uq_idempotency_keys_scope_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(80))  # whose key: "kiosk:<id>", "operator:<name>"
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of method, path, parameters
    state: Mapped[str] = mapped_column(String(16))  # running, done
    owner: Mapped[str] = mapped_column(String(36))
    lease_until: Mapped[dt.datetime]
    response_status: Mapped[int | None]
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    completed_at: Mapped[dt.datetime | None]
