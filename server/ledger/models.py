from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, utcnow


class Account(Base):
    """A ledger account: a shopper's wallet, a store's takings, or the sandbox's funding source."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # wallet, store, funding
    owner: Mapped[str] = mapped_column(String(100), index=True)  # shopper id or store name
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Transfer(Base):
    """Money moved from one account to another; never edited, reversed by a new transfer."""

    __tablename__ = "transfers"
    __table_args__ = (
        CheckConstraint("amount > 0", name="positive_amount"),
        CheckConstraint("debit_account <> credit_account", name="distinct_accounts"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    debit_account: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    credit_account: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)  # minor units
    currency: Mapped[str] = mapped_column(String(3))
    kind: Mapped[str] = mapped_column(String(16))  # opening, charge, refund
    reference: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
