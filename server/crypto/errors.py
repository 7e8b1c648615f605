"""Exception hierarchy for :mod:`server.crypto`.

Every failure in this package raises a subclass of :class:`CryptoError`; nothing
falls back to plaintext or to a weaker mode. Messages are fixed, generic strings:
they never contain key material, templates, plaintext, ciphertext or signatures,
so they are safe to log and to show in a traceback.
"""

from __future__ import annotations

__all__ = [
    "CryptoError",
    "DecryptionError",
    "InsecureKeyFileError",
    "KeyExistsError",
    "KeyFormatError",
    "KeyNotFoundError",
    "KeyStoreCorruptError",
    "KeyStoreError",
    "KeyStoreUnavailable",
    "ReplayError",
    "SignatureError",
    "UnknownKeyError",
]


class CryptoError(Exception):
    """Base class for every error raised by :mod:`server.crypto`."""


class DecryptionError(CryptoError):
    """A ciphertext could not be opened: wrong key, wrong associated data,
    truncated, tampered, or an unsupported format version."""


class UnknownKeyError(CryptoError):
    """A ciphertext or wrapped key names a key id that the caller does not hold."""


class KeyFormatError(CryptoError):
    """Key material or a key file is malformed (wrong length, bad encoding...)."""


class InsecureKeyFileError(KeyFormatError):
    """A private key file is readable or writable by group or others."""


class SignatureError(CryptoError):
    """A request signature is missing, malformed or does not verify."""


class ReplayError(CryptoError):
    """A signed request is stale, from the future, reuses a nonce, or its
    freshness could not be established (e.g. the nonce store failed)."""


class NonceStoreUnavailable(ReplayError):
    """The nonce store failed: the request is refused (fail closed), but it was not a replay,
    so the caller may answer "try again" rather than "not trusted"."""


class KeyStoreError(CryptoError):
    """Base class for key store failures."""


class KeyStoreUnavailable(KeyStoreError):
    """The key store cannot be read. Callers must refuse to match, never fall back."""


class KeyStoreCorruptError(KeyStoreUnavailable):
    """A key store entry exists but cannot be parsed."""


class KeyNotFoundError(UnknownKeyError, KeyStoreError):
    """The key store holds no wrapped key for the shopper (never created, or
    destroyed by crypto-shredding)."""


class KeyExistsError(KeyStoreError):
    """Refused to overwrite an existing wrapped key (that would orphan templates)."""
