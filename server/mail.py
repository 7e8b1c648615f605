"""Sending mail: through SMTP when FACEPAY_SMTP_URL is set, else to files in <instance>/outbox.

The development outbox holds ordinary RFC 5322 messages (open one with any mail reader). Log
lines name the outbox file at most, never the recipient or the body: bodies carry one-time
codes.
"""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
import uuid
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from urllib.parse import unquote, urlsplit

from server.config import Settings
from server.db import utcnow

logger = logging.getLogger(__name__)

SMTP_TIMEOUT_S = 15.0
_DEFAULT_PORTS = {"smtp": 587, "smtps": 465}


class MailError(RuntimeError):
    """The message could not be sent or written (the text never names the recipient)."""


def build_message(settings: Settings, to: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(utcnow())
    # A domain given explicitly: make_msgid() would otherwise ask DNS for this host's name.
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = make_msgid(domain=domain)
    message.set_content(body)
    return message


def send_mail(settings: Settings, to: str, subject: str, body: str) -> Path | None:
    """Send one plain-text message; returns the outbox file in development, None over SMTP."""
    try:
        message = build_message(settings, to, subject, body)
    except (ValueError, TypeError) as exc:  # e.g. a header the email package refuses
        raise MailError(f"the message could not be built ({type(exc).__name__})") from None
    if settings.smtp_url:
        _send_smtp(settings.smtp_url, message)
        return None
    return _write_outbox(settings.instance / "outbox", message)


def _send_smtp(url: str, message: EmailMessage) -> None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise MailError("FACEPAY_SMTP_URL must be smtp://host[:port] or smtps://host[:port]")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise MailError("FACEPAY_SMTP_URL has an invalid port") from None
    context = ssl.create_default_context()
    try:
        client: smtplib.SMTP
        if scheme == "smtps":
            client = smtplib.SMTP_SSL(parts.hostname, port, timeout=SMTP_TIMEOUT_S, context=context)
        else:
            client = smtplib.SMTP(parts.hostname, port, timeout=SMTP_TIMEOUT_S)
        with client:
            if scheme == "smtp":
                # Always encrypted: the body holds a code and the login a password.
                client.starttls(context=context)
            if parts.username:
                client.login(unquote(parts.username), unquote(parts.password or ""))
            client.send_message(message)
    except (smtplib.SMTPException, OSError) as exc:
        # The exception's text can quote the recipients: only its type is reported.
        raise MailError(f"SMTP delivery failed ({type(exc).__name__})") from None
    logger.info("mail sent through SMTP relay %s:%s", parts.hostname, port)


def _write_outbox(folder: Path, message: EmailMessage) -> Path:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    stamp = utcnow().strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"{stamp}-{uuid.uuid4()}.eml"
    # A non-ASCII address can only be written as an SMTPUTF8 message.
    policy = SMTP if str(message["To"]).isascii() else SMTPUTF8
    data = message.as_bytes(policy=policy)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    logger.warning("DEVELOPMENT MODE: mail written to the outbox as %s (no SMTP set)", path.name)
    return path
