"""Pure cryptographic building blocks for the facepay server (no Flask, no DB).

Everything fails closed: errors raise a :class:`CryptoError` subclass and never
fall back to plaintext. See the submodules for formats and rationale:

* :mod:`server.crypto.envelope`  - AES-256-GCM envelopes for template ciphertexts
* :mod:`server.crypto.keyring`   - master keys, data keys, wrapping, rotation
* :mod:`server.crypto.keystore`  - wrapped-key storage and crypto-shredding
* :mod:`server.crypto.sealing`   - kiosk -> server sealing to an X25519 key
* :mod:`server.crypto.signing`   - Ed25519 kiosk request signatures, replay guard
"""

from __future__ import annotations

from server.crypto.envelope import (
    ENVELOPE_OVERHEAD,
    ENVELOPE_VERSION,
    envelope_key_id,
    open_,
    open_templates_into,
    seal,
    template_associated_data,
    template_associated_data_fast,
)
from server.crypto.errors import (
    CryptoError,
    DecryptionError,
    InsecureKeyFileError,
    KeyExistsError,
    KeyFormatError,
    KeyNotFoundError,
    KeyStoreCorruptError,
    KeyStoreError,
    KeyStoreUnavailable,
    NonceStoreUnavailable,
    ReplayError,
    SignatureError,
    UnknownKeyError,
)
from server.crypto.keyring import (
    DataKey,
    DataKeyUnwrapper,
    MasterKey,
    WrappedKey,
    rewrap,
    unwrap_data_key,
    wrap_data_key,
)
from server.crypto.keystore import (
    BulkKeyStore,
    FileKeyStore,
    InMemoryKeyStore,
    KeyStore,
    SqliteKeyStore,
    WrappedKeyRecord,
    rotate_master_key,
)
from server.crypto.sealing import SEAL_OVERHEAD, SEAL_VERSION, ServerSealingKey, seal_to
from server.crypto.signing import (
    DEFAULT_WINDOW_SECONDS,
    ReplayGuard,
    body_sha256_hex,
    canonical_request,
    kiosk_public_key_bytes,
    sign_request,
    verify_request,
    verify_signed_request,
)

__all__ = [
    "DEFAULT_WINDOW_SECONDS",
    "ENVELOPE_OVERHEAD",
    "ENVELOPE_VERSION",
    "SEAL_OVERHEAD",
    "SEAL_VERSION",
    "BulkKeyStore",
    "CryptoError",
    "DataKey",
    "DataKeyUnwrapper",
    "DecryptionError",
    "FileKeyStore",
    "InMemoryKeyStore",
    "InsecureKeyFileError",
    "KeyExistsError",
    "KeyFormatError",
    "KeyNotFoundError",
    "KeyStore",
    "KeyStoreCorruptError",
    "KeyStoreError",
    "KeyStoreUnavailable",
    "MasterKey",
    "NonceStoreUnavailable",
    "ReplayError",
    "ReplayGuard",
    "ServerSealingKey",
    "SignatureError",
    "SqliteKeyStore",
    "UnknownKeyError",
    "WrappedKey",
    "WrappedKeyRecord",
    "body_sha256_hex",
    "canonical_request",
    "envelope_key_id",
    "kiosk_public_key_bytes",
    "open_",
    "open_templates_into",
    "rewrap",
    "rotate_master_key",
    "seal",
    "seal_to",
    "sign_request",
    "template_associated_data",
    "template_associated_data_fast",
    "unwrap_data_key",
    "verify_request",
    "verify_signed_request",
    "wrap_data_key",
]
