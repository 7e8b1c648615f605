"""Key stores: persistence, fail-closed reads, crypto-shredding and rotation."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.crypto import (
    DataKey,
    DecryptionError,
    FileKeyStore,
    InMemoryKeyStore,
    KeyExistsError,
    KeyNotFoundError,
    KeyStore,
    KeyStoreCorruptError,
    KeyStoreError,
    KeyStoreUnavailable,
    MasterKey,
    UnknownKeyError,
    open_,
    rotate_master_key,
    seal,
    template_associated_data,
    unwrap_data_key,
    wrap_data_key,
)


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    if request.param == "file":
        yield FileKeyStore(tmp_path / "keys", create=True)
    else:
        yield InMemoryKeyStore()


@pytest.fixture
def master() -> MasterKey:
    return MasterKey.generate("mk-1")


def _enrol(store: KeyStore, master: MasterKey, shopper_id: str) -> DataKey:
    data_key = DataKey.generate()
    store.put(shopper_id, wrap_data_key(master, data_key, shopper_id))
    return data_key


def test_put_get_round_trip(store: KeyStore, master: MasterKey) -> None:
    data_key = _enrol(store, master, "shopper-a")
    wrapped = store.get("shopper-a")
    assert unwrap_data_key({master.key_id: master}, wrapped, "shopper-a").key == data_key.key


def test_put_refuses_to_overwrite(store: KeyStore, master: MasterKey) -> None:
    _enrol(store, master, "shopper-a")
    with pytest.raises(KeyExistsError):
        _enrol(store, master, "shopper-a")


def test_missing_shopper(store: KeyStore) -> None:
    with pytest.raises(KeyNotFoundError):
        store.get("nobody")
    assert isinstance(KeyNotFoundError("x"), UnknownKeyError)


def test_list_and_iterate(store: KeyStore, master: MasterKey) -> None:
    for shopper_id in ("c", "a", "b"):
        _enrol(store, master, shopper_id)
    assert store.shopper_ids() == ["a", "b", "c"]
    assert sorted(shopper_id for shopper_id, _ in store.items()) == ["a", "b", "c"]


def test_destroy_makes_every_template_copy_unreadable(store: KeyStore, master: MasterKey) -> None:
    data_key = _enrol(store, master, "shopper-a")
    _enrol(store, master, "shopper-b")
    ad = template_associated_data("shopper-a", "t-1", "pack-a")
    template = seal(data_key, b"embedding", ad)
    backup_copy = bytes(template)  # e.g. in a database backup
    del data_key  # the server only keeps keys transiently

    assert store.destroy("shopper-a") is True

    with pytest.raises(KeyNotFoundError):
        store.get("shopper-a")
    assert store.shopper_ids() == ["shopper-b"]
    # Without the wrapped key there is no way to the data key; a guessed key fails.
    with pytest.raises(DecryptionError):
        open_(DataKey(template[1:17], os.urandom(32)), backup_copy, ad)
    # Other shoppers are unaffected; destroying twice is harmless.
    assert store.get("shopper-b").master_key_id == "mk-1"
    assert store.destroy("shopper-a") is False


def test_replace_only_accepts_same_data_key(store: KeyStore, master: MasterKey) -> None:
    _enrol(store, master, "shopper-a")
    other = wrap_data_key(master, DataKey.generate(), "shopper-a")
    with pytest.raises(KeyStoreError):
        store.replace("shopper-a", other)
    with pytest.raises(KeyNotFoundError):
        store.replace("nobody", other)


def test_rotate_master_key(store: KeyStore, master: MasterKey) -> None:
    keys = {shopper: _enrol(store, master, shopper) for shopper in ("a", "b", "c")}
    new = MasterKey.generate("mk-2")

    assert rotate_master_key(store, {master.key_id: master}, new) == 3
    assert rotate_master_key(store, {}, new) == 0  # resumable / idempotent

    for shopper, data_key in keys.items():
        wrapped = store.get(shopper)
        assert wrapped.master_key_id == "mk-2"
        assert unwrap_data_key({new.key_id: new}, wrapped, shopper).key == data_key.key


def test_rotation_stops_on_an_entry_it_cannot_unwrap(store: KeyStore, master: MasterKey) -> None:
    _enrol(store, master, "a")
    store.put("b", wrap_data_key(MasterKey.generate("mk-lost"), DataKey.generate(), "b"))
    with pytest.raises(UnknownKeyError):
        rotate_master_key(store, {master.key_id: master}, MasterKey.generate("mk-2"))


# ----------------------------------------------------------------- FileKeyStore specifics


def _entry(store: FileKeyStore) -> Path:
    (entry,) = [p for p in store.directory.iterdir() if p.suffix == ".json"]
    return entry


def test_file_store_permissions(tmp_path: Path, master: MasterKey) -> None:
    store = FileKeyStore(tmp_path / "keys", create=True)
    _enrol(store, master, "shopper-a")
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    entry = _entry(store)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert "shopper-a" not in entry.name  # names are hashes; no path tricks


def test_file_store_persists_across_instances(tmp_path: Path, master: MasterKey) -> None:
    data_key = _enrol(FileKeyStore(tmp_path / "keys", create=True), master, "s")
    reopened = FileKeyStore(tmp_path / "keys")
    assert unwrap_data_key({master.key_id: master}, reopened.get("s"), "s").key == data_key.key


def test_file_store_path_traversal_ids_are_safe(tmp_path: Path, master: MasterKey) -> None:
    store = FileKeyStore(tmp_path / "keys", create=True)
    _enrol(store, master, "../../etc/passwd")
    assert store.shopper_ids() == ["../../etc/passwd"]
    assert [p.parent for p in tmp_path.rglob("*.json")] == [store.directory]


def test_destroy_overwrites_the_entry_before_unlinking(tmp_path: Path, master: MasterKey) -> None:
    store = FileKeyStore(tmp_path / "keys", create=True)
    _enrol(store, master, "shopper-a")
    other_name = tmp_path / "other-link"
    os.link(_entry(store), other_name)  # a second name for the same inode
    store.destroy("shopper-a")
    content = other_name.read_bytes()
    assert content and set(content) == {0}


def test_missing_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreUnavailable):
        FileKeyStore(tmp_path / "absent")


def test_vanished_directory_is_unavailable_not_missing(tmp_path: Path, master: MasterKey) -> None:
    store = FileKeyStore(tmp_path / "keys", create=True)
    _enrol(store, master, "shopper-a")
    shutil.rmtree(store.directory)  # e.g. the volume is not mounted
    with pytest.raises(KeyStoreUnavailable):
        store.get("shopper-a")
    with pytest.raises(KeyStoreUnavailable):
        store.shopper_ids()
    with pytest.raises(KeyStoreUnavailable):
        store.destroy("shopper-a")


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[]", b'{"format": "facepay-wrapped-key", "version": 1}'],
)
def test_corrupt_entry_fails_closed(tmp_path: Path, master: MasterKey, content: bytes) -> None:
    store = FileKeyStore(tmp_path / "keys", create=True)
    _enrol(store, master, "shopper-a")
    _entry(store).write_bytes(content)
    with pytest.raises(KeyStoreCorruptError) as info:
        store.get("shopper-a")
    assert isinstance(info.value, KeyStoreUnavailable)


def test_entry_copied_to_another_shopper_is_rejected(tmp_path: Path, master: MasterKey) -> None:
    store = FileKeyStore(tmp_path / "keys", create=True)
    _enrol(store, master, "victim")
    victim_entry = _entry(store)
    _enrol(store, master, "attacker")
    attacker_entry = next(p for p in store.directory.iterdir() if p != victim_entry)
    shutil.copyfile(victim_entry, attacker_entry)
    with pytest.raises(KeyStoreCorruptError):
        store.get("attacker")


def test_temporary_files_are_ignored(tmp_path: Path, master: MasterKey) -> None:
    store = FileKeyStore(tmp_path / "keys", create=True)
    _enrol(store, master, "s")
    (store.directory / ".leftover.tmp").write_bytes(b"junk")
    assert store.shopper_ids() == ["s"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_entry_is_unavailable(tmp_path: Path, master: MasterKey) -> None:
    store = FileKeyStore(tmp_path / "keys", create=True)
    _enrol(store, master, "s")
    _entry(store).chmod(0)
    with pytest.raises(KeyStoreUnavailable):
        store.get("s")
