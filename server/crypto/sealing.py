"""Sealing templates to the server's X25519 public key (kiosk -> server).

An ECIES-style construction::

    eph        = fresh X25519 key pair (per message)
    shared     = X25519(eph_private, server_public)
    key        = HKDF-SHA256(shared, salt=none, length=32,
                             info = encode_fields(DOMAIN, eph_public, server_public))
    ciphertext = AES-256-GCM(key, nonce, plaintext,
                             aad = _AAD_PREFIX || version || eph_public || associated_data)

    sealed     = version (0x01) || eph_public (32) || nonce (12) || ciphertext || tag (16)

Binding both public keys into the KDF info stops key-substitution games; the
associated data (e.g. kiosk id + request nonce) binds the sealed blob to its
request. Sealing is anonymous: anyone holding the public key can seal, so the
request that carries the blob must be authenticated separately
(:mod:`server.crypto.signing`).

Note: ``cryptography`` also ships RFC 9180 HPKE
(``cryptography.hazmat.primitives.hpke``, suite X25519 / HKDF-SHA256 /
AES-256-GCM); this module follows the project's own format as specified.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from pathlib import Path
from typing import Final, Literal

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from server.crypto._encoding import encode_fields
from server.crypto._fs import check_private_file, write_private_file
from server.crypto.errors import DecryptionError, KeyFormatError

__all__ = ["SEAL_OVERHEAD", "SEAL_VERSION", "ServerSealingKey", "seal_to"]

logger = logging.getLogger(__name__)

SEAL_VERSION: Final = 0x01
_PUBLIC_KEY_SIZE: Final = 32
_NONCE_SIZE: Final = 12
_TAG_SIZE: Final = 16
_HEADER_SIZE: Final = 1 + _PUBLIC_KEY_SIZE
SEAL_OVERHEAD: Final = _HEADER_SIZE + _NONCE_SIZE + _TAG_SIZE
_KDF_DOMAIN: Final = b"facepay/seal/v1/x25519-hkdf-sha256-aes256gcm"
_AAD_PREFIX: Final = b"facepay/seal/v1\x00"


def _derive_key(shared: bytes, ephemeral_public: bytes, server_public: bytes) -> bytes:
    info = encode_fields(_KDF_DOMAIN, ephemeral_public, server_public)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def seal_to(server_public_key_bytes: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """Encrypt ``plaintext`` so that only the holder of the server's private key can
    open it. Raises :class:`KeyFormatError` for a malformed or low-order public key."""
    if not isinstance(plaintext, bytes) or not isinstance(associated_data, bytes):
        raise TypeError("plaintext and associated_data must be bytes")
    if not isinstance(server_public_key_bytes, bytes) or (
        len(server_public_key_bytes) != _PUBLIC_KEY_SIZE
    ):
        raise KeyFormatError("server public key must be 32 raw bytes")
    server_public = X25519PublicKey.from_public_bytes(server_public_key_bytes)
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = _raw_public(ephemeral.public_key())
    try:
        shared = ephemeral.exchange(server_public)
    except ValueError:
        raise KeyFormatError("server public key is invalid") from None
    key = _derive_key(shared, ephemeral_public, server_public_key_bytes)
    header = bytes([SEAL_VERSION]) + ephemeral_public
    nonce = secrets.token_bytes(_NONCE_SIZE)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, _AAD_PREFIX + header + associated_data)
    return header + nonce + ciphertext


class ServerSealingKey:
    """The server's X25519 key pair for opening sealed templates.

    The private key is never exposed through ``repr`` or exceptions; ``key_id``
    is a short public fingerprint, safe to log.
    """

    __slots__ = ("_private", "_public")

    def __init__(self, private_key: X25519PrivateKey) -> None:
        if not isinstance(private_key, X25519PrivateKey):
            raise KeyFormatError("sealing key must be an X25519 private key")
        self._private = private_key
        self._public = _raw_public(private_key.public_key())

    def __repr__(self) -> str:
        return f"ServerSealingKey(key_id={self.key_id!r})"

    @classmethod
    def generate(cls) -> ServerSealingKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> ServerSealingKey:
        if not isinstance(raw, bytes) or len(raw) != 32:
            raise KeyFormatError("raw X25519 private key must be 32 bytes")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, allow_insecure_permissions: bool = False
    ) -> ServerSealingKey:
        """Load an unencrypted PKCS#8 PEM file or a raw 32-byte file.

        Refuses a file accessible by group/others unless ``allow_insecure_permissions``.
        """
        file_path = Path(path)
        if not allow_insecure_permissions:
            check_private_file(file_path)
        data = file_path.read_bytes()
        if data.lstrip().startswith(b"-----BEGIN"):
            try:
                key = serialization.load_pem_private_key(data, password=None)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                raise KeyFormatError("sealing key file is not a valid PEM private key") from None
            if not isinstance(key, X25519PrivateKey):
                raise KeyFormatError("sealing key file does not hold an X25519 key")
            return cls(key)
        return cls.from_private_bytes(data)

    def save(
        self, path: str | os.PathLike[str], *, encoding: Literal["pem", "raw"] = "pem"
    ) -> None:
        """Write the private key to a new 0600 file (raises ``FileExistsError``
        rather than overwrite an existing key)."""
        if encoding == "pem":
            data = self._private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        elif encoding == "raw":
            data = self._private.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        else:
            raise ValueError("encoding must be 'pem' or 'raw'")
        write_private_file(Path(path), data, overwrite=False)
        logger.info("wrote sealing key %s", self.key_id)

    def public_bytes(self) -> bytes:
        """The raw 32-byte public key to distribute to kiosks."""
        return self._public

    @property
    def key_id(self) -> str:
        """First 8 bytes of SHA-256(public key), hex: a public fingerprint."""
        return hashlib.sha256(self._public).hexdigest()[:16]

    def open(self, sealed: bytes, associated_data: bytes) -> bytes:
        """Decrypt a blob produced by :func:`seal_to`.

        Raises :class:`DecryptionError` if it is truncated, of an unknown version,
        sealed to another key, tampered with, or ``associated_data`` differs.
        """
        if not isinstance(sealed, bytes) or not isinstance(associated_data, bytes):
            raise TypeError("sealed and associated_data must be bytes")
        if len(sealed) < SEAL_OVERHEAD:
            raise DecryptionError("sealed blob is truncated")
        if sealed[0] != SEAL_VERSION:
            raise DecryptionError("unsupported sealed blob version")
        header = sealed[:_HEADER_SIZE]
        ephemeral_public = header[1:]
        nonce = sealed[_HEADER_SIZE : _HEADER_SIZE + _NONCE_SIZE]
        ciphertext = sealed[_HEADER_SIZE + _NONCE_SIZE :]
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
        except ValueError:
            raise DecryptionError("sealed blob has an invalid ephemeral key") from None
        key = _derive_key(shared, ephemeral_public, self._public)
        try:
            return AESGCM(key).decrypt(nonce, ciphertext, _AAD_PREFIX + header + associated_data)
        except InvalidTag:
            raise DecryptionError("sealed blob failed to authenticate") from None
