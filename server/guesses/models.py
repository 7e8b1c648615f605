from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, utcnow


class StepUpFailure(Base):
    """One failed step-up: a face that did not match among the shoppers the typed digits
    named. `shopper_id` is the candidate it was counted against (the one shopper with the
    typed number, or the closest face among those with the typed last four digits); none
    when the digits named nobody. The probe is kept exactly as the kiosk sealed it (to the
    server's key), so that the next attempts of the same face are counted together whatever
    digits they type. Kept for the counting window and purged after it, probe and all."""

    __tablename__ = "step_up_failures"
    __table_args__ = (
        Index("ix_step_up_failures_shopper_at", "shopper_id", "at"),
        Index("ix_step_up_failures_kiosk_at", "kiosk_id", "at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kiosk_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"))
    store: Mapped[str] = mapped_column(String(100))
    shopper_id: Mapped[str | None] = mapped_column(ForeignKey("shoppers.id"))
    purpose: Mapped[str] = mapped_column(String(16))  # pay, delete
    probe_pack: Mapped[str | None] = mapped_column(String(80))
    probe_liveness: Mapped[str | None] = mapped_column(String(32))
    sealed_probe: Mapped[bytes | None] = mapped_column(LargeBinary)
