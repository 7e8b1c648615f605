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
    KeyNotFoundError,
    MasterKey,
    UnknownKeyError,
    envelope_key_id,
    open_,
    open_templates_into,
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


MASTER = MasterKey.generate("mk-1")


def _record(key: DataKey, shopper_id: str, master: MasterKey = MASTER) -> tuple[object, ...]:
    wrapped = wrap_data_key(master, key, shopper_id)
    return (wrapped.master_key_id, wrapped.data_key_id, wrapped.ciphertext, wrapped.version)


def _open_one(
    key: DataKey,
    blob: object,
    shopper_id: str = "shopper-1",
    template_id: object = "template-1",
    pack: str = "pack-a",
    size: int = len(PLAINTEXT),
    record: object = None,
) -> bytes:
    """`open_templates_into` on a single row; the buffer's bytes."""
    buffer = bytearray(size)
    owners = open_templates_into(
        {MASTER.key_id: MASTER},
        [(shopper_id, template_id, pack, blob)],  # type: ignore[list-item]
        {shopper_id: record or _record(key, shopper_id)},  # type: ignore[dict-item]
        {pack: (memoryview(buffer), size)},
    )
    assert owners == {pack: [shopper_id]}
    return bytes(buffer)


@pytest.mark.parametrize("fields", AAD_INPUTS)
def test_open_templates_into_matches_open(key: DataKey, fields: tuple[str, str, str]) -> None:
    shopper_id, template_id, pack = fields
    blob = seal(key, PLAINTEXT, template_associated_data(*fields))
    expected = open_(key, blob, template_associated_data(*fields))
    assert _open_one(key, blob, shopper_id, template_id, pack) == expected == PLAINTEXT


def test_open_templates_into_fills_buffers_per_pack_and_skips_other_rows() -> None:
    keys = {shopper: DataKey.generate() for shopper in ("s1", "s2", "s3")}
    rows, expected = [], {"pack-a": b"", "pack-b": b""}
    for index, (shopper, pack) in enumerate(
        [("s1", "pack-a"), ("s2", "pack-b"), ("s1", "pack-a"), ("s3", "pack-a"), ("s2", "pack-a")]
    ):
        plaintext = bytes([index]) * (8 if pack == "pack-a" else 4)
        template_id = f"t{index}"
        aad = template_associated_data(shopper, template_id, pack)
        rows.append((shopper, template_id, pack, seal(keys[shopper], plaintext, aad)))
        if shopper != "s3":
            expected[pack] += plaintext
    rows.append(("s1", "t9", "pack-z", b"not even an envelope"))  # a pack not asked for
    rows.append(("s3", "t8", "pack-a", b"nor this"))  # a shopper not asked for
    buffers = {"pack-a": bytearray(8 * 6), "pack-b": bytearray(4 * 6)}
    owners = open_templates_into(
        {MASTER.key_id: MASTER},
        rows,
        {"s1": _record(keys["s1"], "s1"), "s2": _record(keys["s2"], "s2")},
        {
            "pack-a": (memoryview(buffers["pack-a"]), 8),
            "pack-b": (memoryview(buffers["pack-b"]), 4),
        },
    )
    assert owners == {"pack-a": ["s1", "s1", "s2"], "pack-b": ["s2"]}
    for pack, opened in expected.items():
        assert bytes(buffers[pack][: len(opened)]) == opened
        assert not any(buffers[pack][len(opened) :])


