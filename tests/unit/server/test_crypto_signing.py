"""Ed25519 kiosk request signatures and the replay guard."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.crypto import (
    DEFAULT_WINDOW_SECONDS,
    ReplayError,
    ReplayGuard,
    SignatureError,
    body_sha256_hex,
    canonical_request,
    kiosk_public_key_bytes,
    sign_request,
    verify_request,
    verify_signed_request,
)

NOW = 1_750_000_000
KIOSK_KEY = Ed25519PrivateKey.generate()
KIOSK_PUBLIC = kiosk_public_key_bytes(KIOSK_KEY)
FIELDS: dict[str, Any] = {
    "method": "POST",
    "path": "/v1/payments?store=12",
    "body_sha256_hex": body_sha256_hex(b'{"amount_cents": 1299}'),
    "timestamp": NOW,
    "nonce": "bm9uY2UtMDAwMDAwMDE",
    "kiosk_id": "kiosk-0042",
}


def _signature(**overrides: Any) -> str:
    return sign_request(KIOSK_KEY, **{**FIELDS, **overrides})


def test_sign_and_verify() -> None:
    signature = _signature()
    assert len(signature) == 86
    assert "=" not in signature
    verify_request(KIOSK_PUBLIC, signature, **FIELDS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "PUT"),
        ("path", "/v1/payments?store=13"),
        ("body_sha256_hex", body_sha256_hex(b'{"amount_cents": 9999}')),
        ("timestamp", NOW + 1),
        ("nonce", "bm9uY2UtMDAwMDAwMDI"),
        ("kiosk_id", "kiosk-0043"),
    ],
)
def test_altered_field_is_rejected(field: str, value: object) -> None:
    signature = _signature()
    with pytest.raises(SignatureError):
        verify_request(KIOSK_PUBLIC, signature, **{**FIELDS, field: value})


def test_wrong_public_key() -> None:
    other = kiosk_public_key_bytes(Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError):
        verify_request(other, _signature(), **FIELDS)


@pytest.mark.parametrize("public", [b"", bytes(31), "not-bytes"])
def test_malformed_public_key(public: Any) -> None:
    with pytest.raises(SignatureError):
        verify_request(public, _signature(), **FIELDS)


def _non_canonical(signature: str) -> str:
    # The last char of 86 carries 2 payload bits + 4 zero bits; set a zero bit.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return signature[:-1] + alphabet[alphabet.index(signature[-1]) | 1]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:-1],
        lambda s: s + "==",
        lambda s: s.replace(s[0], "+" if s[0] != "+" else "/", 1),
        lambda s: base64.b64encode(base64.urlsafe_b64decode(s + "==")).decode(),
        _non_canonical,
        lambda s: "",
        lambda s: None,
    ],
)
def test_malformed_signature(mangle: Callable[[str], Any]) -> None:
    signature = _signature()
    mangled = mangle(signature)
    if mangled == signature:
        pytest.skip("mangling happened to be a no-op for this signature")
    with pytest.raises(SignatureError):
        verify_request(KIOSK_PUBLIC, mangled, **FIELDS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "post"),
        ("path", "v1/payments"),
        ("path", "/with space"),
        ("path", "/caf\u00e9"),
        ("body_sha256_hex", "A" * 64),
        ("body_sha256_hex", "a" * 63),
        ("timestamp", True),
        ("timestamp", -1),
        ("timestamp", 1.5),
        ("nonce", "short"),
        ("nonce", "has space in it!!!"),
        ("kiosk_id", ""),
        ("kiosk_id", "kiosk 1"),
    ],
)
def test_malformed_fields(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field.split("_", maxsplit=1)[0]):
        canonical_request(**{**FIELDS, field: value})
    with pytest.raises(SignatureError):
        verify_request(KIOSK_PUBLIC, _signature(), **{**FIELDS, field: value})


def test_canonical_request_is_unambiguous_and_domain_separated() -> None:
    base = canonical_request(**FIELDS)
    assert base.startswith(bytes([len(b"facepay/kiosk-request/v1")]) + b"facepay/kiosk-request/v1")
    shifted = canonical_request(**{**FIELDS, "path": "/v1/a", "nonce": "b" + FIELDS["nonce"]})
    other = canonical_request(**{**FIELDS, "path": "/v1/ab", "nonce": FIELDS["nonce"]})
    assert shifted != other
    assert canonical_request(**FIELDS) == base


# ----------------------------------------------------------------- replay guard


class NonceStore:
    """Atomic check-and-record, like an INSERT with a UNIQUE constraint."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()
        self.calls = 0

    def __call__(self, kiosk_id: str, nonce: str) -> bool:
        self.calls += 1
        if (kiosk_id, nonce) in self.seen:
            return True
        self.seen.add((kiosk_id, nonce))
        return False


