"""Mail to a shopper's address about their own account, sent after the commit."""

from __future__ import annotations

import logging
from typing import Any

from server.mail import MailError, send_mail
from server.shoppers.models import Shopper

logger = logging.getLogger(__name__)


def mail_shopper(services: Any, shopper_id: str, subject: str, body: str) -> bool:
    """Mail an active shopper; whether it went. A mail that fails is logged (never the
    address), since it is sent after the answer and nothing above could report it."""
    with services.sessions() as session:
        shopper = session.get(Shopper, shopper_id)
        email = shopper.email if shopper is not None and shopper.status == "active" else ""
    if not email:
        return False
    try:
        send_mail(services.settings, email, subject, body)
    except MailError as exc:
        logger.error("a notice to a shopper could not be mailed: %s", exc)
        return False
    return True