def test_open_templates_into_fails_like_open(key: DataKey) -> None:
    blob = seal(key, PLAINTEXT, AD)
    assert _open_one(key, blob) == PLAINTEXT
    with pytest.raises(DecryptionError):  # moved to another row
        _open_one(key, blob, template_id="template-2")
    with pytest.raises(DecryptionError):
        _open_one(key, blob, pack="pack-b")
    with pytest.raises(DecryptionError):
        _open_one(key, blob, shopper_id="shopper-2")
    with pytest.raises(DecryptionError, match="truncated"):
        _open_one(key, blob[: ENVELOPE_OVERHEAD - 1])
    with pytest.raises(DecryptionError):  # shorter: not authentic either
        _open_one(key, blob[:-1])
    with pytest.raises(DecryptionError, match="version"):
        _open_one(key, b"\x02" + blob[1:])
    with pytest.raises(UnknownKeyError):
        _open_one(DataKey.generate(), blob)
    with pytest.raises(DecryptionError):  # another key under the same id
        _open_one(DataKey(key.key_id, bytes(32)), blob)
    with pytest.raises(DecryptionError):
        _open_one(key, bytearray(blob))
    with pytest.raises(ValueError):  # authentic, but not the expected length
        _open_one(key, seal(key, PLAINTEXT + b"!", AD))
    for bad in ("", None, "\ud800"):
        with pytest.raises(ValueError):
            _open_one(key, blob, template_id=bad)
    with pytest.raises(KeyNotFoundError):
        open_templates_into(
            {MASTER.key_id: MASTER},
            [("shopper-1", "template-1", "pack-a", blob)],
            {"shopper-1": None},
            {"pack-a": (memoryview(bytearray(len(PLAINTEXT))), len(PLAINTEXT))},
        )
    with pytest.raises(KeyFormatError):
        _open_one(key, blob, record=_record(key, "shopper-1")[:3])
    with pytest.raises(DecryptionError):  # wrapped for another shopper
        _open_one(key, blob, record=_record(key, "shopper-2"))
    with pytest.raises(UnknownKeyError):  # under a master key not loaded
        _open_one(key, blob, record=_record(key, "shopper-1", MasterKey.generate("mk-2")))


def test_open_templates_into_leaves_no_unauthenticated_plaintext(key: DataKey) -> None:
    good = seal(key, PLAINTEXT, template_associated_data("shopper-1", "template-1", "pack-a"))
    flipped = bytearray(seal(key, PLAINTEXT, template_associated_data("shopper-1", "t2", "pack-a")))
    flipped[40] ^= 1
    buffer = bytearray(3 * len(PLAINTEXT))
    with pytest.raises(DecryptionError):
        open_templates_into(
            {MASTER.key_id: MASTER},
            [
                ("shopper-1", "template-1", "pack-a", good),
                ("shopper-1", "t2", "pack-a", bytes(flipped)),
                ("shopper-1", "template-1", "pack-a", good),
            ],
            {"shopper-1": _record(key, "shopper-1")},
            {"pack-a": (memoryview(buffer), len(PLAINTEXT))},
        )
    assert bytes(buffer) == PLAINTEXT + bytes(2 * len(PLAINTEXT))


def test_data_key_unwrapper_unwraps_key_store_records(key: DataKey) -> None:
    master = MasterKey.generate("mk-1")
    unwrapper = DataKeyUnwrapper({master.key_id: master})
    wrapped = wrap_data_key(master, key, "shopper-1")
    record = (wrapped.master_key_id, wrapped.data_key_id, wrapped.ciphertext, wrapped.version)
    unwrapped = unwrapper.unwrap_record(record, "shopper-1")
    assert (unwrapped.key_id, unwrapped.key) == (key.key_id, key.key)
    with pytest.raises(DecryptionError):
        unwrapper.unwrap_record(record, "shopper-2")
    with pytest.raises(DecryptionError):
        unwrapper.unwrap_record((*record[:3], 2), "shopper-1")
    with pytest.raises(UnknownKeyError):
        unwrapper.unwrap_record(("mk-9", *record[1:]), "shopper-1")
    malformed: list[object] = [
        record[:3],
        None,
        (b"mk-1", *record[1:]),
        ("bad id!", *record[1:]),
        (record[0], record[1][:8], *record[2:]),
        (record[0], bytearray(record[1]), *record[2:]),
        (*record[:2], bytearray(record[2]), record[3]),
        (*record[:3], True),
        (*record[:3], "1"),
    ]
    for bad in malformed:
        with pytest.raises(KeyFormatError):
            unwrapper.unwrap_record(bad, "shopper-1")  # type: ignore[arg-type]
