"""Pure audit-log building blocks (no Flask, no DB): see :mod:`server.audit.chain`."""

from __future__ import annotations

from server.audit.chain import (
    AUDIT_DOMAIN,
    FIRST_SEQ,
    GENESIS_HASH,
    HASH_SIZE,
    AuditChainError,
    AuditError,
    BiometricDataError,
    CanonicalEncodingError,
    ChainProblem,
    ChainRow,
    JSONValue,
    VerifyResult,
    assert_no_biometrics,
    canonical_bytes,
    chain_hash,
    link_record,
    verify_chain,
)

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
