"""The mail a shopper gets when failed step-ups lock theirs: sent after the commit."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from server.shoppers.notices import mail_shopper

SUBJECT = "facepay: paying by face is locked for a day after failed attempts"
BODY = (
    "Several attempts to pay or to delete your data failed today at facepay kiosks: another "
    "face with your phone number, or your face with numbers that are not yours. To protect "
    "your account, paying by face is locked for up to 24 hours; nothing was charged or "
    "deleted.\n\n"
    "If these attempts were yours, no action is needed: it unlocks by itself. If they were not, "
    "you can see them in your data export at the privacy page, and write to us.\n"
)


def tell_locked_shoppers(services: Any, shopper_ids: Iterable[str]) -> None:
    """Mail each shopper whose step-up was just locked."""
    for shopper_id in shopper_ids:
        mail_shopper(services, shopper_id, SUBJECT, BODY)