def _guard(
    store: NonceStore, now: float = NOW, window: int = DEFAULT_WINDOW_SECONDS
) -> ReplayGuard:
    return ReplayGuard(store, clock=lambda: now, window_seconds=window)


@pytest.mark.parametrize("skew", [0, 300, -300, 120])
def test_fresh_timestamps_accepted(skew: int) -> None:
    _guard(NonceStore()).check(kiosk_id="k1", nonce="n" * 16, timestamp=NOW - skew)


@pytest.mark.parametrize(("skew", "match"), [(301, "old"), (-301, "future"), (86_400, "old")])
def test_stale_or_future_rejected(skew: int, match: str) -> None:
    store = NonceStore()
    with pytest.raises(ReplayError, match=match):
        _guard(store).check(kiosk_id="k1", nonce="n" * 16, timestamp=NOW - skew)
    assert store.calls == 0  # a stale request never touches the nonce store


def test_configurable_window() -> None:
    guard = _guard(NonceStore(), window=30)
    assert guard.nonce_retention_seconds == 60
    guard.check_timestamp(NOW - 30)
    with pytest.raises(ReplayError):
        guard.check_timestamp(NOW - 31)
    with pytest.raises(ValueError):
        ReplayGuard(NonceStore(), window_seconds=0)


def test_reused_nonce_rejected_per_kiosk() -> None:
    guard = _guard(NonceStore())
    guard.check(kiosk_id="k1", nonce="n" * 16, timestamp=NOW)
    with pytest.raises(ReplayError, match="already used"):
        guard.check(kiosk_id="k1", nonce="n" * 16, timestamp=NOW)
    guard.check(kiosk_id="k2", nonce="n" * 16, timestamp=NOW)  # other kiosk, own namespace


def test_nonce_store_failure_fails_closed() -> None:
    def broken(kiosk_id: str, nonce: str) -> bool:
        raise ConnectionError("database down")

    with pytest.raises(ReplayError, match="unavailable"):
        ReplayGuard(broken, clock=lambda: NOW).check(kiosk_id="k", nonce="n" * 16, timestamp=NOW)


def test_non_boolean_answer_fails_closed() -> None:
    guard = ReplayGuard(lambda k, n: 1, clock=lambda: NOW)  # type: ignore[arg-type,return-value]
    with pytest.raises(ReplayError):
        guard.check(kiosk_id="k", nonce="n" * 16, timestamp=NOW)


@pytest.mark.parametrize("clock_value", [float("nan"), float("inf")])
def test_bad_clock_fails_closed(clock_value: float) -> None:
    with pytest.raises(ReplayError):
        _guard(NonceStore(), now=clock_value).check_timestamp(NOW)


def test_raising_clock_fails_closed() -> None:
    def clock() -> float:
        raise OSError("no time")

    with pytest.raises(ReplayError):
        ReplayGuard(NonceStore(), clock=clock).check_timestamp(NOW)


def test_verify_signed_request_full_flow() -> None:
    store = NonceStore()
    guard = _guard(store)
    signature = _signature()
    verify_signed_request(KIOSK_PUBLIC, signature, guard, **FIELDS)
    with pytest.raises(ReplayError):
        verify_signed_request(KIOSK_PUBLIC, signature, guard, **FIELDS)


def test_forged_request_does_not_burn_the_nonce() -> None:
    store = NonceStore()
    guard = _guard(store)
    forged = sign_request(Ed25519PrivateKey.generate(), **FIELDS)
    with pytest.raises(SignatureError):
        verify_signed_request(KIOSK_PUBLIC, forged, guard, **FIELDS)
    assert store.calls == 0
    verify_signed_request(KIOSK_PUBLIC, _signature(), guard, **FIELDS)


def test_stale_request_rejected_before_signature_check() -> None:
    guard = _guard(NonceStore(), now=NOW + 1000)
    with pytest.raises(ReplayError):
        verify_signed_request(KIOSK_PUBLIC, "garbage", guard, **FIELDS)
