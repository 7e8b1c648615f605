"""Errors raised by the kiosk, each with a stable code for the screen, the CLI and the logs."""

from __future__ import annotations


class KioskError(Exception):
    """Base class: `code` is stable and machine-readable; the message is for people."""

    code = "kiosk_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class SourceError(KioskError):
    """A frame source cannot be opened or read (no such file, no camera, camera lost)."""

    code = "source_unavailable"


class ServerError(KioskError):
    """The server refused a request; `code` is the server's problem code."""

    code = "server_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status


class ServerUnavailable(KioskError):
    """The server did not answer (down, unreachable, timed out); nothing is lost: a payment's
    idempotency key is in the outbox and is resolved before any new payment."""

    code = "server_unavailable"


class NotRegistered(KioskError):
    """This kiosk has no key pair or server yet: run `facepay kiosk register`."""

    code = "kiosk_not_registered"
