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
    "TemplateOpener",
    "envelope_key_id",
    "open_",
    "seal",
    "template_associated_data",
    "template_associated_data_fast",
]

ENVELOPE_VERSION: Final = 0x01
_NONCE_SIZE: Final = 12
_TAG_SIZE: Final = 16
_HEADER_SIZE: Final = 1 + DATA_KEY_ID_SIZE
ENVELOPE_OVERHEAD: Final = _HEADER_SIZE + _NONCE_SIZE + _TAG_SIZE
_AAD_PREFIX: Final = b"facepay/envelope/v1\x00"
_TEMPLATE_AAD_DOMAIN: Final = b"facepay/template-aad/v1"
# encode_fields(_TEMPLATE_AAD_DOMAIN, a, b, c) up to the first field: u8 len || domain || u16 3
_TEMPLATE_AAD_HEAD: Final = (
    len(_TEMPLATE_AAD_DOMAIN).to_bytes(1, "big") + _TEMPLATE_AAD_DOMAIN + (3).to_bytes(2, "big")
)


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


def _aad_field(value: object, name: str) -> bytes:
    """One length-prefixed field of :func:`template_associated_data` (same checks and bytes)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty str")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode text") from None
    return len(raw).to_bytes(4, "big") + raw


def template_associated_data_fast(shopper_id: str, template_id: str, pack_id: str) -> bytes:
    """The same bytes as :func:`template_associated_data`, built without the generic encoder
    (for bulk decryption; a test checks the two agree)."""
    return b"".join(
        (
            _TEMPLATE_AAD_HEAD,
            _aad_field(shopper_id, "shopper_id"),
            _aad_field(template_id, "template_id"),
            _aad_field(pack_id, "pack_id"),
        )
    )


class TemplateOpener:
    """Opens many template envelopes of one shopper under their data key.

    ``opener.open(blob, template_id, pack_id)`` returns exactly what
    ``open_(key, blob, template_associated_data(shopper_id, template_id, pack_id))``
    returns and raises the same errors, but sets up AES-GCM once and builds the
    associated data from parts computed once (the gallery's cold start opens ~10^6).
    """

    __slots__ = ("_aead", "_header", "_packs", "_prefix")

    def __init__(self, key: DataKey, shopper_id: str) -> None:
        self._aead = AESGCM(key.key)
        self._header = bytes([ENVELOPE_VERSION]) + key.key_id
        # _gcm_aad(header, template_associated_data(...)) up to the template id field
        self._prefix = (
            _AAD_PREFIX + self._header + _TEMPLATE_AAD_HEAD + _aad_field(shopper_id, "shopper_id")
        )
        self._packs: dict[str, bytes] = {}

    def open(self, blob: bytes, template_id: str, pack_id: str) -> bytes:
        if not isinstance(blob, bytes) or len(blob) < ENVELOPE_OVERHEAD:
            _check_frame(blob)  # raises the same error open_ would
        header = blob[:_HEADER_SIZE]
        if header != self._header:
            _check_frame(blob)  # an unknown version first, as in open_
            raise UnknownKeyError("envelope was sealed under a different data key")
        pack_field = self._packs.get(pack_id)
        if pack_field is None:
            pack_field = self._packs[pack_id] = _aad_field(pack_id, "pack_id")
        associated_data = self._prefix + _aad_field(template_id, "template_id") + pack_field
        try:
            return self._aead.decrypt(
                blob[_HEADER_SIZE : _HEADER_SIZE + _NONCE_SIZE],
                blob[_HEADER_SIZE + _NONCE_SIZE :],
                associated_data,
            )
        except InvalidTag:
            raise DecryptionError("envelope failed to authenticate") from None
