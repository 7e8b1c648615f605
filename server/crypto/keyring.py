"""Master keys, per-shopper data keys, and key wrapping.

Key hierarchy (envelope encryption)::

    MasterKey  (one active + retired ones, kept in a 0600 file / secret mount)
        └── wraps ── DataKey  (one per shopper, stored wrapped in a KeyStore)
                        └── encrypts ── templates (server.crypto.envelope)

A :class:`WrappedKey` names the master key that wrapped it, so a master key can be
rotated by re-wrapping every data key (:func:`rewrap`) without touching a single
template ciphertext. The wrapping associated data binds the shopper id, the data
key id and the master key id, so a wrapped key copied to another shopper's entry
does not unwrap.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from server.crypto._encoding import encode_fields, to_utf8
from server.crypto._fs import check_private_file, write_private_file
from server.crypto.errors import DecryptionError, KeyFormatError, UnknownKeyError

__all__ = [
    "DATA_KEY_ID_SIZE",
    "KEY_SIZE",
    "DataKey",
    "DataKeyUnwrapper",
    "MasterKey",
    "WrappedKey",
    "rewrap",
    "unwrap_data_key",
    "wrap_data_key",
]

logger = logging.getLogger(__name__)

KEY_SIZE: Final = 32  # AES-256
DATA_KEY_ID_SIZE: Final = 16
_NONCE_SIZE: Final = 12
_TAG_SIZE: Final = 16
_WRAP_VERSION: Final = 1
_WRAP_DOMAIN: Final = b"facepay/key-wrap/v1"
_MASTER_FILE_FORMAT: Final = "facepay-master-key"
_MASTER_FILE_VERSION: Final = 1
_MASTER_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


_valid_master_ids: set[str] = set()  # ids already checked: a handful, checked ~10^6 times


def _check_master_id(key_id: str) -> None:
    if type(key_id) is str and key_id in _valid_master_ids:
        return
    if not isinstance(key_id, str) or _MASTER_ID_RE.fullmatch(key_id) is None:
        raise KeyFormatError("master key id must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
    if type(key_id) is str and len(_valid_master_ids) < 256:
        _valid_master_ids.add(key_id)


def _check_key_bytes(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise KeyFormatError(f"key must be exactly {KEY_SIZE} bytes")


@dataclass(frozen=True, slots=True, eq=False)
class MasterKey:
    """A key-encryption key: ``key_id`` (public, short ASCII) + 32 secret bytes.

    ``repr`` never shows the key; equality is identity (no timing-variable
    comparison of key bytes).
    """

    key_id: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_master_id(self.key_id)
        _check_key_bytes(self.key)

    @classmethod
    def generate(cls, key_id: str | None = None) -> MasterKey:
        """Create a fresh random master key (id defaults to ``mk-<16 hex>``)."""
        return cls(key_id or f"mk-{secrets.token_hex(8)}", secrets.token_bytes(KEY_SIZE))

    @classmethod
    def generate_to_file(cls, path: str | os.PathLike[str], key_id: str | None = None) -> MasterKey:
        """Generate a master key and write it to a new 0600 file (never overwrites)."""
        key = cls.generate(key_id)
        key.save(path)
        return key

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this key to ``path`` atomically with mode 0600.

        Raises :class:`FileExistsError` if ``path`` exists: silently replacing a
        master key would make every data key it wrapped unrecoverable.
        """
        document = {
            "format": _MASTER_FILE_FORMAT,
            "version": _MASTER_FILE_VERSION,
            "key_id": self.key_id,
            "key": base64.b64encode(self.key).decode("ascii"),
        }
        write_private_file(Path(path), json.dumps(document).encode("ascii"), overwrite=False)
        logger.info("wrote master key %s", self.key_id)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, allow_insecure_permissions: bool = False
    ) -> MasterKey:
        """Load a master key file written by :meth:`save`.

        Refuses (:class:`~server.crypto.errors.InsecureKeyFileError`) a file that
        group or others can access, unless ``allow_insecure_permissions`` (e.g.
        for a read-only secret mount whose mode cannot be changed).
        Raises :class:`~server.crypto.errors.KeyFormatError` on any malformed file.
        """
        file_path = Path(path)
        if not allow_insecure_permissions:
            check_private_file(file_path)
        raw = file_path.read_bytes()
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise KeyFormatError("master key file is not valid JSON") from None
        if (
            not isinstance(document, dict)
            or document.get("format") != _MASTER_FILE_FORMAT
            or document.get("version") != _MASTER_FILE_VERSION
            or not isinstance(document.get("key_id"), str)
            or not isinstance(document.get("key"), str)
        ):
            raise KeyFormatError("master key file has an unexpected structure")
        key = _b64decode(document["key"], "master key")
        return cls(document["key_id"], key)


