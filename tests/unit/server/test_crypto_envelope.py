"""Envelope AEAD: round trips, and every kind of misuse or tampering fails closed."""

from __future__ import annotations

import pytest

from server.crypto import (
    ENVELOPE_OVERHEAD,
    CryptoError,
    DataKey,
    DataKeyUnwrapper,
    DecryptionError,
    KeyFormatError,
    MasterKey,
    TemplateOpener,
    UnknownKeyError,
    envelope_key_id,
    open_,
    seal,
    template_associated_data,
    template_associated_data_fast,
    unwrap_data_key,
    wrap_data_key,
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


# ----------------------------------------------------------------- bulk (cold start) helpers

AAD_INPUTS = [
    ("shopper-1", "template-1", "pack-a"),
    ("ab", "c", "p"),
    ("a", "bc", "p"),
    ("0f8e4c2a-9d2b-4c1e-8f3a-6b7d5e4c3b2a", "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f", "dlib@1"),
    ("caf\u00e9", "\u6a21\u677f", "pack-\U0001f600"),
    ("x" * 300, "y", "z" * 70_000),
]


@pytest.mark.parametrize("fields", AAD_INPUTS)
def test_fast_template_associated_data_is_identical(fields: tuple[str, str, str]) -> None:
    assert template_associated_data_fast(*fields) == template_associated_data(*fields)


@pytest.mark.parametrize("bad", ["", None, 5, "\ud800"])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_fast_template_associated_data_rejects_the_same_input(bad: object, position: int) -> None:
    fields: list[object] = ["s", "t", "p"]
    fields[position] = bad
    with pytest.raises(ValueError):
        template_associated_data(*fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        template_associated_data_fast(*fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("fields", AAD_INPUTS)
def test_template_opener_matches_open(key: DataKey, fields: tuple[str, str, str]) -> None:
    shopper_id, template_id, pack = fields
    blob = seal(key, PLAINTEXT, template_associated_data(*fields))
    opener = TemplateOpener(key, shopper_id)
    assert opener.open(blob, template_id, pack) == open_(
        key, blob, template_associated_data(*fields)
    )
    assert opener.open(blob, template_id, pack) == PLAINTEXT  # cached pack field reused


def test_template_opener_fails_like_open(key: DataKey) -> None:
    blob = seal(key, PLAINTEXT, AD)
    opener = TemplateOpener(key, "shopper-1")
    assert opener.open(blob, "template-1", "pack-a") == PLAINTEXT
    with pytest.raises(DecryptionError):  # moved to another row
        opener.open(blob, "template-2", "pack-a")
    with pytest.raises(DecryptionError):
        opener.open(blob, "template-1", "pack-b")
    with pytest.raises(DecryptionError):
        TemplateOpener(key, "shopper-2").open(blob, "template-1", "pack-a")
    with pytest.raises(DecryptionError, match="truncated"):
        opener.open(blob[: ENVELOPE_OVERHEAD - 1], "template-1", "pack-a")
    with pytest.raises(DecryptionError, match="version"):
        opener.open(b"\x02" + blob[1:], "template-1", "pack-a")
    with pytest.raises(UnknownKeyError):
        TemplateOpener(DataKey.generate(), "shopper-1").open(blob, "template-1", "pack-a")
    with pytest.raises(DecryptionError):
        TemplateOpener(DataKey(key.key_id, bytes(32)), "shopper-1").open(
            blob, "template-1", "pack-a"
        )
    with pytest.raises(DecryptionError):
        opener.open(bytearray(blob), "template-1", "pack-a")  # type: ignore[arg-type]


def test_data_key_unwrapper_matches_unwrap(key: DataKey) -> None:
    old, new = MasterKey.generate("mk-1"), MasterKey.generate("mk-2")
    masters = {old.key_id: old, new.key_id: new}
    unwrapper = DataKeyUnwrapper(masters)
    for master in (old, new, old):
        wrapped = wrap_data_key(master, key, "shopper-1")
        assert unwrapper.unwrap(wrapped, "shopper-1").key == key.key
        assert unwrap_data_key(masters, wrapped, "shopper-1").key == key.key
        with pytest.raises(DecryptionError):
            unwrapper.unwrap(wrapped, "shopper-2")
    with pytest.raises(UnknownKeyError):
        unwrapper.unwrap(wrap_data_key(MasterKey.generate("mk-3"), key, "s"), "s")
