"""Sealing to the server's X25519 key: round trips, tampering, key files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.crypto import (
    SEAL_OVERHEAD,
    DecryptionError,
    InsecureKeyFileError,
    KeyFormatError,
    ServerSealingKey,
    seal_to,
)

TEMPLATE = bytes(range(256)) * 4
AD = b"kiosk-1|nonce-abc"


@pytest.fixture(scope="module")
def server_key() -> ServerSealingKey:
    return ServerSealingKey.generate()


def test_round_trip(server_key: ServerSealingKey) -> None:
    sealed = seal_to(server_key.public_bytes(), TEMPLATE, AD)
    assert len(sealed) == len(TEMPLATE) + SEAL_OVERHEAD
    assert sealed[0] == 1
    assert server_key.open(sealed, AD) == TEMPLATE


def test_each_seal_uses_a_fresh_ephemeral_key(server_key: ServerSealingKey) -> None:
    first = seal_to(server_key.public_bytes(), TEMPLATE, AD)
    second = seal_to(server_key.public_bytes(), TEMPLATE, AD)
    assert first[1:33] != second[1:33]
    assert first != second


def test_wrong_associated_data(server_key: ServerSealingKey) -> None:
    sealed = seal_to(server_key.public_bytes(), TEMPLATE, AD)
    with pytest.raises(DecryptionError):
        server_key.open(sealed, b"kiosk-2|nonce-abc")


def test_sealed_to_another_server(server_key: ServerSealingKey) -> None:
    sealed = seal_to(ServerSealingKey.generate().public_bytes(), TEMPLATE, AD)
    with pytest.raises(DecryptionError):
        server_key.open(sealed, AD)


def test_every_byte_tampered_fails(server_key: ServerSealingKey) -> None:
    sealed = seal_to(server_key.public_bytes(), b"tiny", AD)
    for index in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x80
        with pytest.raises(DecryptionError):
            server_key.open(bytes(tampered), AD)


@pytest.mark.parametrize("length", [0, 1, 33, SEAL_OVERHEAD - 1])
def test_truncated(server_key: ServerSealingKey, length: int) -> None:
    sealed = seal_to(server_key.public_bytes(), b"", AD)
    with pytest.raises(DecryptionError):
        server_key.open(sealed[:length], AD)


def test_low_order_ephemeral_key_rejected(server_key: ServerSealingKey) -> None:
    sealed = bytearray(seal_to(server_key.public_bytes(), TEMPLATE, AD))
    sealed[1:33] = bytes(32)
    with pytest.raises(DecryptionError):
        server_key.open(bytes(sealed), AD)


@pytest.mark.parametrize("public", [bytes(32), b"\x09" * 31, b""])
def test_bad_server_public_key(public: bytes) -> None:
    with pytest.raises(KeyFormatError):
        seal_to(public, TEMPLATE, AD)


@pytest.mark.parametrize("encoding", ["pem", "raw"])
def test_save_load_0600(tmp_path: Path, server_key: ServerSealingKey, encoding: str) -> None:
    path = tmp_path / f"sealing.{encoding}"
    server_key.save(path, encoding=encoding)  # type: ignore[arg-type]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = ServerSealingKey.load(path)
    assert loaded.public_bytes() == server_key.public_bytes()
    assert loaded.open(seal_to(server_key.public_bytes(), TEMPLATE, AD), AD) == TEMPLATE
    with pytest.raises(FileExistsError):
        server_key.save(path, encoding=encoding)  # type: ignore[arg-type]


def test_load_refuses_open_permissions(tmp_path: Path, server_key: ServerSealingKey) -> None:
    path = tmp_path / "sealing.pem"
    server_key.save(path)
    path.chmod(0o640)
    with pytest.raises(InsecureKeyFileError):
        ServerSealingKey.load(path)


@pytest.mark.parametrize(
    "content",
    [
        b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        b"too short",
    ],
)
def test_load_rejects_wrong_key_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "sealing.pem"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFormatError):
        ServerSealingKey.load(path)


def test_repr_shows_only_fingerprint(tmp_path: Path, server_key: ServerSealingKey) -> None:
    server_key.save(tmp_path / "sealing.raw", encoding="raw")
    raw = (tmp_path / "sealing.raw").read_bytes()
    assert raw.hex() not in repr(server_key)
    assert repr(raw) not in repr(server_key)
    assert server_key.key_id in repr(server_key)
    assert len(server_key.key_id) == 16
