"""Key stores: persistence, fail-closed reads, crypto-shredding and rotation."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.crypto import (
    BulkKeyStore,
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
    SqliteKeyStore,
    UnknownKeyError,
    open_,
    rotate_master_key,
    seal,
    template_associated_data,
    unwrap_data_key,
    wrap_data_key,
)


@pytest.fixture(params=["file", "sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    if request.param == "file":
        yield FileKeyStore(tmp_path / "keys", create=True)
    elif request.param == "sqlite":
        sqlite_store = SqliteKeyStore(tmp_path / "keys" / "keystore.sqlite3", create=True)
        yield sqlite_store
        sqlite_store.close()
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


# ----------------------------------------------------------------- SqliteKeyStore specifics


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteKeyStore]:
    store = SqliteKeyStore(tmp_path / "keys" / "keystore.sqlite3", create=True)
    yield store
    store.close()


def test_sqlite_store_permissions(sqlite_store: SqliteKeyStore, master: MasterKey) -> None:
    _enrol(sqlite_store, master, "shopper-a")
    assert stat.S_IMODE(sqlite_store.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(sqlite_store.path.stat().st_mode) == 0o600
    # a rollback journal, deleted at commit: nothing is left beside the file
    assert sorted(p.name for p in sqlite_store.path.parent.iterdir()) == ["keystore.sqlite3"]


def test_sqlite_store_persists_across_instances(tmp_path: Path, master: MasterKey) -> None:
    path = tmp_path / "keystore.sqlite3"
    first = SqliteKeyStore(path, create=True)
    data_key = _enrol(first, master, "s")
    first.close()
    reopened = SqliteKeyStore(path)
    assert unwrap_data_key({master.key_id: master}, reopened.get("s"), "s").key == data_key.key
    reopened.close()


def test_sqlite_destroy_overwrites_the_wrapped_key_in_the_file(
    sqlite_store: SqliteKeyStore, master: MasterKey
) -> None:
    wrapped = {}
    for index in range(400):  # several pages, so deletes and page rebalancing both happen
        shopper_id = f"shopper-{index:04d}"
        wrapped[shopper_id] = wrap_data_key(master, DataKey.generate(), shopper_id)
    sqlite_store.put_many(wrapped.items())
    destroyed = sorted(wrapped)[::3]
    for shopper_id in destroyed:
        assert sqlite_store.destroy(shopper_id) is True
        with pytest.raises(KeyNotFoundError):
            sqlite_store.get(shopper_id)
    assert sqlite_store.destroy(destroyed[0]) is False

    files = list(sqlite_store.path.parent.iterdir())
    assert files == [sqlite_store.path]  # no journal or WAL holding a copy
    raw = sqlite_store.path.read_bytes()
    for shopper_id, key in wrapped.items():
        assert (key.ciphertext in raw) is (shopper_id not in destroyed)
    assert sqlite_store.shopper_ids() == sorted(set(wrapped) - set(destroyed))


def test_sqlite_rotation_leaves_no_old_wrapping_behind(
    sqlite_store: SqliteKeyStore, master: MasterKey
) -> None:
    keys = {shopper: _enrol(sqlite_store, master, shopper) for shopper in ("a", "b", "c")}
    old = {shopper: sqlite_store.get(shopper).ciphertext for shopper in keys}
    new = MasterKey.generate("mk-2")
    assert rotate_master_key(sqlite_store, {master.key_id: master}, new) == 3
    raw = sqlite_store.path.read_bytes()
    for shopper, data_key in keys.items():
        assert old[shopper] not in raw
        assert unwrap_data_key({new.key_id: new}, sqlite_store.get(shopper), shopper).key == (
            data_key.key
        )


def test_sqlite_put_many_is_all_or_nothing(sqlite_store: SqliteKeyStore, master: MasterKey) -> None:
    _enrol(sqlite_store, master, "b")
    batch = [(s, wrap_data_key(master, DataKey.generate(), s)) for s in ("a", "b", "c")]
    with pytest.raises(KeyExistsError):
        sqlite_store.put_many(batch)
    assert sqlite_store.shopper_ids() == ["b"]
    sqlite_store.put_many([batch[0], batch[2]])
    bulk = sqlite_store.wrapped_keys()
    assert sorted(bulk) == ["a", "b", "c"]
    assert bulk["a"] == batch[0][1] and bulk["b"] == sqlite_store.get("b")


def test_sqlite_missing_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreUnavailable):
        SqliteKeyStore(tmp_path / "absent.sqlite3")
    assert not (tmp_path / "absent.sqlite3").exists()


def test_sqlite_vanished_file_is_unavailable_not_missing(
    sqlite_store: SqliteKeyStore, master: MasterKey
) -> None:
    _enrol(sqlite_store, master, "shopper-a")
    shutil.rmtree(sqlite_store.path.parent)  # e.g. the volume is not mounted
    with pytest.raises(KeyStoreUnavailable):
        sqlite_store.get("shopper-a")
    with pytest.raises(KeyStoreUnavailable):
        sqlite_store.wrapped_keys()
    with pytest.raises(KeyStoreUnavailable):
        sqlite_store.destroy("shopper-a")


def test_sqlite_replaced_file_is_unavailable(
    sqlite_store: SqliteKeyStore, tmp_path: Path, master: MasterKey
) -> None:
    _enrol(sqlite_store, master, "shopper-a")
    other = SqliteKeyStore(tmp_path / "other.sqlite3", create=True)
    other.close()
    os.replace(other.path, sqlite_store.path)  # e.g. an old copy restored over it
    with pytest.raises(KeyStoreUnavailable):
        sqlite_store.get("shopper-a")


@pytest.mark.parametrize(
    "content", [b"not a database at all" * 100, b"SQLite format 3\x00" + b"x" * 200]
)
def test_sqlite_corrupt_file_fails_closed(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "keystore.sqlite3"
    path.write_bytes(content)
    with pytest.raises(KeyStoreUnavailable):
        SqliteKeyStore(path)


def test_sqlite_refuses_a_foreign_database(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (x)")
    connection.close()
    with pytest.raises(KeyStoreCorruptError):
        SqliteKeyStore(path, create=True)


def test_sqlite_malformed_row_fails_closed(sqlite_store: SqliteKeyStore, master: MasterKey) -> None:
    _enrol(sqlite_store, master, "shopper-a")
    with sqlite3.connect(sqlite_store.path) as connection:
        connection.execute("UPDATE wrapped_keys SET data_key_id = x'00'")
    connection.close()
    with pytest.raises(KeyStoreCorruptError):
        sqlite_store.get("shopper-a")
    with pytest.raises(KeyStoreCorruptError):
        sqlite_store.wrapped_keys()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_sqlite_unreadable_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "keystore.sqlite3"
    SqliteKeyStore(path, create=True).close()
    path.chmod(0)
    with pytest.raises(KeyStoreUnavailable):
        SqliteKeyStore(path)


def test_instance_key_store_is_sqlite_unless_a_directory(tmp_path: Path) -> None:
    from server.config import load_settings
    from server.keys import key_paths, load_keys

    settings = load_settings({"instance": str(tmp_path / "new")})
    assert isinstance(load_keys(settings).key_store, SqliteKeyStore)
    assert key_paths(settings)["key_store"] == tmp_path / "new" / "keystore.sqlite3"

    (tmp_path / "old" / "keystore").mkdir(parents=True)  # an instance from before
    settings = load_settings({"instance": str(tmp_path / "old")})
    assert isinstance(load_keys(settings).key_store, FileKeyStore)

    configured = tmp_path / "elsewhere"
    configured.mkdir()
    settings = load_settings({"instance": str(tmp_path / "new"), "key_store": str(configured)})
    assert isinstance(load_keys(settings).key_store, FileKeyStore)


@pytest.fixture(params=["sqlite", "memory"])
def bulk_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BulkKeyStore]:
    if request.param == "sqlite":
        sqlite_store = SqliteKeyStore(tmp_path / "keys" / "keystore.sqlite3", create=True)
        yield sqlite_store
        sqlite_store.close()
    else:
        yield InMemoryKeyStore()


def test_bulk_records_of_some_shoppers(bulk_store: BulkKeyStore, master: MasterKey) -> None:
    """`wrapped_key_records(ids)`: exactly those shoppers' records that exist, unvalidated
    fields as `get` returns them (the gallery reads a sorted chunk of shoppers at a time)."""
    store = bulk_store
    ids = ["a", "b", "b2", "c", "d", "\u00e9", "\U0001f600"]
    for shopper_id in ids:
        _enrol(store, master, shopper_id)
    every = store.wrapped_key_records()
    assert sorted(every) == sorted(ids)
    for wanted in (["b", "c", "zz"], ["\u00e9", "\U0001f600"], ["a"], ["d", "b"], ids):
        found = store.wrapped_key_records(wanted)
        assert sorted(found) == sorted(set(wanted) & set(ids))  # not "b2" between "b" and "c"
        for shopper_id, record in found.items():
            wrapped = store.get(shopper_id)
            assert record == (
                wrapped.master_key_id,
                wrapped.data_key_id,
                wrapped.ciphertext,
                wrapped.version,
            )
    assert store.wrapped_key_records([]) == {} and store.wrapped_key_records(["x"]) == {}
    store.destroy("c")
    assert sorted(store.wrapped_key_records(["b", "c", "d"])) == ["b", "d"]
