"""Tamper-evident audit log: canonical records linked by a keyed hash chain.

Each record ``r_seq`` (``seq`` = FIRST_SEQ, FIRST_SEQ + 1, ...) is stored with::

    hash_seq = HMAC-SHA256(key, b"facepay-audit-v1\\x00" || hash_{seq-1}
                                || u64(seq) || u64(len(bytes)) || bytes)
    bytes    = canonical_bytes(r_seq)           hash_{FIRST_SEQ-1} = GENESIS_HASH

so editing, deleting, inserting or reordering a record breaks the chain at that
point, and :func:`verify_chain` names the first bad record.

What the chain alone cannot show: removal of the *newest* records (the chain
just looks shorter) and a wholesale rewrite by someone who holds the HMAC key.
Pass an ``anchor`` (a ``(seq, hash)`` pair published or stored elsewhere, e.g.
a periodic checkpoint) to :func:`verify_chain` to detect both up to that point.

Audit records must never contain biometric data: :func:`link_record` (the
function to use when appending) runs :func:`assert_no_biometrics` first.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias, Union

__all__ = [
    "AUDIT_DOMAIN",
    "FIRST_SEQ",
    "GENESIS_HASH",
    "HASH_SIZE",
    "AuditChainError",
    "AuditError",
    "BiometricDataError",
    "CanonicalEncodingError",
    "ChainProblem",
    "ChainRow",
    "JSONValue",
    "VerifyResult",
    "assert_no_biometrics",
    "canonical_bytes",
    "chain_hash",
    "link_record",
    "verify_chain",
]

JSONValue: TypeAlias = Union[  # noqa: UP007 - recursive alias needs the string forms
    bool, int, float, str, Sequence["JSONValue"], Mapping[str, "JSONValue"], None
]
ChainRow: TypeAlias = tuple[int, Mapping[str, JSONValue] | bytes, bytes]
"""``(seq, record, stored_hash)`` as read back from storage; ``record`` is either
the record mapping (re-encoded with :func:`canonical_bytes`) or the exact stored
canonical bytes (verified as they are, byte for byte)."""

AUDIT_DOMAIN: Final = b"facepay-audit-v1\x00"
HASH_SIZE: Final = 32
GENESIS_HASH: Final = hashlib.sha256(AUDIT_DOMAIN + b"genesis").digest()
FIRST_SEQ: Final = 1
MIN_KEY_SIZE: Final = 32
_MAX_SEQ: Final = 2**64 - 1
_MAX_DEPTH: Final = 32


class AuditError(Exception):
    """Base class for errors raised by :mod:`server.audit`."""


class CanonicalEncodingError(AuditError, ValueError):
    """A record cannot be canonically encoded (unsupported type, NaN/inf, ...)."""


class BiometricDataError(AuditError, ValueError):
    """A record contains, or looks like it contains, biometric data."""


class ChainProblem(enum.Enum):
    EDITED = "edited"
    DELETED = "deleted"
    INSERTED = "inserted"
    REORDERED = "reordered"
    MALFORMED = "malformed"
    TRUNCATED = "truncated"
    ANCHOR_MISMATCH = "anchor_mismatch"


class AuditChainError(AuditError):
    """The audit chain does not verify. Carries the problem and first bad seq."""

    def __init__(self, message: str, problem: ChainProblem, first_bad_seq: int | None) -> None:
        super().__init__(message)
        self.problem = problem
        self.first_bad_seq = first_bad_seq


# --------------------------------------------------------------------------- encoding


def _normalise(value: object, path: str, depth: int) -> JSONValue:
    if depth > _MAX_DEPTH:
        raise CanonicalEncodingError(f"record nests deeper than {_MAX_DEPTH} levels at {path}")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalEncodingError(f"non-finite float at {path}")
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8", errors="strict")
        except UnicodeEncodeError:
            raise CanonicalEncodingError(f"invalid Unicode text at {path}") from None
        return value
    if isinstance(value, list | tuple):
        return [_normalise(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, JSONValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalEncodingError(f"non-string key at {path}")
            out[key] = _normalise(item, f"{path}.{key}", depth + 1)
        return out
    raise CanonicalEncodingError(f"unsupported type {type(value).__name__} at {path}")


def canonical_bytes(record: Mapping[str, JSONValue]) -> bytes:
    """Deterministic canonical JSON: sorted keys, no whitespace, UTF-8.

    Accepts None, bool, int, finite float, str, list/tuple and str-keyed
    mappings; raises :class:`CanonicalEncodingError` for anything else (NaN or
    infinity, bytes, non-string keys, custom objects). Floats use Python's
    shortest round-trip repr; prefer integers (e.g. cents, milliseconds).
    """
    if not isinstance(record, Mapping):
        raise CanonicalEncodingError("an audit record must be a mapping")
    normalised = _normalise(record, "$", 0)
    try:
        text = json.dumps(
            normalised, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except ValueError:  # e.g. an int too large to convert to text
        raise CanonicalEncodingError("record cannot be encoded as JSON") from None
    return text.encode("utf-8")


def chain_hash(key: bytes, previous_hash: bytes, seq: int, record_bytes: bytes) -> bytes:
    """HMAC-SHA256 link of one record to the previous hash (see module docstring)."""
    if not isinstance(key, bytes) or len(key) < MIN_KEY_SIZE:
        raise ValueError(f"audit key must be at least {MIN_KEY_SIZE} bytes")
    if not isinstance(previous_hash, bytes) or len(previous_hash) != HASH_SIZE:
        raise ValueError(f"previous_hash must be {HASH_SIZE} bytes")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= _MAX_SEQ:
        raise ValueError("seq must be an int in [0, 2**64)")
    if not isinstance(record_bytes, bytes):
        raise TypeError("record_bytes must be bytes")
    message = (
        AUDIT_DOMAIN
        + previous_hash
        + seq.to_bytes(8, "big")
        + len(record_bytes).to_bytes(8, "big")
        + record_bytes
    )
    return hmac.new(key, message, hashlib.sha256).digest()


def link_record(
    key: bytes, previous_hash: bytes, seq: int, record: Mapping[str, JSONValue]
) -> bytes:
    """The hash to store with a new record: guards against biometrics, then
    :func:`chain_hash` over :func:`canonical_bytes`. The caller must serialise
    appends (one writer, or a lock on the chain head)."""
    assert_no_biometrics(record)
    return chain_hash(key, previous_hash, seq, canonical_bytes(record))


# --------------------------------------------------------------------------- biometrics guard

_FORBIDDEN_TOKENS: Final = frozenset(
    {
        "template",
        "templates",
        "embedding",
        "embeddings",
        "score",
        "scores",
        "similarity",
        "similarities",
        "distance",
        "distances",
        "confidence",
        "image",
        "images",
        "img",
        "photo",
        "photos",
        "picture",
        "pictures",
        "selfie",
        "selfies",
        "vector",
        "vectors",
        "descriptor",
        "descriptors",
        "feature",
        "features",
        "landmark",
        "landmarks",
    }
)
# A key whose last token is one of these names an identifier or a count, not the
# data itself (e.g. ``template_id``, ``template_count``).
_ALLOWED_LAST_TOKENS: Final = frozenset({"id", "ids", "count"})
_CAMEL_RE: Final = re.compile(r"([a-z0-9])([A-Z])")
_SPLIT_RE: Final = re.compile(r"[^a-z0-9]+")
_BLOB_RE: Final = re.compile(r"[A-Za-z0-9+/=_-]{256,}")
_MAX_NUMERIC_LIST: Final = 16


def _key_tokens(key: str) -> list[str]:
    return [t for t in _SPLIT_RE.split(_CAMEL_RE.sub(r"\1_\2", key).lower()) if t]


def _check_value(value: object, path: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise BiometricDataError(f"record nests too deeply at {path}")
    if isinstance(value, bytes | bytearray | memoryview):
        raise BiometricDataError(f"binary value at {path} is not allowed in audit records")
    if value is None or isinstance(value, bool | int | float):
        return
    if isinstance(value, str):
        if _BLOB_RE.fullmatch(value):
            raise BiometricDataError(f"blob-like string at {path} is not allowed")
        return
    if isinstance(value, list | tuple):
        numbers = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
        if value and len(numbers) == len(value):
            if any(isinstance(v, float) for v in numbers):
                raise BiometricDataError(f"float array at {path} is not allowed")
            if len(numbers) >= _MAX_NUMERIC_LIST:
                raise BiometricDataError(f"long numeric array at {path} is not allowed")
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise BiometricDataError(f"non-string key at {path}")
            tokens = _key_tokens(key)
            if (
                tokens
                and tokens[-1] not in _ALLOWED_LAST_TOKENS
                and _FORBIDDEN_TOKENS.intersection(tokens)
            ):
                raise BiometricDataError(f"key {path}.{key} looks like biometric data")
            _check_value(item, f"{path}.{key}", depth + 1)
        return
    raise BiometricDataError(f"unsupported value type {type(value).__name__} at {path}")


def assert_no_biometrics(record: Mapping[str, JSONValue]) -> None:
    """Reject a record that holds or looks like it holds biometric data.

    Rejected: keys naming templates, embeddings, scores, similarities,
    distances, confidences, images/photos, vectors, features or landmarks
    (matched per word, case-insensitively, in snake_case, kebab-case or
    camelCase; ``*_id``/``*_ids``/``*_count`` keys are allowed), binary values,
    arrays of floats, long numeric arrays, long base64/hex-like strings and
    non-JSON objects (e.g. numpy arrays). Raises :class:`BiometricDataError`,
    whose message names the offending key path but never the value.
    """
    if not isinstance(record, Mapping):
        raise BiometricDataError("an audit record must be a mapping")
    _check_value(record, "$", 0)


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of :func:`verify_chain`.

    ``first_bad_seq`` is: the edited record's seq (EDITED), the first missing
    seq (DELETED), the seq claimed by the foreign record (INSERTED), the first
    seq whose record is out of place (REORDERED), the seq expected where an
    unreadable row was found (MALFORMED), the first seq missing before the
    anchor (TRUNCATED) or the anchor's seq (ANCHOR_MISMATCH). ``position`` is
    the 0-based index of the offending row in the iterable, when there is one.
    ``detail`` names sequence numbers only, never record content.
    """

    ok: bool
    records_verified: int
    last_good_seq: int | None
    last_good_hash: bytes
    problem: ChainProblem | None = None
    first_bad_seq: int | None = None
    position: int | None = None
    detail: str = ""

    def raise_for_problem(self) -> None:
        """Raise :class:`AuditChainError` unless the chain verified."""
        if not self.ok:
            assert self.problem is not None
            raise AuditChainError(self.detail, self.problem, self.first_bad_seq)


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    data: bytes
    stored: bytes


