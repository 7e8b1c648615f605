"""Shopper look-ups that matching needs, without biometrics."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.keys import InstanceKeys
from server.shoppers.models import Shopper


def with_phone_ending(session: Session, keys: InstanceKeys, last4: str) -> set[str]:
    """Active shoppers whose phone ends in these four digits: the step-up gallery."""
    if len(last4) != 4 or not last4.isdigit():
        raise ValueError("step-up needs exactly four digits")
    rows = session.scalars(
        select(Shopper.id).where(
            Shopper.phone_last4_hash == keys.phone_last4_hash(last4), Shopper.status == "active"
        )
    )
    return set(rows)
