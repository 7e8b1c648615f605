"""Master keys, data key wrapping and master key rotation."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from server.crypto import (
    DataKey,
    DecryptionError,
    InsecureKeyFileError,
    KeyFormatError,
    MasterKey,
    UnknownKeyError,
    open_,
    rewrap,
    seal,
    template_associated_data,
    unwrap_data_key,
    wrap_data_key,
)

SHOPPER = "shopper-7f3a"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_wrap_unwrap_round_trip() -> None:
    master = MasterKey.generate("mk-1")
    data_key = DataKey.generate()
    wrapped = wrap_data_key(master, data_key, SHOPPER)
    assert wrapped.master_key_id == "mk-1"
    assert wrapped.data_key_id == data_key.key_id
    assert data_key.key not in wrapped.ciphertext
    unwrapped = unwrap_data_key({"mk-1": master}, wrapped, SHOPPER)
    assert unwrapped.key_id == data_key.key_id
    assert unwrapped.key == data_key.key


def test_wrapped_key_bound_to_shopper() -> None:
    master = MasterKey.generate()
    wrapped = wrap_data_key(master, DataKey.generate(), SHOPPER)
    with pytest.raises(DecryptionError):
        unwrap_data_key({master.key_id: master}, wrapped, "another-shopper")


def test_wrapped_key_bound_to_data_key_id() -> None:
    master = MasterKey.generate()
    wrapped = wrap_data_key(master, DataKey.generate(), SHOPPER)
    relabelled = replace(wrapped, data_key_id=bytes(16))
    with pytest.raises(DecryptionError):
        unwrap_data_key({master.key_id: master}, relabelled, SHOPPER)


def test_unknown_master_key_id() -> None:
    master = MasterKey.generate("mk-old")
    wrapped = wrap_data_key(master, DataKey.generate(), SHOPPER)
    with pytest.raises(UnknownKeyError):
        unwrap_data_key({"mk-other": MasterKey.generate("mk-other")}, wrapped, SHOPPER)


def test_wrong_master_key_under_same_id() -> None:
    wrapped = wrap_data_key(MasterKey.generate("mk-1"), DataKey.generate(), SHOPPER)
    with pytest.raises(DecryptionError):
        unwrap_data_key({"mk-1": MasterKey.generate("mk-1")}, wrapped, SHOPPER)


@pytest.mark.parametrize("index", [0, 11, 12, 43, 59])
def test_tampered_wrapped_key(index: int) -> None:
    master = MasterKey.generate()
    wrapped = wrap_data_key(master, DataKey.generate(), SHOPPER)
    ciphertext = bytearray(wrapped.ciphertext)
    ciphertext[index] ^= 0x01
    with pytest.raises(DecryptionError):
        unwrap_data_key(
            {master.key_id: master}, replace(wrapped, ciphertext=bytes(ciphertext)), SHOPPER
        )


def test_truncated_wrapped_key_and_unknown_version() -> None:
    master = MasterKey.generate()
    wrapped = wrap_data_key(master, DataKey.generate(), SHOPPER)
    with pytest.raises(DecryptionError):
        unwrap_data_key(
            {master.key_id: master}, replace(wrapped, ciphertext=wrapped.ciphertext[:-1]), SHOPPER
        )
    with pytest.raises(DecryptionError):
        unwrap_data_key({master.key_id: master}, replace(wrapped, version=2), SHOPPER)


def test_rotation_rewraps_without_touching_templates() -> None:
    old = MasterKey.generate("mk-2024")
    new = MasterKey.generate("mk-2025")
    data_key = DataKey.generate()
    ad = template_associated_data(SHOPPER, "t-1", "pack-a")
    template_blob = seal(data_key, b"embedding", ad)
    wrapped = wrap_data_key(old, data_key, SHOPPER)

    rotated = rewrap(wrapped, {old.key_id: old}, new, SHOPPER)

    assert rotated.master_key_id == "mk-2025"
    assert rotated.data_key_id == wrapped.data_key_id
    # Only the new master key is needed from now on.
    recovered = unwrap_data_key({new.key_id: new}, rotated, SHOPPER)
    assert open_(recovered, template_blob, ad) == b"embedding"
    with pytest.raises(UnknownKeyError):
        unwrap_data_key({new.key_id: new}, wrapped, SHOPPER)


def test_rewrap_is_idempotent() -> None:
    new = MasterKey.generate("mk-new")
    wrapped = wrap_data_key(new, DataKey.generate(), SHOPPER)
    assert rewrap(wrapped, {}, new, SHOPPER) is wrapped


def test_rewrap_requires_the_old_master() -> None:
    wrapped = wrap_data_key(MasterKey.generate("mk-old"), DataKey.generate(), SHOPPER)
    with pytest.raises(UnknownKeyError):
        rewrap(wrapped, {}, MasterKey.generate("mk-new"), SHOPPER)


def test_wrapped_key_json_round_trip() -> None:
    wrapped = wrap_data_key(MasterKey.generate(), DataKey.generate(), SHOPPER)
    document = json.loads(json.dumps(wrapped.to_json_dict()))
    assert type(wrapped).from_json_dict(document) == wrapped


def test_master_key_file_is_0600_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    key = MasterKey.generate_to_file(path, "mk-file")
    assert _mode(path) == 0o600
    loaded = MasterKey.load(path)
    assert loaded.key_id == "mk-file"
    assert loaded.key == key.key
    assert not [p for p in tmp_path.iterdir() if p.name != "master.key"]  # no temp files left


def test_master_key_file_is_0600_even_with_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        MasterKey.generate_to_file(tmp_path / "master.key")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "master.key") == 0o600


def test_master_key_file_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    first = MasterKey.generate_to_file(path)
    with pytest.raises(FileExistsError):
        MasterKey.generate_to_file(path)
    assert MasterKey.load(path).key == first.key


def test_master_key_load_refuses_open_permissions(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    MasterKey.generate_to_file(path)
    path.chmod(0o644)
    with pytest.raises(InsecureKeyFileError):
        MasterKey.load(path)
    assert MasterKey.load(path, allow_insecure_permissions=True).key_id


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"format": "facepay-master-key", "version": 1, "key_id": "mk", "key": "!!"}',
        b'{"format": "facepay-master-key", "version": 1, "key_id": "mk", "key": "AAAA"}',
        b'{"format": "other", "version": 1, "key_id": "mk", "key": ""}',
        b'{"format": "facepay-master-key", "version": 1, "key_id": "bad id", "key": ""}',
    ],
)
def test_malformed_master_key_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFormatError):
        MasterKey.load(path)


def test_master_key_repr_hides_key() -> None:
    key = MasterKey.generate("mk-visible")
    assert "mk-visible" in repr(key)
    assert key.key.hex() not in repr(key)
    assert repr(key.key) not in repr(key)


@pytest.mark.parametrize(("key_id", "secret"), [("", bytes(32)), ("../x", bytes(32)), ("ok", b"")])
def test_master_key_validation(key_id: str, secret: bytes) -> None:
    with pytest.raises(KeyFormatError):
        MasterKey(key_id, secret)