def _parse_row(row: object) -> _Row | None:
    if not isinstance(row, tuple) or len(row) != 3:
        return None
    seq, record, stored = row
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= _MAX_SEQ:
        return None
    if not isinstance(stored, bytes) or len(stored) != HASH_SIZE:
        return None
    if isinstance(record, bytes):
        return _Row(seq, record, stored)
    try:
        data = canonical_bytes(record)
    except CanonicalEncodingError:
        return None
    return _Row(seq, data, stored)


class _Verifier:
    def __init__(self, key: bytes, rows: list[object], start_seq: int) -> None:
        self.key = key
        self.rows = rows
        self.start_seq = start_seq
        self._parsed: dict[int, _Row | None] = {}

    def row(self, index: int) -> _Row | None:
        if index not in self._parsed:
            self._parsed[index] = _parse_row(self.rows[index])
        return self._parsed[index]

    def genuine(self, index: int, seq: int, previous_hash: bytes) -> bool:
        """Is row ``index`` the authentic record for slot ``(seq, previous_hash)``?"""
        row = self.row(index)
        if row is None:
            return False
        expected = chain_hash(self.key, previous_hash, seq, row.data)
        return hmac.compare_digest(expected, row.stored)

    def find_genuine_after(self, position: int, seq: int, previous_hash: bytes) -> int | None:
        for index in range(position + 1, len(self.rows)):
            if self.genuine(index, seq, previous_hash):
                return index
        return None

    def displaced_genuine(self, position: int, genuine_index: int, seq: int) -> bool:
        """Is row ``position`` an authentic record that belongs at another slot?"""
        genuine_row = self.row(genuine_index)
        assert genuine_row is not None
        candidates: list[tuple[int, bytes]] = [(seq + 1, genuine_row.stored)]
        for index in range(len(self.rows)):
            other = self.row(index) if index != position else None
            if other is not None and other.seq < _MAX_SEQ:
                candidates.append((other.seq + 1, other.stored))
        return any(self.genuine(position, s, h) for s, h in candidates)


