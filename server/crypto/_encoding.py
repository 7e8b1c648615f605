"""Unambiguous, domain-separated encoding of a tuple of fields.

Layout::

    u8  len(domain) || domain
    u16 field count
    for each field: u32 len(field) || field          (big-endian lengths)

Strings are encoded as strict UTF-8 (lone surrogates are rejected). Because every
component is length-prefixed and the field count is explicit, two different
tuples (or the same tuple under a different domain) never encode to the same
bytes, e.g. ``("ab", "c")`` and ``("a", "bc")`` differ.
"""

from __future__ import annotations

__all__ = ["encode_fields", "to_utf8"]

_MAX_DOMAIN = 0xFF
_MAX_FIELDS = 0xFFFF
_MAX_FIELD_LEN = 0xFFFFFFFF


def to_utf8(value: str, name: str) -> bytes:
    """Encode ``value`` as strict UTF-8; raise ``ValueError`` naming only ``name``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str")
    try:
        return value.encode("utf-8", errors="strict")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode text") from None


def encode_fields(domain: bytes, *fields: bytes | str) -> bytes:
    """Encode ``fields`` under ``domain`` (see module docstring)."""
    if not 0 < len(domain) <= _MAX_DOMAIN:
        raise ValueError("domain must be 1..255 bytes")
    if len(fields) > _MAX_FIELDS:
        raise ValueError("too many fields")
    parts = [len(domain).to_bytes(1, "big"), bytes(domain), len(fields).to_bytes(2, "big")]
    for index, field in enumerate(fields):
        raw = to_utf8(field, f"field {index}") if isinstance(field, str) else bytes(field)
        if len(raw) > _MAX_FIELD_LEN:
            raise ValueError("field too long")
        parts.append(len(raw).to_bytes(4, "big"))
        parts.append(raw)
    return b"".join(parts)
