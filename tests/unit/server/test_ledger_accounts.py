"""Ledger accounts made on first use, on SQLite and PostgreSQL: two transactions that both find
an account missing (a store's first payments, at once) both end up with the one account."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import func, select

from server.db import transaction
from server.ledger import service as ledger
from server.ledger.models import STORE, Account


def test_two_transactions_making_the_same_account_both_get_it(app: Any) -> None:
    svc = app.extensions["facepay"]
    first = svc.sessions()
    made = ledger.account_for(first, kind=STORE, owner="Laval 02", currency="CAD")  # not committed
    found: list[str] = []
    failed: list[BaseException] = []

    def second() -> None:
        try:
            with transaction(svc.sessions) as session:
                account = ledger.account_for(session, kind=STORE, owner="Laval 02", currency="CAD")
                found.append(account.id)
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(timeout=1.0)
    assert thread.is_alive()  # it waits for the first transaction
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert not failed, failed
    assert found == [made.id]
    with svc.sessions() as session:
        owned = select(func.count()).select_from(Account).where(Account.owner == "Laval 02")
        assert session.scalar(owned) == 1
