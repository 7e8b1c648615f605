from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, utcnow

WALLET = "wallet"
STORE = "store"
FUNDING = "funding"


class Account(Base):
    """A ledger account: a shopper's wallet, a store's takings, or the sandbox's funding source.

    The totals are the sums of the account's transfers (and of its open authorizations, for
    `debits_held`), kept in the same transaction as each transfer; `facepay server ledger check`
    recomputes them from the transfers. The check constraint makes a wallet overdraft
    impossible whatever the code above it does.
    """

    __tablename__ = "accounts"
    __table_args__ = (
        UniqueConstraint("kind", "owner", "currency", name="uq_accounts_kind_owner_currency"),
        CheckConstraint(
            "kind <> 'wallet' OR credits_posted - debits_posted - debits_held >= 0",
            name="wallet_not_overdrawn",
        ),
        CheckConstraint(
            "debits_posted >= 0 AND credits_posted >= 0 AND debits_held >= 0",
            name="totals_not_negative",
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # wallet, store, funding
    owner: Mapped[str] = mapped_column(String(100), index=True)  # shopper id or store name
    currency: Mapped[str] = mapped_column(String(3))
    debits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    debits_held: Mapped[int] = mapped_column(BigInteger, default=0)  # open authorizations
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    @property
    def available(self) -> int:
        return self.credits_posted - self.debits_posted - self.debits_held


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
    payment_id: Mapped[str | None] = mapped_column(ForeignKey("payments.id"), index=True)
    reference: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
