"""The double-entry ledger: accounts, transfers, holds, and the invariant check.

Every movement of money is one `Transfer` from a debit account to a credit account, so debits
equal credits by construction. Writers lock the accounts they touch (`SELECT ... FOR UPDATE`
on PostgreSQL; SQLite transactions already hold the database's write lock) before reading a
balance they act on.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.db import utcnow
from server.ledger.models import FUNDING, STORE, WALLET, Account, Transfer
from server.payments.models import Payment

SANDBOX_FUNDING = "sandbox-funding"

# Built once, with bound parameters: these run on every payment (see payments.service).
_ACCOUNT = select(Account).where(
    Account.kind == bindparam("kind"),
    Account.owner == bindparam("owner"),
    Account.currency == bindparam("currency"),
)
_ACCOUNT_LOCKED = _ACCOUNT.with_for_update()
_WALLET = select(Account).where(Account.kind == WALLET, Account.owner == bindparam("owner"))
_WALLET_LOCKED = _WALLET.with_for_update()
_TRANSFER = Transfer.__table__.insert()  # type: ignore[attr-defined]


def account_for(session: Session, *, kind: str, owner: str, currency: str) -> Account:
    """The account, created if missing, locked for the rest of the transaction.

    Two transactions may both find it missing (a store's first payments, at once): the second
    insert waits for the first transaction and then breaks the unique constraint; it is undone
    (a savepoint) and the account the first one made is used, instead of failing the request.
    """
    which = {"kind": kind, "owner": owner, "currency": currency}
    account = session.scalars(_ACCOUNT_LOCKED, which).first()
    if account is not None:
        return account
    account = Account(
        id=str(uuid.uuid4()),
        kind=kind,
        owner=owner,
        currency=currency,
        debits_posted=0,
        credits_posted=0,
        debits_held=0,
    )
    try:
        with session.begin_nested():
            session.add(account)
    except IntegrityError:  # made meanwhile by a transaction that has committed since
        return session.scalars(_ACCOUNT_LOCKED, which).one()
    return account


def wallet_of(session: Session, shopper_id: str, *, lock: bool = False) -> Account | None:
    """The shopper's wallet (one per shopper, in the currency they enrolled with)."""
    return session.scalars(_WALLET_LOCKED if lock else _WALLET, {"owner": shopper_id}).first()


def transfer(
    session: Session,
    *,
    debit: Account,
    credit: Account,
    amount: int,
    kind: str,
    payment_id: str | None = None,
    reference: str | None = None,
) -> str:
    """Post one transfer; both accounts must be locked by the caller's transaction. Returns
    the transfer's id."""
    if amount <= 0:
        raise ValueError("a transfer moves a positive amount")
    if debit.currency != credit.currency:
        raise ValueError("a transfer stays within one currency")
    if debit.kind == WALLET and debit.available < amount:
        raise ValueError("a wallet cannot be overdrawn")
    debit.debits_posted += amount
    credit.credits_posted += amount
    session.flush()  # the accounts' totals, and whatever the transfer refers to, first
    transfer_id = str(uuid.uuid4())
    session.connection().execute(
        _TRANSFER,
        {
            "id": transfer_id,
            "debit_account": debit.id,
            "credit_account": credit.id,
            "amount": amount,
            "currency": debit.currency,
            "kind": kind,
            "payment_id": payment_id,
            "reference": reference,
            "created_at": utcnow(),
        },
    )
    return transfer_id


def hold(wallet: Account, amount: int) -> None:
    """Reserve `amount` of a locked wallet for an authorization."""
    if amount <= 0 or wallet.available < amount:
        raise ValueError("a hold needs a positive amount the wallet has")
    wallet.debits_held += amount


def release(wallet: Account, amount: int) -> None:
    """Give back what an authorization reserved (captured, voided or expired)."""
    if amount <= 0 or wallet.debits_held < amount:
        raise ValueError("a release gives back no more than is held")
    wallet.debits_held -= amount


def open_wallet(session: Session, shopper_id: str, *, currency: str, opening_amount: int) -> int:
    """A shopper's sandbox wallet, funded by the sandbox's funding account; returns the balance."""
    wallet = account_for(session, kind=WALLET, owner=shopper_id, currency=currency)
    if opening_amount > 0:
        funding = account_for(session, kind=FUNDING, owner=SANDBOX_FUNDING, currency=currency)
        transfer(
            session,
            debit=funding,
            credit=wallet,
            amount=opening_amount,
            kind="opening",
            reference=shopper_id,
        )
    return wallet.available


def store_account(session: Session, store: str, currency: str) -> Account:
    return account_for(session, kind=STORE, owner=store, currency=currency)


# ---------------------------------------------------------------- the invariant check


@dataclass
class LedgerReport:
    """What `check` found; `ok` when no invariant is broken."""

    accounts: int = 0
    transfers: int = 0
    payments: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(session: Session) -> LedgerReport:
    """Recompute every balance from the transfers and compare it with everything that
    depends on it. Reports problems by account or payment id, never by shopper data.

    Given a fresh session, the check reads one snapshot on PostgreSQL (REPEATABLE READ);
    SQLite transactions here already hold the write lock, so nothing changes underneath.
    """
    if session.get_bind().dialect.name == "postgresql" and not session.in_transaction():
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    report = LedgerReport()
    accounts = {account.id: account for account in session.scalars(select(Account))}
    report.accounts = len(accounts)
    debits: defaultdict[str, int] = defaultdict(int)
    credits: defaultdict[str, int] = defaultdict(int)
    by_payment: defaultdict[str, list[Transfer]] = defaultdict(list)
    for row in session.scalars(select(Transfer)):
        report.transfers += 1
        debits[row.debit_account] += row.amount
        credits[row.credit_account] += row.amount
        for side in (row.debit_account, row.credit_account):
            if accounts[side].currency != row.currency:
                report.problems.append(f"transfer {row.id}: currency differs from account {side}")
        if row.payment_id is not None:
            by_payment[row.payment_id].append(row)

    balances_by_currency: defaultdict[str, int] = defaultdict(int)
    for account in accounts.values():
        balance = credits[account.id] - debits[account.id]
        balances_by_currency[account.currency] += balance
        if (account.debits_posted, account.credits_posted) != (
            debits[account.id],
            credits[account.id],
        ):
            report.problems.append(f"account {account.id}: totals differ from its transfers")
        if account.kind == WALLET and balance - account.debits_held < 0:
            report.problems.append(f"account {account.id}: wallet overdrawn")
    for currency, total in sorted(balances_by_currency.items()):
        if total != 0:
            report.problems.append(f"currency {currency}: balances sum to {total}, not zero")

    held: defaultdict[str, int] = defaultdict(int)
    wallets = {a.owner: a for a in accounts.values() if a.kind == WALLET}
    for payment in session.scalars(select(Payment)):
        report.payments += 1
        report.problems.extend(_payment_problems(payment, by_payment.pop(payment.id, []), wallets))
        if payment.state == "authorized" and payment.shopper_id in wallets:
            held[wallets[payment.shopper_id].id] += payment.amount
    for payment_id in by_payment:
        report.problems.append(f"transfers name payment {payment_id}, which does not exist")
    for account in accounts.values():
        if account.debits_held != held[account.id]:
            report.problems.append(f"account {account.id}: held amount differs from open holds")
    return report


def _payment_problems(
    payment: Payment, transfers: list[Transfer], wallets: dict[str, Account]
) -> list[str]:
    problems = []
    charges = [t for t in transfers if t.kind == "charge"]
    refunds = [t for t in transfers if t.kind == "refund"]
    others = [t for t in transfers if t.kind not in ("charge", "refund")]
    wallet = wallets.get(payment.shopper_id or "")
    if others:
        problems.append(f"payment {payment.id}: transfers of an unexpected kind")
    if payment.state == "captured":
        if len(charges) != 1 or charges[0].amount != payment.captured_amount:
            problems.append(f"payment {payment.id}: captured without exactly one matching charge")
        elif wallet is None or charges[0].debit_account != wallet.id:
            problems.append(f"payment {payment.id}: charge not taken from the shopper's wallet")
    elif charges:
        problems.append(f"payment {payment.id}: a charge for a payment that is {payment.state}")
    if sum(t.amount for t in refunds) != payment.refunded_amount:
        problems.append(f"payment {payment.id}: refunds differ from the refunded amount")
    if payment.refunded_amount > payment.captured_amount:
        problems.append(f"payment {payment.id}: refunded more than was captured")
    return problems