@dataclass(frozen=True, slots=True, eq=False)
class DataKey:
    """A per-shopper data-encryption key: 16-byte random id + 32 secret bytes."""

    key_id: bytes
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, bytes) or len(self.key_id) != DATA_KEY_ID_SIZE:
            raise KeyFormatError(f"data key id must be exactly {DATA_KEY_ID_SIZE} bytes")
        _check_key_bytes(self.key)

    @classmethod
    def generate(cls) -> DataKey:
        """Create a fresh random data key with a fresh random id."""
        return cls(secrets.token_bytes(DATA_KEY_ID_SIZE), secrets.token_bytes(KEY_SIZE))

    @property
    def key_id_hex(self) -> str:
        """The key id as lowercase hex (safe to log)."""
        return self.key_id.hex()


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key encrypted under a master key.

    ``ciphertext`` is ``nonce (12) || AES-256-GCM(data key) || tag (16)``. It is
    not key material by itself, but it is kept out of ``repr`` anyway.
    """

    master_key_id: str
    data_key_id: bytes
    ciphertext: bytes = field(repr=False)
    version: int = _WRAP_VERSION

    def __post_init__(self) -> None:
        _check_master_id(self.master_key_id)
        if not isinstance(self.data_key_id, bytes) or len(self.data_key_id) != DATA_KEY_ID_SIZE:
            raise KeyFormatError(f"data key id must be exactly {DATA_KEY_ID_SIZE} bytes")
        if not isinstance(self.ciphertext, bytes):
            raise KeyFormatError("wrapped key ciphertext must be bytes")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise KeyFormatError("wrapped key version must be an int")

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-serialisable representation (for key stores)."""
        return {
            "version": self.version,
            "master_key_id": self.master_key_id,
            "data_key_id": self.data_key_id.hex(),
            "ciphertext": base64.b64encode(self.ciphertext).decode("ascii"),
        }

    @classmethod
    def from_json_dict(cls, document: Mapping[str, Any]) -> WrappedKey:
        """Inverse of :meth:`to_json_dict`; raises ``KeyFormatError`` if malformed."""
        version = document.get("version")
        master_key_id = document.get("master_key_id")
        data_key_id = document.get("data_key_id")
        ciphertext = document.get("ciphertext")
        if (
            isinstance(version, bool)
            or not isinstance(version, int)
            or not isinstance(master_key_id, str)
            or not isinstance(data_key_id, str)
            or not isinstance(ciphertext, str)
        ):
            raise KeyFormatError("wrapped key record has an unexpected structure")
        try:
            data_key_id_bytes = bytes.fromhex(data_key_id)
        except ValueError:
            raise KeyFormatError("wrapped key data key id is not hex") from None
        return cls(
            master_key_id=master_key_id,
            data_key_id=data_key_id_bytes,
            ciphertext=_b64decode(ciphertext, "wrapped key"),
            version=version,
        )


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise KeyFormatError(f"{what} is not valid base64") from None


def _wrap_aad(master_key_id: str, data_key_id: bytes, shopper_id: str) -> bytes:
    if not isinstance(shopper_id, str) or not shopper_id:
        raise ValueError("shopper_id must be a non-empty str")
    return encode_fields(_WRAP_DOMAIN, master_key_id, data_key_id, shopper_id)


def wrap_data_key(master: MasterKey, data_key: DataKey, shopper_id: str) -> WrappedKey:
    """Encrypt ``data_key`` under ``master``, bound to ``shopper_id``."""
    nonce = secrets.token_bytes(_NONCE_SIZE)
    aad = _wrap_aad(master.key_id, data_key.key_id, shopper_id)
    sealed = AESGCM(master.key).encrypt(nonce, data_key.key, aad)
    return WrappedKey(master.key_id, data_key.key_id, nonce + sealed)


def unwrap_data_key(
    master_keys: Mapping[str, MasterKey], wrapped: WrappedKey, shopper_id: str
) -> DataKey:
    """Decrypt ``wrapped`` with the master key it names.

    Raises :class:`UnknownKeyError` if that master key is not in ``master_keys``
    and :class:`DecryptionError` if the wrapped key does not authenticate (wrong
    shopper, tampered, wrong master key under the same id, unknown version).
    """
    return DataKeyUnwrapper(master_keys).unwrap(wrapped, shopper_id)


