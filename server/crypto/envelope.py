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
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from server.crypto._encoding import encode_fields
from server.crypto.errors import DecryptionError, KeyNotFoundError, UnknownKeyError
from server.crypto.keyring import DATA_KEY_ID_SIZE, DataKey, DataKeyUnwrapper, MasterKey

__all__ = [
    "ENVELOPE_OVERHEAD",
    "ENVELOPE_VERSION",
    "envelope_key_id",
    "open_",
    "open_templates_into",
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
_VERSION_BYTE: Final = bytes([ENVELOPE_VERSION])


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


# One shopper's data key made ready to open templates: the envelope header it must carry, the
# associated data up to the template id field, and AES-GCM under the key.
_ShopperKey = tuple[bytes, bytes, AESGCM]


def open_templates_into(
    master_keys: Mapping[str, MasterKey],
    rows: Iterable[tuple[str, str, str, bytes]],
    wrapped: Mapping[str, Sequence[object] | None],
    outputs: Mapping[str, tuple[memoryview, int]],
) -> dict[str, list[str]]:
    """Open many shoppers' template envelopes into buffers: the gallery's cold start (10^5-10^6
    shoppers, a few templates each). Per shopper one unwrap and one AES-GCM set-up, per
    template one call and no object.

    ``rows`` are ``(shopper_id, template_id, pack_id, blob)``; ``wrapped`` maps a shopper to
    the fields of their wrapped data key as a key store holds them (see
    `DataKeyUnwrapper.unwrap_record`), or to None if the store has none; ``outputs`` maps a
    pack to a writable buffer and the plaintext size of its templates. Rows of other packs,
    or of shoppers not in ``wrapped``, are skipped; every other one is opened into the next
    ``size`` bytes of its pack's buffer. Returns, per pack, the shopper of each template
    opened, in buffer order.

    Each template is checked as ``open_(key, blob, template_associated_data(shopper_id,
    template_id, pack_id))`` checks it, with the same errors (a test compares them), after its
    key is unwrapped as `unwrap_data_key` would. Also raises `KeyNotFoundError` for a row whose
    shopper maps to None, `KeyFormatError` for a malformed record, and `ValueError` for an
    authentic plaintext that is not its pack's size. Nothing is opened after an error, and
    the template that failed to authenticate leaves zeros, not unauthenticated plaintext.
    """
    unwrapper = DataKeyUnwrapper(master_keys)
    sizes = {pack_id: size for pack_id, (_, size) in outputs.items()}
    views = {pack_id: view for pack_id, (view, _) in outputs.items()}
    pack_fields = {pack_id: _aad_field(pack_id, "pack_id") for pack_id in outputs}
    owners: dict[str, list[str]] = {pack_id: [] for pack_id in outputs}
    filled = dict.fromkeys(outputs, 0)
    keys: dict[str, _ShopperKey] = {}
    for shopper_id, template_id, pack_id, blob in rows:
        size = sizes.get(pack_id)
        if size is None:
            continue
        key = keys.get(shopper_id)
        if key is None:
            if shopper_id not in wrapped:
                continue
            key = keys[shopper_id] = _shopper_key(unwrapper, shopper_id, wrapped[shopper_id])
        header, prefix, aead = key
        if (
            not isinstance(blob, bytes)
            or len(blob) != size + ENVELOPE_OVERHEAD
            or blob[:_HEADER_SIZE] != header
        ):
            _refuse(key, blob, template_id, pack_fields[pack_id])
        if type(template_id) is not str or not template_id:
            _aad_field(template_id, "template_id")  # raises
        try:
            template = template_id.encode()
        except UnicodeEncodeError:
            raise ValueError("template_id is not valid Unicode text") from None
        start = filled[pack_id]
        out = views[pack_id][start : start + size]
        associated_data = b"".join(
            (prefix, len(template).to_bytes(4, "big"), template, pack_fields[pack_id])
        )
        try:
            aead.decrypt_into(
                blob[_HEADER_SIZE : _HEADER_SIZE + _NONCE_SIZE],
                blob[_HEADER_SIZE + _NONCE_SIZE :],
                associated_data,
                out,
            )
        except InvalidTag:
            out[:] = bytes(size)
            raise DecryptionError("envelope failed to authenticate") from None
        filled[pack_id] = start + size
        owners[pack_id].append(shopper_id)
    return owners


def _shopper_key(
    unwrapper: DataKeyUnwrapper, shopper_id: str, record: Sequence[object] | None
) -> _ShopperKey:
    if record is None:
        raise KeyNotFoundError("no wrapped key for this shopper")
    key = unwrapper.unwrap_record(record, shopper_id)
    header = _VERSION_BYTE + key.key_id
    # _gcm_aad(header, template_associated_data(...)) up to the template id field
    prefix = b"".join(
        (_AAD_PREFIX, header, _TEMPLATE_AAD_HEAD, _aad_field(shopper_id, "shopper_id"))
    )
    return header, prefix, AESGCM(key.key)


def _refuse(key: _ShopperKey, blob: bytes, template_id: str, pack_field: bytes) -> NoReturn:
    """Raise what `open_` raises for an envelope that is malformed, under another key or of
    another length than expected (then ValueError if it is authentic all the same)."""
    header, prefix, aead = key
    _check_frame(blob)
    if blob[:_HEADER_SIZE] != header:
        raise UnknownKeyError("envelope was sealed under a different data key")
    associated_data = prefix + _aad_field(template_id, "template_id") + pack_field
    try:
        aead.decrypt(
            blob[_HEADER_SIZE : _HEADER_SIZE + _NONCE_SIZE],
            blob[_HEADER_SIZE + _NONCE_SIZE :],
            associated_data,
        )
    except InvalidTag:
        raise DecryptionError("envelope failed to authenticate") from None
    raise ValueError("the plaintext is not the expected length")
