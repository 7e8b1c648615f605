"""Amounts as people type them and as the API counts them: integer minor units of an ISO 4217
currency."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# ISO 4217 currencies whose minor unit is not the cent.
_MINOR_DIGITS = {"BHD": 3, "JOD": 3, "KWD": 3, "OMR": 3, "TND": 3, "JPY": 0, "KRW": 0, "ISK": 0}
_AMOUNT = re.compile(r"[0-9]{1,12}(\.[0-9]+)?")


def minor_digits(currency: str) -> int:
    return _MINOR_DIGITS.get(currency.upper(), 2)


def parse_amount(amount: str, currency: str) -> int | None:
    """ "12.50" CAD -> 1250; None for anything but digits with an optional decimal point, a
    positive amount with at most the currency's decimals."""
    if not isinstance(amount, str) or not _AMOUNT.fullmatch(amount.strip()):
        return None
    try:
        value = Decimal(amount.strip())
    except InvalidOperation:
        return None
    if value <= 0:
        return None
    minor = value.scaleb(minor_digits(currency))
    if minor != minor.to_integral_value():
        return None
    return int(minor)
