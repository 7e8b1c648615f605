"""Envelope AEAD: round trips, and every kind of misuse or tampering fails closed."""

from __future__ import annotations

import pytest

from server.crypto import (
    ENVELOPE_OVERHEAD,
    CryptoError,
    DataKey,
    DecryptionError,
    KeyFormatError,
    UnknownKeyError,
    envelope_key_id,
    open_,
    seal,
    template_associated_data,
)

PLAINTEXT = b"\x01\x02template-bytes\xff" * 32
AD = template_associated_data("shopper-1", "template-1", "pack-a")


@pytest.fixture
def key() -> DataKey:
    return DataKey.generate()


def test_round_trip(key: DataKey) -> None:
    blob = seal(key, PLAINTEXT, AD)
    assert len(blob) == len(PLAINTEXT) + ENVELOPE_OVERHEAD
    assert PLAINTEXT not in blob
    assert open_(key, blob, AD) == PLAINTEXT


def test_empty_plaintext_round_trip(key: DataKey) -> None:
    assert open_(key, seal(key, b"", AD), AD) == b""


def test_nonces_are_fresh(key: DataKey) -> None:
    assert seal(key, PLAINTEXT, AD) != seal(key, PLAINTEXT, AD)


def test_header_names_the_data_key(key: DataKey) -> None:
    blob = seal(key, PLAINTEXT, AD)
    assert blob[0] == 1
    assert envelope_key_id(blob) == key.key_id


def test_wrong_associated_data_fails(key: DataKey) -> None:
    blob = seal(key, PLAINTEXT, AD)
    with pytest.raises(DecryptionError):
        open_(key, blob, AD + b"x")
    with pytest.raises(DecryptionError):
        open_(key, blob, b"")


@pytest.mark.parametrize(
    "moved_to",
    [
        ("shopper-2", "template-1", "pack-a"),
        ("shopper-1", "template-2", "pack-a"),
        ("shopper-1", "template-1", "pack-b"),
    ],
)
def test_ciphertext_moved_to_another_row_fails(
    key: DataKey, moved_to: tuple[str, str, str]
) -> None:
    blob = seal(key, PLAINTEXT, AD)
    with pytest.raises(DecryptionError):
        open_(key, blob, template_associated_data(*moved_to))


def test_template_associated_data_is_unambiguous() -> None:
    assert template_associated_data("ab", "c", "p") != template_associated_data("a", "bc", "p")
    assert template_associated_data("a", "b", "c") != template_associated_data("b", "a", "c")
    assert template_associated_data("s", "t", "p") == template_associated_data("s", "t", "p")


@pytest.mark.parametrize("bad", ["", None, 5])
def test_template_associated_data_rejects_empty_or_non_str(bad: object) -> None:
    with pytest.raises(ValueError, match="shopper_id"):
        template_associated_data(bad, "t", "p")  # type: ignore[arg-type]


@pytest.mark.parametrize("length", [0, 1, 17, ENVELOPE_OVERHEAD - 1])
def test_truncated_blob_fails(key: DataKey, length: int) -> None:
    blob = seal(key, b"", AD)
    with pytest.raises(DecryptionError, match="truncated"):
        open_(key, blob[:length], AD)


def test_truncated_tag_fails(key: DataKey) -> None:
    blob = seal(key, PLAINTEXT, AD)
    with pytest.raises(DecryptionError):
        open_(key, blob[:-1], AD)


def test_every_flipped_bit_fails(key: DataKey) -> None:
    blob = seal(key, b"short template", AD)
    for index in range(len(blob)):
        for bit in (0, 7):
            tampered = bytearray(blob)
            tampered[index] ^= 1 << bit
            # key id bytes -> UnknownKeyError, anything else -> DecryptionError
            with pytest.raises(CryptoError):
                open_(key, bytes(tampered), AD)


def test_flipped_version_byte_is_rejected(key: DataKey) -> None:
    blob = bytearray(seal(key, PLAINTEXT, AD))
    blob[0] = 2
    with pytest.raises(DecryptionError, match="version"):
        open_(key, bytes(blob), AD)


def test_unknown_key_id_fails(key: DataKey) -> None:
    blob = seal(key, PLAINTEXT, AD)
    with pytest.raises(UnknownKeyError):
        open_(DataKey.generate(), blob, AD)


def test_other_key_claiming_same_id_fails(key: DataKey) -> None:
    impostor = DataKey(key.key_id, bytes(32))
    with pytest.raises(DecryptionError):
        open_(impostor, seal(key, PLAINTEXT, AD), AD)


def test_errors_and_reprs_leak_nothing(key: DataKey) -> None:
    assert key.key.hex() not in repr(key)
    assert repr(key.key) not in repr(key)
    blob = seal(key, PLAINTEXT, AD)
    with pytest.raises(DecryptionError) as info:
        open_(key, blob, b"wrong")
    assert "template-bytes" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize(("key_id", "secret"), [(b"short", bytes(32)), (bytes(16), bytes(31))])
def test_data_key_rejects_bad_lengths(key_id: bytes, secret: bytes) -> None:
    with pytest.raises(KeyFormatError):
        DataKey(key_id, secret)