def verify_chain(
    key: bytes,
    records: Iterable[ChainRow],
    *,
    start_seq: int = FIRST_SEQ,
    start_hash: bytes = GENESIS_HASH,
    anchor: tuple[int, bytes] | None = None,
) -> VerifyResult:
    """Verify ``(seq, record, stored_hash)`` rows in storage order.

    Stops at the FIRST bad row and classifies it (see :class:`ChainProblem`):

    * ``DELETED``   - a gap in the sequence (records missing);
    * ``REORDERED`` - the record for the expected seq exists, but later;
    * ``INSERTED``  - a duplicate/backwards seq, or a foreign record in front of
      the authentic one for its slot (later records renumbered);
    * ``EDITED``    - the content does not match its hash (also what a record
      forged at the end, or a deletion followed by renumbering, looks like);
    * ``MALFORMED`` - the row cannot be read (bad types, hash length...).

    ``start_seq``/``start_hash`` verify a suffix from a trusted checkpoint.
    ``anchor=(seq, hash)`` (trusted, stored elsewhere) additionally requires the
    chain to reach ``seq`` with exactly that hash: ``TRUNCATED`` if it stops
    short, ``ANCHOR_MISMATCH`` if the hash differs.
    """
    if not isinstance(key, bytes) or len(key) < MIN_KEY_SIZE:
        raise ValueError(f"audit key must be at least {MIN_KEY_SIZE} bytes")
    if not isinstance(start_hash, bytes) or len(start_hash) != HASH_SIZE:
        raise ValueError(f"start_hash must be {HASH_SIZE} bytes")
    if anchor is not None and anchor[0] < start_seq:
        raise ValueError("anchor seq precedes start_seq")

    rows: list[object] = list(records)
    verifier = _Verifier(key, rows, start_seq)
    previous_hash = start_hash
    expected = start_seq
    anchor_hash: bytes | None = None
    seen: set[int] = set()

    def result(
        problem: ChainProblem | None = None,
        first_bad_seq: int | None = None,
        position: int | None = None,
        detail: str = "",
    ) -> VerifyResult:
        return VerifyResult(
            ok=problem is None,
            records_verified=expected - start_seq,
            last_good_seq=expected - 1 if expected > start_seq else None,
            last_good_hash=previous_hash,
            problem=problem,
            first_bad_seq=first_bad_seq,
            position=position,
            detail=detail,
        )

    for position in range(len(rows)):
        row = verifier.row(position)
        if row is None:
            return result(
                ChainProblem.MALFORMED,
                expected,
                position,
                f"row at position {position} (expected seq {expected}) is malformed",
            )
        if row.seq == expected and verifier.genuine(position, expected, previous_hash):
            seen.add(expected)
            previous_hash = row.stored
            if anchor is not None and expected == anchor[0]:
                anchor_hash = row.stored
            expected += 1
            continue

        later = verifier.find_genuine_after(position, expected, previous_hash)
        if row.seq > expected:
            if later is not None:
                return result(
                    ChainProblem.REORDERED,
                    expected,
                    position,
                    f"record seq {expected} appears out of order (found seq {row.seq} first)",
                )
            missing = (
                f"seq {expected}" if row.seq == expected + 1 else f"seqs {expected}..{row.seq - 1}"
            )
            return result(
                ChainProblem.DELETED,
                expected,
                position,
                f"records missing: {missing} (next present record is seq {row.seq})",
            )
        if row.seq < expected:
            kind = "duplicates an earlier seq" if row.seq in seen else "is out of sequence"
            return result(
                ChainProblem.INSERTED,
                row.seq,
                position,
                f"record at position {position} claims seq {row.seq}, which {kind}"
                f" (expected seq {expected})",
            )
        if later is not None:
            if verifier.displaced_genuine(position, later, expected):
                return result(
                    ChainProblem.REORDERED,
                    expected,
                    position,
                    f"record seq {expected} holds an authentic record from another position",
                )
            return result(
                ChainProblem.INSERTED,
                expected,
                position,
                f"a foreign record was inserted at seq {expected}; the authentic record"
                " for that seq follows it",
            )
        return result(
            ChainProblem.EDITED,
            expected,
            position,
            f"record seq {expected} does not match its hash (edited or forged)",
        )

    if anchor is not None:
        anchor_seq, expected_anchor_hash = anchor
        if anchor_hash is None:
            return result(
                ChainProblem.TRUNCATED,
                expected,
                None,
                f"chain ends at seq {expected - 1}, before the anchor at seq {anchor_seq}",
            )
        if not hmac.compare_digest(anchor_hash, expected_anchor_hash):
            return result(
                ChainProblem.ANCHOR_MISMATCH,
                anchor_seq,
                None,
                f"hash at seq {anchor_seq} differs from the anchor (chain rewritten)",
            )
    return result()