class DataKeyUnwrapper:
    """:func:`unwrap_data_key` for many keys: one AES-GCM object and one associated-data
    prefix per master key (the gallery's cold start unwraps one data key per shopper).
    Same checks, same errors, same associated data as :func:`_wrap_aad`."""

    __slots__ = ("_master_keys", "_masters")

    def __init__(self, master_keys: Mapping[str, MasterKey]) -> None:
        self._master_keys = master_keys
        self._masters: dict[str, tuple[AESGCM, bytes]] = {}

    def _master(self, master_key_id: str) -> tuple[AESGCM, bytes]:
        found = self._masters.get(master_key_id)
        if found is None:
            master = self._master_keys.get(master_key_id)
            if master is None:
                raise UnknownKeyError(f"master key {master_key_id!r} is not loaded")
            if master.key_id != master_key_id:
                raise UnknownKeyError("master key mapping is inconsistent with key ids")
            # encode_fields(_WRAP_DOMAIN, master_key_id, ...) up to the data key id field
            head = encode_fields(_WRAP_DOMAIN, master_key_id, b"", "")[:-8]
            found = self._masters[master_key_id] = (AESGCM(master.key), head)
        return found

    def unwrap(self, wrapped: WrappedKey, shopper_id: str) -> DataKey:
        return self._unwrap(
            wrapped.master_key_id,
            wrapped.data_key_id,
            wrapped.ciphertext,
            wrapped.version,
            shopper_id,
        )

    def unwrap_record(self, record: Sequence[object], shopper_id: str) -> DataKey:
        """:meth:`unwrap` for the fields of a `WrappedKey` as a key store holds them
        ``(master_key_id, data_key_id, ciphertext, version)``, checked as `WrappedKey` checks
        them (`KeyFormatError`) without making one (the cold start unwraps ~10^5-10^6)."""
        try:
            master_key_id, data_key_id, ciphertext, version = record
        except (TypeError, ValueError):
            raise KeyFormatError("wrapped key record must have four fields") from None
        if type(master_key_id) is not str:
            raise KeyFormatError("master key id must be a str")
        _check_master_id(master_key_id)
        if type(data_key_id) is not bytes or len(data_key_id) != DATA_KEY_ID_SIZE:
            raise KeyFormatError(f"data key id must be exactly {DATA_KEY_ID_SIZE} bytes")
        if type(ciphertext) is not bytes:
            raise KeyFormatError("wrapped key ciphertext must be bytes")
        if type(version) is not int:
            raise KeyFormatError("wrapped key version must be an int")
        return self._unwrap(master_key_id, data_key_id, ciphertext, version, shopper_id)

    def _unwrap(
        self,
        master_key_id: str,
        data_key_id: bytes,
        ciphertext: bytes,
        version: int,
        shopper_id: str,
    ) -> DataKey:
        if version != _WRAP_VERSION:
            raise DecryptionError("unsupported wrapped key version")
        aead, head = self._master(master_key_id)
        if len(ciphertext) != _NONCE_SIZE + KEY_SIZE + _TAG_SIZE:
            raise DecryptionError("wrapped key has the wrong length")
        if not isinstance(shopper_id, str) or not shopper_id:
            raise ValueError("shopper_id must be a non-empty str")
        shopper = to_utf8(shopper_id, "field 2")
        aad = b"".join(
            (
                head,
                DATA_KEY_ID_SIZE.to_bytes(4, "big"),
                data_key_id,
                len(shopper).to_bytes(4, "big"),
                shopper,
            )
        )
        try:
            key = aead.decrypt(ciphertext[:_NONCE_SIZE], ciphertext[_NONCE_SIZE:], aad)
        except InvalidTag:
            raise DecryptionError("wrapped key failed to authenticate") from None
        return DataKey(data_key_id, key)


def rewrap(
    wrapped: WrappedKey,
    old_masters: Mapping[str, MasterKey],
    new_master: MasterKey,
    shopper_id: str,
) -> WrappedKey:
    """Re-wrap a data key under ``new_master`` (master key rotation).

    The data key itself (id and bytes) is unchanged, so template ciphertexts stay
    valid. ``old_masters`` must contain the master key named by ``wrapped``; if
    ``wrapped`` is already under ``new_master`` it is returned unchanged, which
    makes an interrupted rotation safe to resume.
    """
    if wrapped.master_key_id == new_master.key_id:
        # Still prove the entry is valid before declaring it rotated.
        unwrap_data_key({new_master.key_id: new_master}, wrapped, shopper_id)
        return wrapped
    data_key = unwrap_data_key(old_masters, wrapped, shopper_id)
    return wrap_data_key(new_master, data_key, shopper_id)
