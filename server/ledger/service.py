"""The double-entry ledger: accounts, transfers, and balances derived from transfers."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.ledger.models import Account, Transfer

SANDBOX_FUNDING = "sandbox-funding"


def account_for(session: Session, *, kind: str, owner: str, currency: str) -> Account:
    account = session.scalars(
        select(Account).where(
            Account.kind == kind, Account.owner == owner, Account.currency == currency
        )
    ).first()
    if account is None:
        account = Account(id=str(uuid.uuid4()), kind=kind, owner=owner, currency=currency)
        session.add(account)
        session.flush()
    return account


def balance(session: Session, account_id: str) -> int:
    credits = session.scalar(
        select(func.coalesce(func.sum(Transfer.amount), 0)).where(
            Transfer.credit_account == account_id
        )
    )
    debits = session.scalar(
        select(func.coalesce(func.sum(Transfer.amount), 0)).where(
            Transfer.debit_account == account_id
        )
    )
    return int(credits or 0) - int(debits or 0)


def open_wallet(session: Session, shopper_id: str, *, currency: str, opening_amount: int) -> int:
    """A shopper's sandbox wallet, funded by the sandbox's funding account; returns the balance."""
    wallet = account_for(session, kind="wallet", owner=shopper_id, currency=currency)
    if opening_amount > 0:
        funding = account_for(session, kind="funding", owner=SANDBOX_FUNDING, currency=currency)
        session.add(
            Transfer(
                id=str(uuid.uuid4()),
                debit_account=funding.id,
                credit_account=wallet.id,
                amount=opening_amount,
                currency=currency,
                kind="opening",
                reference=shopper_id,
            )
        )
        session.flush()
    return balance(session, wallet.id)
