"""Envelope AEAD for template ciphertexts (AES-256-GCM with a versioned header).

Blob layout (similar in spirit to Tink's output prefix)::

    offset  size  field
    0       1     format version (0x01)
    1       16    data key id
    17      12    random nonce
    29      n+16  AES-256-GCM ciphertext || tag

The GCM associated data is ``_AAD_PREFIX || header (version||key id) ||
associated_data``; the prefix and header have fixed length, so this is
unambiguous and the header is authenticated too. Use
:func:`template_associated_data` for templates so a ciphertext copied to another
row (other shopper, template or model pack) fails to open.

With random 96-bit nonces a single data key must not seal more than ~2**32
messages; a per-shopper key seals a handful of templates, far below that.
"""

from __future__ import annotations

import secrets
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from server.crypto._encoding import encode_fields
from server.crypto.errors import DecryptionError, UnknownKeyError
from server.crypto.keyring import DATA_KEY_ID_SIZE, DataKey

__all__ = [
    "ENVELOPE_OVERHEAD",
    "ENVELOPE_VERSION",
    "envelope_key_id",
    "open_",
    "seal",
    "template_associated_data",
]

ENVELOPE_VERSION: Final = 0x01
_NONCE_SIZE: Final = 12
_TAG_SIZE: Final = 16
_HEADER_SIZE: Final = 1 + DATA_KEY_ID_SIZE
ENVELOPE_OVERHEAD: Final = _HEADER_SIZE + _NONCE_SIZE + _TAG_SIZE
_AAD_PREFIX: Final = b"facepay/envelope/v1\x00"
_TEMPLATE_AAD_DOMAIN: Final = b"facepay/template-aad/v1"


def _gcm_aad(header: bytes, associated_data: bytes) -> bytes:
    return _AAD_PREFIX + header + associated_data


def seal(key: DataKey, plaintext: bytes, associated_data: bytes) -> bytes:
    """Encrypt ``plaintext`` under ``key``; returns ``header || nonce || ct || tag``."""
    if not isinstance(plaintext, bytes) or not isinstance(associated_data, bytes):
        raise TypeError("plaintext and associated_data must be bytes")
    header = bytes([ENVELOPE_VERSION]) + key.key_id
    nonce = secrets.token_bytes(_NONCE_SIZE)
    ciphertext = AESGCM(key.key).encrypt(nonce, plaintext, _gcm_aad(header, associated_data))
    return header + nonce + ciphertext


def envelope_key_id(blob: bytes) -> bytes:
    """Return the data key id named in an envelope header (to look the key up).

    Raises :class:`DecryptionError` if the blob is too short or of an unknown version.
    """
    _check_frame(blob)
    return blob[1:_HEADER_SIZE]


def _check_frame(blob: bytes) -> None:
    if not isinstance(blob, bytes):
        raise DecryptionError("envelope must be bytes")
    if len(blob) < ENVELOPE_OVERHEAD:
        raise DecryptionError("envelope is truncated")
    if blob[0] != ENVELOPE_VERSION:
        raise DecryptionError("unsupported envelope version")


def open_(key: DataKey, blob: bytes, associated_data: bytes) -> bytes:
    """Decrypt an envelope produced by :func:`seal`.

    Raises :class:`UnknownKeyError` if the envelope names a different data key,
    and :class:`DecryptionError` if it is truncated, of an unknown version,
    tampered with, or ``associated_data`` differs from the one used to seal.
    """
    if not isinstance(associated_data, bytes):
        raise TypeError("associated_data must be bytes")
    _check_frame(blob)
    header = blob[:_HEADER_SIZE]
    if not secrets.compare_digest(header[1:], key.key_id):
        raise UnknownKeyError("envelope was sealed under a different data key")
    nonce = blob[_HEADER_SIZE : _HEADER_SIZE + _NONCE_SIZE]
    ciphertext = blob[_HEADER_SIZE + _NONCE_SIZE :]
    try:
        return AESGCM(key.key).decrypt(nonce, ciphertext, _gcm_aad(header, associated_data))
    except InvalidTag:
        raise DecryptionError("envelope failed to authenticate") from None


def template_associated_data(shopper_id: str, template_id: str, pack_id: str) -> bytes:
    """Canonical associated data binding a template ciphertext to its row.

    Domain-separated and length-prefixed (see :mod:`server.crypto._encoding`), so
    e.g. ``("ab", "c", p)`` and ``("a", "bc", p)`` give different bytes. All three
    ids must be non-empty strings.
    """
    for name, value in (
        ("shopper_id", shopper_id),
        ("template_id", template_id),
        ("pack_id", pack_id),
    ):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty str")
    return encode_fields(_TEMPLATE_AAD_DOMAIN, shopper_id, template_id, pack_id)
