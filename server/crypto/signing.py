"""Ed25519 request signing for kiosks, and a replay-protection policy.

A kiosk signs :func:`canonical_request` over (method, path, SHA-256 of the body,
timestamp, nonce, kiosk id). The server checks, in this order
(:func:`verify_signed_request` does all three):

1. timestamp freshness (cheap, and keeps stale junk out of the nonce store);
2. the signature (so unauthenticated traffic cannot fill the nonce store);
3. nonce uniqueness per kiosk (records the nonce).

``path`` is the request target exactly as sent on the wire, including the query
string if there is one (non-ASCII must already be percent-encoded); the server
must canonicalise from the raw request, not from a re-parsed URL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from server.crypto._encoding import encode_fields
from server.crypto.errors import NonceStoreUnavailable, ReplayError, SignatureError

__all__ = [
    "DEFAULT_WINDOW_SECONDS",
    "Clock",
    "NonceSeen",
    "ReplayGuard",
    "body_sha256_hex",
    "canonical_request",
    "kiosk_public_key_bytes",
    "sign_request",
    "verify_request",
    "verify_signed_request",
]

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_SECONDS: Final = 300
_REQUEST_DOMAIN: Final = b"facepay/kiosk-request/v1"
_METHOD_RE: Final = re.compile(r"[A-Z]{1,16}")
_PATH_RE: Final = re.compile(r"/[\x21-\x7e]{0,2047}")
_SHA256_HEX_RE: Final = re.compile(r"[0-9a-f]{64}")
_NONCE_RE: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")
_KIOSK_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SIGNATURE_B64_RE: Final = re.compile(r"[A-Za-z0-9_-]{86}")
_MAX_TIMESTAMP: Final = 2**63 - 1

Clock = Callable[[], float]
"""Returns the current time in seconds since the Unix epoch (e.g. ``time.time``)."""

NonceSeen = Callable[[str, str], bool]
"""``seen(kiosk_id, nonce)``: atomically record the nonce and return ``True`` if it
had already been recorded (e.g. INSERT into a table with a UNIQUE constraint and
map the integrity error to ``True``). A check-then-insert pair is racy."""


def body_sha256_hex(body: bytes) -> str:
    """Lowercase hex SHA-256 of a request body (use ``b""`` for no body)."""
    return hashlib.sha256(body).hexdigest()


def _check_timestamp_type(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise ValueError("timestamp must be an int (Unix seconds)")
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise ValueError("timestamp out of range")


def _check_nonce(nonce: str) -> None:
    if not isinstance(nonce, str) or _NONCE_RE.fullmatch(nonce) is None:
        raise ValueError("nonce must be 16..128 base64url characters")


def _check_kiosk_id(kiosk_id: str) -> None:
    if not isinstance(kiosk_id, str) or _KIOSK_ID_RE.fullmatch(kiosk_id) is None:
        raise ValueError("kiosk_id must match [A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def canonical_request(
    *,
    method: str,
    path: str,
    body_sha256_hex: str,
    timestamp: int,
    nonce: str,
    kiosk_id: str,
) -> bytes:
    """The exact bytes a kiosk signs. Raises ``ValueError`` on a malformed field.

    Keyword-only, so two ``str`` fields can never be swapped by position.

    Fields are validated strictly (upper-case method, ASCII path starting with
    ``/``, lower-case 64-char hex digest, non-negative int timestamp, base64url
    nonce of 16..128 chars, restricted kiosk id) and encoded length-prefixed
    under a domain string, so no two distinct requests share a canonical form.
    """
    if not isinstance(method, str) or _METHOD_RE.fullmatch(method) is None:
        raise ValueError("method must be an upper-case HTTP method")
    if not isinstance(path, str) or _PATH_RE.fullmatch(path) is None:
        raise ValueError("path must start with '/' and be printable ASCII without spaces")
    if not isinstance(body_sha256_hex, str) or _SHA256_HEX_RE.fullmatch(body_sha256_hex) is None:
        raise ValueError("body_sha256_hex must be 64 lower-case hex characters")
    _check_timestamp_type(timestamp)
    _check_nonce(nonce)
    _check_kiosk_id(kiosk_id)
    return encode_fields(
        _REQUEST_DOMAIN, method, path, body_sha256_hex, str(timestamp), nonce, kiosk_id
    )


def kiosk_public_key_bytes(private_key: Ed25519PrivateKey) -> bytes:
    """Raw 32-byte Ed25519 public key (what the server registers for a kiosk)."""
    return private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def sign_request(
    private_key: Ed25519PrivateKey,
    *,
    method: str,
    path: str,
    body_sha256_hex: str,
    timestamp: int,
    nonce: str,
    kiosk_id: str,
) -> str:
    """Sign a request; returns the signature as unpadded base64url (86 chars)."""
    message = canonical_request(
        method=method,
        path=path,
        body_sha256_hex=body_sha256_hex,
        timestamp=timestamp,
        nonce=nonce,
        kiosk_id=kiosk_id,
    )
    signature = private_key.sign(message)
    return base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii")


def _decode_signature(signature: str) -> bytes:
    if not isinstance(signature, str) or _SIGNATURE_B64_RE.fullmatch(signature) is None:
        raise SignatureError("signature is not 86 unpadded base64url characters")
    try:
        raw = base64.urlsafe_b64decode(signature + "==")
    except (binascii.Error, ValueError):
        raise SignatureError("signature is not valid base64url") from None
    # Reject non-canonical encodings (non-zero trailing bits).
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != signature:
        raise SignatureError("signature is not canonically encoded")
    return raw


def verify_request(
    public_key_bytes: bytes,
    signature: str,
    *,
    method: str,
    path: str,
    body_sha256_hex: str,
    timestamp: int,
    nonce: str,
    kiosk_id: str,
) -> None:
    """Verify a kiosk request signature; raises :class:`SignatureError` on any
    problem (malformed field, malformed key or signature, mismatch). Does not
    check freshness or replay: see :class:`ReplayGuard`."""
    try:
        message = canonical_request(
            method=method,
            path=path,
            body_sha256_hex=body_sha256_hex,
            timestamp=timestamp,
            nonce=nonce,
            kiosk_id=kiosk_id,
        )
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"malformed signed request field: {exc}") from None
    raw_signature = _decode_signature(signature)
    if not isinstance(public_key_bytes, bytes) or len(public_key_bytes) != 32:
        raise SignatureError("kiosk public key must be 32 raw bytes")
    try:
        public_key = Ed25519PublicKey.from_public_bytes(public_key_bytes)
        public_key.verify(raw_signature, message)
    except InvalidSignature:
        raise SignatureError("request signature does not verify") from None
    except ValueError:
        raise SignatureError("kiosk public key is invalid") from None


class ReplayGuard:
    """Freshness and nonce-reuse policy for signed requests.

    A timestamp is fresh if ``|now - timestamp| <= window_seconds``. Because a
    request may carry a timestamp up to ``window_seconds`` in the future, the
    nonce store must keep nonces for at least :attr:`nonce_retention_seconds`
    (twice the window) after first seeing them.

    Fails closed: if the clock or the nonce store misbehaves (raises, returns a
    non-finite time), the request is rejected with :class:`ReplayError`.
    """

    __slots__ = ("_clock", "_seen", "_window")

    def __init__(
        self,
        seen: NonceSeen,
        *,
        clock: Clock = time.time,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
    ) -> None:
        if isinstance(window_seconds, bool) or not isinstance(window_seconds, int):
            raise TypeError("window_seconds must be an int")
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        self._seen = seen
        self._clock = clock
        self._window = window_seconds

    def __repr__(self) -> str:
        return f"ReplayGuard(window_seconds={self._window})"

    @property
    def window_seconds(self) -> int:
        return self._window

    @property
    def nonce_retention_seconds(self) -> int:
        """Minimum time the nonce store must remember a nonce."""
        return 2 * self._window

    def check_timestamp(self, timestamp: int) -> None:
        """Raise :class:`ReplayError` unless ``timestamp`` is within the window."""
        try:
            _check_timestamp_type(timestamp)
        except ValueError as exc:
            raise ReplayError(f"malformed timestamp: {exc}") from None
        try:
            now = float(self._clock())
        except Exception as exc:  # fail closed on any clock failure
            raise ReplayError("clock unavailable") from exc
        if not math.isfinite(now):
            raise ReplayError("clock returned a non-finite time")
        skew = now - timestamp
        if skew > self._window:
            raise ReplayError("request timestamp is too old")
        if -skew > self._window:
            raise ReplayError("request timestamp is too far in the future")

    def check_nonce(self, kiosk_id: str, nonce: str) -> None:
        """Record the nonce; raise :class:`ReplayError` if it was already used
        by this kiosk or the nonce store fails."""
        try:
            _check_kiosk_id(kiosk_id)
            _check_nonce(nonce)
        except ValueError as exc:
            raise ReplayError(f"malformed replay fields: {exc}") from None
        try:
            already_seen = self._seen(kiosk_id, nonce)
        except Exception as exc:  # fail closed on any store failure
            raise NonceStoreUnavailable("nonce store unavailable") from exc
        if already_seen is not False:
            if already_seen is not True:
                raise ReplayError("nonce store returned a non-boolean answer")
            logger.warning("rejected a reused request nonce from kiosk %s", kiosk_id)
            raise ReplayError("request nonce was already used")

    def check(self, *, kiosk_id: str, nonce: str, timestamp: int) -> None:
        """:meth:`check_timestamp` then :meth:`check_nonce`."""
        self.check_timestamp(timestamp)
        self.check_nonce(kiosk_id, nonce)


def verify_signed_request(
    public_key_bytes: bytes,
    signature: str,
    guard: ReplayGuard,
    *,
    method: str,
    path: str,
    body_sha256_hex: str,
    timestamp: int,
    nonce: str,
    kiosk_id: str,
) -> None:
    """Full server-side check: freshness, then signature, then nonce reuse.

    Raises :class:`ReplayError` or :class:`SignatureError`.
    """
    guard.check_timestamp(timestamp)
    verify_request(
        public_key_bytes,
        signature,
        method=method,
        path=path,
        body_sha256_hex=body_sha256_hex,
        timestamp=timestamp,
        nonce=nonce,
        kiosk_id=kiosk_id,
    )
    guard.check_nonce(kiosk_id, nonce)
