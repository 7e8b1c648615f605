"""Audit hash chain: canonical encoding, tamper detection, biometric guard."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from server.audit import (
    FIRST_SEQ,
    GENESIS_HASH,
    AuditChainError,
    BiometricDataError,
    CanonicalEncodingError,
    ChainProblem,
    ChainRow,
    JSONValue,
    assert_no_biometrics,
    canonical_bytes,
    chain_hash,
    link_record,
    verify_chain,
)

KEY = b"k" * 32
SECRET_MARKER = "do-not-leak-7731"
Row = tuple[int, dict[str, JSONValue], bytes]


def _records(count: int) -> list[dict[str, JSONValue]]:
    return [
        {"event": "payment", "n": n, "shopper_id": f"s-{n}", "note": SECRET_MARKER}
        for n in range(FIRST_SEQ, FIRST_SEQ + count)
    ]


def _chain(records: list[dict[str, JSONValue]], key: bytes = KEY) -> list[Row]:
    rows: list[Row] = []
    previous = GENESIS_HASH
    for seq, record in enumerate(records, start=FIRST_SEQ):
        digest = link_record(key, previous, seq, record)
        rows.append((seq, record, digest))
        previous = digest
    return rows


# ----------------------------------------------------------------- canonical bytes


def test_canonical_bytes_sorted_compact_utf8() -> None:
    record: dict[str, JSONValue] = {"b": 1, "a": {"z": [1, 2, None, True], "y": "caf\u00e9 \u2713"}}
    assert canonical_bytes(record) == (
        '{"a":{"y":"caf\u00e9 \u2713","z":[1,2,null,true]},"b":1}'.encode()
    )


def test_canonical_bytes_independent_of_insertion_order() -> None:
    assert canonical_bytes({"x": 1, "y": (1, 2)}) == canonical_bytes({"y": [1, 2], "x": 1})


@pytest.mark.parametrize(
    "record",
    [
        {"v": math.nan},
        {"v": math.inf},
        {"v": [-math.inf]},
        {"v": b"bytes"},
        {"v": {1: "int key"}},
        {"v": object()},
        {"v": "\ud800"},
        {"v": {1.5}},
    ],
)
def test_canonical_bytes_rejects(record: Mapping[str, Any]) -> None:
    with pytest.raises(CanonicalEncodingError):
        canonical_bytes(record)


def test_canonical_bytes_requires_mapping() -> None:
    with pytest.raises(CanonicalEncodingError):
        canonical_bytes([1, 2])  # type: ignore[arg-type]


# ----------------------------------------------------------------- chain hash


def test_chain_hash_binds_every_input() -> None:
    base = chain_hash(KEY, GENESIS_HASH, 1, b"{}")
    assert len(base) == 32
    assert chain_hash(KEY, GENESIS_HASH, 1, b"{}") == base
    assert chain_hash(b"j" * 32, GENESIS_HASH, 1, b"{}") != base
    assert chain_hash(KEY, bytes(32), 1, b"{}") != base
    assert chain_hash(KEY, GENESIS_HASH, 2, b"{}") != base
    assert chain_hash(KEY, GENESIS_HASH, 1, b"{ }") != base


@pytest.mark.parametrize(
    ("key", "previous", "seq"),
    [
        (b"short", GENESIS_HASH, 1),
        (KEY, b"x", 1),
        (KEY, GENESIS_HASH, -1),
        (KEY, GENESIS_HASH, True),
    ],
)
def test_chain_hash_validates(key: bytes, previous: bytes, seq: int) -> None:
    with pytest.raises(ValueError):
        chain_hash(key, previous, seq, b"{}")


# ----------------------------------------------------------------- verification


def test_intact_chain_verifies() -> None:
    rows = _chain(_records(6))
    result = verify_chain(KEY, rows)
    assert result.ok
    assert result.records_verified == 6
    assert result.last_good_seq == 6
    assert result.last_good_hash == rows[-1][2]
    result.raise_for_problem()


def test_empty_chain_verifies() -> None:
    result = verify_chain(KEY, [])
    assert result.ok
    assert result.last_good_seq is None
    assert result.last_good_hash == GENESIS_HASH


def test_stored_canonical_bytes_verify_byte_for_byte() -> None:
    rows: list[ChainRow] = [
        (seq, canonical_bytes(record), digest) for seq, record, digest in _chain(_records(3))
    ]
    assert verify_chain(KEY, rows).ok
    seq, data, digest = rows[1]
    assert isinstance(data, bytes)
    rows[1] = (seq, data.replace(b":", b": ", 1), digest)  # same JSON value, other bytes
    assert verify_chain(KEY, rows).problem is ChainProblem.EDITED


def _assert_problem(rows: Sequence[ChainRow], problem: ChainProblem, first_bad_seq: int) -> None:
    result = verify_chain(KEY, rows)
    assert not result.ok
    assert result.problem is problem, result.detail
    assert result.first_bad_seq == first_bad_seq, result.detail
    if problem is not ChainProblem.INSERTED:
        expected_last = first_bad_seq - 1 if first_bad_seq > FIRST_SEQ else None
        assert result.last_good_seq == expected_last
    assert SECRET_MARKER not in result.detail
    with pytest.raises(AuditChainError) as info:
        result.raise_for_problem()
    assert info.value.problem is problem
    assert info.value.first_bad_seq == first_bad_seq


def test_edited_record() -> None:
    rows = _chain(_records(6))
    seq, record, digest = rows[2]
    rows[2] = (seq, {**record, "shopper_id": "someone-else"}, digest)
    _assert_problem(rows, ChainProblem.EDITED, 3)


def test_edited_hash() -> None:
    rows = _chain(_records(6))
    seq, record, digest = rows[3]
    rows[3] = (seq, record, bytes([digest[0] ^ 1]) + digest[1:])
    _assert_problem(rows, ChainProblem.EDITED, 4)


def test_first_of_several_problems_is_named() -> None:
    rows = _chain(_records(6))
    for index in (4, 1):
        seq, record, digest = rows[index]
        rows[index] = (seq, {**record, "n": -1}, digest)
    _assert_problem(rows, ChainProblem.EDITED, 2)


def test_deleted_record() -> None:
    rows = _chain(_records(6))
    del rows[2]
    _assert_problem(rows, ChainProblem.DELETED, 3)


def test_deleted_run_of_records() -> None:
    rows = _chain(_records(6))
    del rows[1:4]
    result = verify_chain(KEY, rows)
    assert result.problem is ChainProblem.DELETED
    assert result.first_bad_seq == 2
    assert "2..4" in result.detail


def test_deleted_first_record() -> None:
    rows = _chain(_records(3))
    del rows[0]
    _assert_problem(rows, ChainProblem.DELETED, 1)


def test_inserted_record_with_renumbering() -> None:
    rows = _chain(_records(6))
    forged: Row = (3, {"event": "refund", "n": 3}, bytes(32))
    renumbered = [(seq + 1, record, digest) for seq, record, digest in rows[2:]]
    _assert_problem([*rows[:2], forged, *renumbered], ChainProblem.INSERTED, 3)


def test_inserted_record_with_duplicate_seq() -> None:
    rows = _chain(_records(6))
    forged: Row = (2, {"event": "refund"}, bytes(32))
    _assert_problem([*rows[:2], forged, *rows[2:]], ChainProblem.INSERTED, 2)


def test_inserted_copy_of_an_earlier_record() -> None:
    rows = _chain(_records(4))
    _assert_problem([*rows, rows[1]], ChainProblem.INSERTED, 2)


def test_reordered_rows_seq_intact() -> None:
    rows = _chain(_records(6))
    rows[2], rows[3] = rows[3], rows[2]  # storage order differs from seq order
    _assert_problem(rows, ChainProblem.REORDERED, 3)


def test_reordered_contents_under_sorted_seqs() -> None:
    rows = _chain(_records(6))
    # Rows read ORDER BY seq, but the contents of seq 3 and 4 were swapped.
    (s3, r3, h3), (s4, r4, h4) = rows[2], rows[3]
    rows[2], rows[3] = (s3, r4, h4), (s4, r3, h3)
    _assert_problem(rows, ChainProblem.REORDERED, 3)


def test_reordered_non_adjacent() -> None:
    rows = _chain(_records(7))
    (s2, r2, h2), (s5, r5, h5) = rows[1], rows[4]
    rows[1], rows[4] = (s2, r5, h5), (s5, r2, h2)
    _assert_problem(rows, ChainProblem.REORDERED, 2)


def test_wrong_key_fails_at_first_record() -> None:
    _assert_problem(_chain(_records(3), key=b"x" * 32), ChainProblem.EDITED, 1)


def test_malformed_row() -> None:
    rows: list[Any] = list(_chain(_records(3)))
    rows[1] = (2, rows[1][1], b"short")
    result = verify_chain(KEY, rows)
    assert result.problem is ChainProblem.MALFORMED
    assert result.first_bad_seq == 2
    assert result.position == 1


def test_truncated_tail_detected_with_anchor() -> None:
    rows = _chain(_records(6))
    anchor = (5, rows[4][2])
    assert verify_chain(KEY, rows, anchor=anchor).ok
    assert verify_chain(KEY, rows[:5], anchor=anchor).ok
    assert verify_chain(KEY, rows[:4]).ok  # undetectable without an anchor
    result = verify_chain(KEY, rows[:4], anchor=anchor)
    assert result.problem is ChainProblem.TRUNCATED
    assert result.first_bad_seq == 5


def test_rewritten_chain_detected_with_anchor() -> None:
    original = _chain(_records(4))
    forged_records = _records(4)
    forged_records[1]["shopper_id"] = "rewritten"
    forged = _chain(forged_records)  # an insider with the key re-forged every hash
    assert verify_chain(KEY, forged).ok
    result = verify_chain(KEY, forged, anchor=(3, original[2][2]))
    assert result.problem is ChainProblem.ANCHOR_MISMATCH
    assert result.first_bad_seq == 3


def test_suffix_verification_from_checkpoint() -> None:
    rows = _chain(_records(6))
    result = verify_chain(KEY, rows[3:], start_seq=4, start_hash=rows[2][2])
    assert result.ok
    assert result.records_verified == 3


# ----------------------------------------------------------------- biometric guard


@pytest.mark.parametrize(
    "record",
    [
        {"template": "x"},
        {"Templates": []},
        {"embedding": "x"},
        {"faceEmbedding": "x"},
        {"match_score": 1},
        {"liveness-score": 1},
        {"similarity": 1},
        {"cosine_distance": 1},
        {"image": "x"},
        {"photoUrl": "x"},
        {"details": {"scores": 1}},
        {"matches": [{"ok": True, "similarity": 1}]},
        {"blob": b"\x00\x01"},
        {"blob": bytearray(3)},
        {"vec": [0.1, 0.2]},
        {"vec": [0.5]},
        {"vec": list(range(128))},
        {"vec": np.zeros(4, dtype=np.float32)},
        {"vec": np.float32(0.5)},
        {"sealed": "QUFB" * 100},
        {"hex": "ab" * 200},
    ],
)
def test_biometric_data_rejected(record: Mapping[str, Any]) -> None:
    with pytest.raises(BiometricDataError) as info:
        assert_no_biometrics(record)
    assert "QUFB" not in str(info.value)
    assert "abab" not in str(info.value)
    with pytest.raises(BiometricDataError):
        link_record(KEY, GENESIS_HASH, 1, record)


@pytest.mark.parametrize(
    "record",
    [
        {"event": "enrolled", "template_id": "t-1", "shopper_id": "s-1", "pack_id": "p"},
        {"templateIds": ["t-1", "t-2"], "template_count": 2},
        {"amount_cents": 1299, "currency": "EUR", "duration_ms": 12.5},
        {"kiosk_id": "k-1", "request_sha256": "ab" * 32, "bbox_count": 1},
        {"flags": [1, 2, 3], "interface": "usb", "scored": None},
    ],
)
def test_ordinary_audit_records_allowed(record: Mapping[str, JSONValue]) -> None:
    assert_no_biometrics(record)
    assert len(link_record(KEY, GENESIS_HASH, 1, record)) == 32
