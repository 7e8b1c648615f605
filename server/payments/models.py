from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, utcnow

# Lifecycle states of a payment.
STEP_UP_REQUIRED = "step_up_required"
DECLINED = "declined"
AUTHORIZED = "authorized"
CAPTURED = "captured"
VOIDED = "voided"
EXPIRED = "expired"


class Payment(Base):
    """One payment attempt at a kiosk, whatever its outcome; its money moves only as ledger
    transfers. While a step-up challenge is open the sealed probe is held here, exactly as the
    kiosk sent it (sealed to the server's key), and erased when the challenge ends."""

    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("amount > 0", name="positive_amount"),
        CheckConstraint(
            "captured_amount >= 0 AND captured_amount <= amount", name="captured_within_amount"
        ),
        CheckConstraint(
            "refunded_amount >= 0 AND refunded_amount <= captured_amount",
            name="refunded_within_captured",
        ),
        Index("ix_payments_shopper_created", "shopper_id", "created_at"),
        Index("ix_payments_state_expiry", "state", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kiosk_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"), index=True)
    store: Mapped[str] = mapped_column(String(100))
    amount: Mapped[int] = mapped_column(BigInteger)  # minor units
    currency: Mapped[str] = mapped_column(String(3))
    capture_method: Mapped[str] = mapped_column(String(16))  # automatic, manual
    state: Mapped[str] = mapped_column(String(20))
    decline_code: Mapped[str | None] = mapped_column(String(40))
    shopper_id: Mapped[str | None] = mapped_column(ForeignKey("shoppers.id"))
    captured_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    stepped_up: Mapped[bool] = mapped_column(default=False)
    # The step-up challenge, while open; `expires_at` is also an authorization's expiry.
    challenge_id: Mapped[str | None] = mapped_column(String(36))
    step_up_reason: Mapped[str | None] = mapped_column(String(16))  # amount, identity
    # What the challenge asks: phone_last4 or phone (a `server.matching.risk.Rung`).
    step_up_ask: Mapped[str | None] = mapped_column(String(16))
    step_up_tries: Mapped[int] = mapped_column(default=0)
    probe_pack: Mapped[str | None] = mapped_column(String(80))
    probe_liveness: Mapped[str | None] = mapped_column(String(32))
    sealed_probe: Mapped[bytes | None] = mapped_column(LargeBinary)
    expires_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
