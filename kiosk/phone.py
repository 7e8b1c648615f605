"""What the kiosk accepts as a shopper's phone answer before the server sees it: the last four
digits, or the full number.

The server says which one it wants (a payment's ``step_up_ask``, a deletion's
``full_phone_required``): the last four digits narrow a small gallery enough, a large one needs
the whole number. The rules here are the server's, checked early so that a typo is refused on
the kiosk, with nothing sent and nothing written to the outbox. No function here puts the
number itself into an error message: a phone number is personal data.
"""

from __future__ import annotations

import re
from typing import Final, Literal

PhoneAsk = Literal["phone_last4", "phone"]

PHONE_LAST4: Final = "phone_last4"
PHONE: Final = "phone"
ASKS: Final[tuple[PhoneAsk, ...]] = (PHONE_LAST4, PHONE)

MIN_PHONE_DIGITS: Final = 7
MAX_PHONE_DIGITS: Final = 15  # E.164
MAX_PHONE_CHARS: Final = 24  # digits plus what people type between them

_LAST4: Final = re.compile(r"[0-9]{4}")
# A leading +, then digits with spaces, dashes, dots or parentheses between them.
_PHONE: Final = re.compile(r"\+?[0-9 ().-]+")


def is_last4(text: object) -> bool:
    """Exactly four digits."""
    return isinstance(text, str) and _LAST4.fullmatch(text) is not None


def is_phone_number(text: object) -> bool:
    """A full phone number as the server takes it: 7 to 15 digits, at most 24 characters,
    typed with a leading + and spaces, dashes, dots or parentheses if the shopper likes."""
    if not isinstance(text, str) or len(text) > MAX_PHONE_CHARS:
        return False
    if _PHONE.fullmatch(text) is None:
        return False
    digits = sum(character.isdigit() for character in text)
    return MIN_PHONE_DIGITS <= digits <= MAX_PHONE_DIGITS


def phone_answer(phone_last4: str | None, phone: str | None) -> tuple[PhoneAsk, str]:
    """The one answer given, as (kind, text): ``phone_last4`` or ``phone``.

    Raises ValueError when both or neither are given: a caller's mistake, not the shopper's.
    The text's format is not checked here (`is_last4`, `is_phone_number`).
    """
    if (phone_last4 is None) == (phone is None):
        raise ValueError("give exactly one of phone_last4 and phone")
    if phone is not None:
        return PHONE, phone
    assert phone_last4 is not None
    return PHONE_LAST4, phone_last4


__all__ = [
    "ASKS",
    "MAX_PHONE_CHARS",
    "MAX_PHONE_DIGITS",
    "MIN_PHONE_DIGITS",
    "PHONE",
    "PHONE_LAST4",
    "PhoneAsk",
    "is_last4",
    "is_phone_number",
    "phone_answer",
]
