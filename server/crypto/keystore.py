"""Storage of wrapped per-shopper data keys, kept apart from the main database.

Crypto-shredding: template ciphertexts (in the main database *and all of its
backups*) can only be opened with the shopper's data key, which exists only
wrapped, in this store. :meth:`KeyStore.destroy` removes that wrapped key, after
which every copy of the shopper's templates is unreadable, even to someone who
holds the master key. This only holds if the key store itself is **not** backed
up together with the main database (or its backups expire within the erasure
deadline): an old copy of a wrapped key plus the master key recovers the data key.

Two implementations (plus an in-memory one for tests):

``SqliteKeyStore`` (the default): one SQLite file, *its own* file, never the main
database (the main database and its backups must not hold the keys).

* reading every key at start-up is one query (``items()``): the gallery's cold
  start reads ~10^5-10^6 keys, which one-file-per-shopper made the slowest step
  (an open/read/JSON parse per shopper);
* ``PRAGMA secure_delete=ON``: ``destroy`` (and ``replace``) overwrite the old
  row's bytes with zeros inside the file, in the same transaction, so no copy of
  a destroyed wrapped key survives in free pages or free space within a page;
* rollback journal (``journal_mode=DELETE``, never WAL): the journal only exists
  during a write transaction and is deleted at commit, so no copy of a destroyed
  key is left in a WAL waiting for a checkpoint. (The journal does hold the page's
  pre-image while the ``destroy`` transaction runs; see Limits.)
* creation is ``INSERT`` on a primary key, so concurrent workers (threads or
  processes; SQLite locks the file) can never overwrite a key; every write is an
  ACID transaction with ``synchronous=FULL``;
* the file is 0600 in a 0700 directory, and can live on its own volume with its
  own backup policy.

``FileKeyStore``: one 0600 JSON file per shopper in a directory (``destroy`` is
an overwrite and ``unlink`` of a small file; every write is a temporary file,
fsync and ``rename``/``link``). Simple and dependency-free, but O(n) files and
an open/parse per key, fine up to ~10^5 shoppers. File names are
``sha256(shopper_id).hex() + ".json"``; the shopper id is stored inside the file.
Still selectable: ``server.keys`` uses it when the configured key store path is
a directory.

Limits: neither store can guarantee the bytes are gone from the physical
medium (SSD wear levelling, copy-on-write or journalling file systems,
snapshots, a deleted SQLite rollback journal or a replaced temporary file whose
blocks are free but not overwritten). Put the store on an encrypted volume and
keep no long-lived snapshots of it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Set
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from server.crypto._fs import PRIVATE_FILE_MODE, fsync_dir, write_private_file
from server.crypto.errors import (
    CryptoError,
    KeyExistsError,
    KeyFormatError,
    KeyNotFoundError,
    KeyStoreCorruptError,
    KeyStoreError,
    KeyStoreUnavailable,
)
from server.crypto.keyring import MasterKey, WrappedKey, rewrap

__all__ = [
    "BulkKeyStore",
    "FileKeyStore",
    "InMemoryKeyStore",
    "KeyStore",
    "SqliteKeyStore",
    "WrappedKeyRecord",
    "rotate_master_key",
]

logger = logging.getLogger(__name__)

_ENTRY_FORMAT: Final = "facepay-wrapped-key"
_ENTRY_VERSION: Final = 1
_ENTRY_NAME_RE: Final = re.compile(r"[0-9a-f]{64}\.json")


class KeyStore(Protocol):
    """Where wrapped data keys live, one per shopper."""

    def get(self, shopper_id: str) -> WrappedKey:
        """Return the shopper's wrapped key.

        Raises ``KeyNotFoundError`` if there is none (never created or destroyed)
        and ``KeyStoreUnavailable`` if the store cannot be read.
        """
        ...

    def put(self, shopper_id: str, wrapped: WrappedKey) -> None:
        """Store a new wrapped key; ``KeyExistsError`` if the shopper has one."""
        ...

    def replace(self, shopper_id: str, wrapped: WrappedKey) -> None:
        """Replace the wrapped key with a re-wrapped copy of the *same* data key
        (master key rotation). Refuses a different data key id."""
        ...

    def destroy(self, shopper_id: str) -> bool:
        """Irrecoverably remove the shopper's wrapped key (crypto-shredding).
        Returns whether an entry existed."""
        ...

    def shopper_ids(self) -> list[str]:
        """All shopper ids that currently have a wrapped key."""
        ...

    def items(self) -> Iterator[tuple[str, WrappedKey]]:
        """Iterate over ``(shopper_id, wrapped_key)`` pairs."""
        ...


# The fields of a WrappedKey in order (master_key_id, data_key_id, ciphertext, version), as
# stored and not yet validated: ``WrappedKey(*record)`` validates them (KeyFormatError).
WrappedKeyRecord = tuple[str, bytes, bytes, int]


@runtime_checkable
class BulkKeyStore(KeyStore, Protocol):
    """A key store that can hand over every wrapped key at once, cheaply (cold start)."""

    def wrapped_keys(self) -> dict[str, WrappedKey]:
        """Every ``shopper_id -> wrapped_key``, read in one go; fails closed like ``get``."""
        ...

    def wrapped_key_records(
        self, shopper_ids: Collection[str] | None = None
    ) -> dict[str, WrappedKeyRecord]:
        """Like :meth:`wrapped_keys`, but the records are not validated yet (so that the
        caller can do it where it uses them, e.g. in worker processes). Given
        ``shopper_ids``, only theirs (those the store has): cheapest for ids that are close
        in sort order, e.g. a slice of a sorted list."""
        ...


def _check_shopper_id(shopper_id: str) -> None:
    if not isinstance(shopper_id, str) or not shopper_id:
        raise ValueError("shopper_id must be a non-empty str")


class FileKeyStore:
    """A :class:`KeyStore` holding one 0600 JSON file per shopper in a directory.

    See the module docstring for the rationale and the crypto-shredding caveats.
    """

    def __init__(self, directory: str | os.PathLike[str], *, create: bool = False) -> None:
        self._dir = Path(directory)
        try:
            if create:
                self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self._dir.is_dir():
                raise KeyStoreUnavailable("key store directory does not exist")
        except OSError as exc:
            raise KeyStoreUnavailable("key store directory is not accessible") from exc

    def __repr__(self) -> str:
        return f"FileKeyStore({str(self._dir)!r})"

    @property
    def directory(self) -> Path:
        return self._dir

    def _path(self, shopper_id: str) -> Path:
        _check_shopper_id(shopper_id)
        digest = hashlib.sha256(shopper_id.encode("utf-8", errors="strict")).hexdigest()
        return self._dir / f"{digest}.json"

    def _ensure_dir(self) -> None:
        if not self._dir.is_dir():
            raise KeyStoreUnavailable("key store directory has disappeared")

    def _read(self, path: Path, shopper_id: str | None) -> tuple[str, WrappedKey]:
        """Read one entry; ``shopper_id`` (if given) must match the stored one."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self._ensure_dir()
            raise KeyNotFoundError("no wrapped key for this shopper") from None
        except OSError as exc:
            raise KeyStoreUnavailable("key store entry cannot be read") from exc
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise KeyStoreCorruptError("key store entry is not valid JSON") from None
        if (
            not isinstance(document, dict)
            or document.get("format") != _ENTRY_FORMAT
            or document.get("version") != _ENTRY_VERSION
            or not isinstance(document.get("shopper_id"), str)
            or not document["shopper_id"]
            or not isinstance(document.get("wrapped"), dict)
        ):
            raise KeyStoreCorruptError("key store entry has an unexpected structure")
        stored_id: str = document["shopper_id"]
        if shopper_id is not None and stored_id != shopper_id:
            raise KeyStoreCorruptError("key store entry belongs to another shopper")
        if path.name != self._path(stored_id).name:
            raise KeyStoreCorruptError("key store entry is stored under the wrong name")
        try:
            wrapped = WrappedKey.from_json_dict(document["wrapped"])
        except KeyFormatError:
            raise KeyStoreCorruptError("key store entry holds a malformed wrapped key") from None
        return stored_id, wrapped

    def _write(self, shopper_id: str, wrapped: WrappedKey, *, overwrite: bool) -> None:
        document = {
            "format": _ENTRY_FORMAT,
            "version": _ENTRY_VERSION,
            "shopper_id": shopper_id,
            "wrapped": wrapped.to_json_dict(),
        }
        data = json.dumps(document, sort_keys=True, ensure_ascii=True).encode("ascii")
        self._ensure_dir()
        write_private_file(self._path(shopper_id), data, overwrite=overwrite)

    def get(self, shopper_id: str) -> WrappedKey:
        return self._read(self._path(shopper_id), shopper_id)[1]

    def put(self, shopper_id: str, wrapped: WrappedKey) -> None:
        try:
            self._write(shopper_id, wrapped, overwrite=False)
        except FileExistsError:
            raise KeyExistsError("shopper already has a wrapped key") from None
        except OSError as exc:
            raise KeyStoreUnavailable("key store entry cannot be written") from exc

    def replace(self, shopper_id: str, wrapped: WrappedKey) -> None:
        current = self.get(shopper_id)
        if current.data_key_id != wrapped.data_key_id:
            raise KeyStoreError("replace() only accepts a re-wrap of the same data key")
        try:
            self._write(shopper_id, wrapped, overwrite=True)
        except OSError as exc:
            raise KeyStoreUnavailable("key store entry cannot be written") from exc

    def destroy(self, shopper_id: str) -> bool:
        path = self._path(shopper_id)
        try:
            fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            self._ensure_dir()
            return False
        except OSError as exc:
            raise KeyStoreUnavailable("key store entry cannot be destroyed") from exc
        try:
            try:
                size = os.fstat(fd).st_size
                # Best-effort overwrite before unlinking (see module docstring).
                view = memoryview(b"\x00" * size)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(path)
            fsync_dir(self._dir)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # a concurrent destroy won the race
                return True
            raise KeyStoreUnavailable("key store entry cannot be destroyed") from exc
        logger.info("destroyed one wrapped data key (crypto-shredding)")
        return True

    def _entry_paths(self) -> list[Path]:
        try:
            names = os.listdir(self._dir)
        except OSError as exc:
            raise KeyStoreUnavailable("key store directory cannot be listed") from exc
        return [self._dir / name for name in sorted(names) if _ENTRY_NAME_RE.fullmatch(name)]

    def items(self) -> Iterator[tuple[str, WrappedKey]]:
        for path in self._entry_paths():
            try:
                yield self._read(path, None)
            except KeyNotFoundError:
                continue  # destroyed between listing and reading

    def shopper_ids(self) -> list[str]:
        return sorted(shopper_id for shopper_id, _ in self.items())


_SQLITE_APPLICATION_ID: Final = 0x66704B53  # "fpKS"
_SQLITE_SCHEMA_VERSION: Final = 1
_SQLITE_BUSY_TIMEOUT_S: Final = 10.0
_SQLITE_CORRUPT_CODES: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_SQLITE_SCHEMA: Final = """
CREATE TABLE wrapped_keys (
    shopper_id TEXT PRIMARY KEY NOT NULL CHECK (length(shopper_id) > 0),
    version INTEGER NOT NULL,
    master_key_id TEXT NOT NULL,
    data_key_id BLOB NOT NULL,
    ciphertext BLOB NOT NULL
) STRICT, WITHOUT ROWID
"""
_SELECT_ONE: Final = (
    "SELECT version, master_key_id, data_key_id, ciphertext FROM wrapped_keys WHERE shopper_id = ?"
)
_SELECT_ALL: Final = (
    "SELECT shopper_id, version, master_key_id, data_key_id, ciphertext FROM wrapped_keys "
    "ORDER BY shopper_id"
)
_SELECT_RECORDS: Final = (
    "SELECT shopper_id, master_key_id, data_key_id, ciphertext, version FROM wrapped_keys"
)
# Shopper ids sort by code point in Python and by byte in SQLite's BINARY collation (the
# column's): the same order for UTF-8 text, so a range holds every id between its ends.
_SELECT_RECORDS_BETWEEN: Final = f"{_SELECT_RECORDS} WHERE shopper_id BETWEEN ? AND ?"
_INSERT: Final = (
    "INSERT INTO wrapped_keys (shopper_id, version, master_key_id, data_key_id, ciphertext) "
    "VALUES (?, ?, ?, ?, ?)"
)

_Row = tuple[object, object, object, object]


def _sqlite_error(exc: sqlite3.Error, what: str) -> KeyStoreError:
    """Map an SQLite error to a (fail-closed) key store error; the message names ``what`` only."""
    if getattr(exc, "sqlite_errorcode", None) in _SQLITE_CORRUPT_CODES:
        return KeyStoreCorruptError(f"key store file is corrupt ({what})")
    return KeyStoreUnavailable(f"key store file cannot be used ({what})")


def _wrapped_from_row(row: _Row) -> WrappedKey:
    version, master_key_id, data_key_id, ciphertext = row
    if (
        not isinstance(version, int)
        or not isinstance(master_key_id, str)
        or not isinstance(data_key_id, bytes)
        or not isinstance(ciphertext, bytes)
    ):
        raise KeyStoreCorruptError("key store row has an unexpected structure")
    try:
        return WrappedKey(master_key_id, data_key_id, ciphertext, version)
    except KeyFormatError:
        raise KeyStoreCorruptError("key store row holds a malformed wrapped key") from None


def _row_from_wrapped(shopper_id: str, wrapped: WrappedKey) -> tuple[str, int, str, bytes, bytes]:
    return (
        shopper_id,
        wrapped.version,
        wrapped.master_key_id,
        wrapped.data_key_id,
        wrapped.ciphertext,
    )


class SqliteKeyStore:
    """A :class:`KeyStore` in its own SQLite file (0600), with secure delete.

    See the module docstring for the rationale and the crypto-shredding caveats.
    Safe to share between threads (one connection per process, behind a lock) and
    between processes (SQLite file locking; a forked child opens its own
    connection). Every failure to read or write raises :class:`KeyStoreUnavailable`
    (or its subclass :class:`KeyStoreCorruptError`): it never answers "no key"
    when it cannot tell.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self._path = Path(path).absolute()
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self._identity: tuple[int, int] = (0, 0)
        if create:
            self._create_file()
        with self._lock:
            self._connect()

    def __repr__(self) -> str:
        return f"SqliteKeyStore({str(self._path)!r})"

    @property
    def path(self) -> Path:
        return self._path

    # ------------------------------------------------------------ connection handling

    def _create_file(self) -> None:
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(self._path, flags, PRIVATE_FILE_MODE)
        except FileExistsError:
            return
        except OSError as exc:
            raise KeyStoreUnavailable("key store file cannot be created") from exc
        try:
            if os.name == "posix":
                os.fchmod(fd, PRIVATE_FILE_MODE)  # independent of the umask
        finally:
            os.close(fd)
        fsync_dir(self._path.parent)

    def _file_identity(self) -> tuple[int, int]:
        try:
            info = os.stat(self._path)
        except OSError as exc:
            raise KeyStoreUnavailable("key store file is not accessible") from exc
        return info.st_dev, info.st_ino

    def _connect(self) -> sqlite3.Connection:
        """Open (or re-open after a fork) the connection; the caller holds the lock."""
        identity = self._file_identity()  # mode=rw below never creates the file
        try:
            connection = sqlite3.connect(
                f"{self._path.as_uri()}?mode=rw",
                uri=True,
                timeout=_SQLITE_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, "open") from exc
        try:
            self._configure(connection)
        except BaseException:
            connection.close()
            raise
        self._connection, self._pid, self._identity = connection, os.getpid(), identity
        return connection

    @staticmethod
    def _configure(connection: sqlite3.Connection) -> None:
        try:
            connection.execute("PRAGMA trusted_schema = OFF")
            connection.execute("PRAGMA secure_delete = ON")
            if connection.execute("PRAGMA secure_delete").fetchone() != (1,):
                raise KeyStoreUnavailable("key store cannot enable secure delete")
            mode = connection.execute("PRAGMA journal_mode = DELETE").fetchone()
            if mode is None or str(mode[0]).lower() != "delete":
                raise KeyStoreUnavailable("key store cannot use a rollback journal")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("BEGIN IMMEDIATE")
            try:
                (application_id,) = connection.execute("PRAGMA application_id").fetchone()
                (schema_version,) = connection.execute("PRAGMA user_version").fetchone()
                (tables,) = connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()
                if application_id == 0 and schema_version == 0 and tables == 0:
                    connection.execute(_SQLITE_SCHEMA)
                    connection.execute(f"PRAGMA application_id = {_SQLITE_APPLICATION_ID}")
                    connection.execute(f"PRAGMA user_version = {_SQLITE_SCHEMA_VERSION}")
                elif (application_id, schema_version) != (
                    _SQLITE_APPLICATION_ID,
                    _SQLITE_SCHEMA_VERSION,
                ):
                    raise KeyStoreCorruptError("file is not a facepay key store (or a newer one)")
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, "open") from exc

    def _use(self) -> sqlite3.Connection:
        """The connection for this process, after checking the file is still the one opened.

        The caller holds the lock. A vanished or replaced file (unmounted volume,
        restored copy) is an error, not an empty store.
        """
        connection = self._connection
        if connection is None or self._pid != os.getpid():
            return self._connect()
        if self._file_identity() != self._identity:
            raise KeyStoreUnavailable("key store file has been removed or replaced")
        return connection

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None

    def _write(self, what: str, statements: Iterable[tuple[str, tuple[object, ...]]]) -> int:
        """Run ``statements`` in one immediate transaction; returns the rows changed."""
        with self._lock:
            connection = self._use()
            try:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    changed = 0
                    for sql, parameters in statements:
                        changed += connection.execute(sql, parameters).rowcount
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError:
                raise KeyExistsError("shopper already has a wrapped key") from None
            except sqlite3.Error as exc:
                raise _sqlite_error(exc, what) from exc
            return changed

    # ------------------------------------------------------------ KeyStore protocol

    def get(self, shopper_id: str) -> WrappedKey:
        _check_shopper_id(shopper_id)
        with self._lock:
            connection = self._use()
            try:
                row = connection.execute(_SELECT_ONE, (shopper_id,)).fetchone()
            except sqlite3.Error as exc:
                raise _sqlite_error(exc, "read") from exc
        if row is None:
            raise KeyNotFoundError("no wrapped key for this shopper")
        return _wrapped_from_row(row)

    def put(self, shopper_id: str, wrapped: WrappedKey) -> None:
        self.put_many([(shopper_id, wrapped)])

    def put_many(self, entries: Iterable[tuple[str, WrappedKey]]) -> None:
        """Store new wrapped keys in one transaction (all or none; ``KeyExistsError`` if
        any shopper already has one). For imports and bulk enrollment."""
        statements = []
        for shopper_id, wrapped in entries:
            _check_shopper_id(shopper_id)
            if not isinstance(wrapped, WrappedKey):
                raise TypeError("wrapped must be a WrappedKey")
            statements.append((_INSERT, _row_from_wrapped(shopper_id, wrapped)))
        if statements:
            self._write("write", statements)

    def replace(self, shopper_id: str, wrapped: WrappedKey) -> None:
        current = self.get(shopper_id)
        if current.data_key_id != wrapped.data_key_id:
            raise KeyStoreError("replace() only accepts a re-wrap of the same data key")
        changed = self._write(
            "write",
            [
                (
                    "UPDATE wrapped_keys SET version = ?, master_key_id = ?, ciphertext = ? "
                    "WHERE shopper_id = ? AND data_key_id = ?",
                    (
                        wrapped.version,
                        wrapped.master_key_id,
                        wrapped.ciphertext,
                        shopper_id,
                        wrapped.data_key_id,
                    ),
                )
            ],
        )
        if changed != 1:  # destroyed, or re-created with another data key, in the meantime
            raise KeyNotFoundError("no wrapped key with this data key for this shopper")

    def destroy(self, shopper_id: str) -> bool:
        _check_shopper_id(shopper_id)
        changed = self._write(
            "destroy", [("DELETE FROM wrapped_keys WHERE shopper_id = ?", (shopper_id,))]
        )
        if changed:
            logger.info("destroyed one wrapped data key (crypto-shredding)")
        return changed > 0

    def shopper_ids(self) -> list[str]:
        with self._lock:
            connection = self._use()
            try:
                rows = connection.execute(
                    "SELECT shopper_id FROM wrapped_keys ORDER BY shopper_id"
                ).fetchall()
            except sqlite3.Error as exc:
                raise _sqlite_error(exc, "read") from exc
        return [str(shopper_id) for (shopper_id,) in rows]

    def items(self) -> Iterator[tuple[str, WrappedKey]]:
        """Every ``(shopper_id, wrapped_key)``, sorted, read in one query (one consistent
        snapshot). The fast way to read the whole store (the gallery's cold start)."""
        with self._lock:
            connection = self._use()
            try:
                rows = connection.execute(_SELECT_ALL).fetchall()
            except sqlite3.Error as exc:
                raise _sqlite_error(exc, "read") from exc
        return iter([(row[0], _wrapped_from_row(row[1:])) for row in rows])

    def wrapped_keys(self) -> dict[str, WrappedKey]:
        return dict(self.items())

    def wrapped_key_records(
        self, shopper_ids: Collection[str] | None = None
    ) -> dict[str, WrappedKeyRecord]:
        """See :class:`BulkKeyStore`; for ``shopper_ids``, one range scan from the lowest to the
        highest id."""
        if shopper_ids is not None and not shopper_ids:
            return {}
        with self._lock:
            connection = self._use()
            try:
                if shopper_ids is None:
                    rows = connection.execute(_SELECT_RECORDS).fetchall()
                else:
                    for shopper_id in shopper_ids:
                        _check_shopper_id(shopper_id)
                    bounds = (min(shopper_ids), max(shopper_ids))
                    rows = connection.execute(_SELECT_RECORDS_BETWEEN, bounds).fetchall()
            except sqlite3.Error as exc:
                raise _sqlite_error(exc, "read") from exc
        if shopper_ids is None:
            return {row[0]: row[1:] for row in rows}
        wanted = shopper_ids if isinstance(shopper_ids, Set) else frozenset(shopper_ids)
        return {row[0]: row[1:] for row in rows if row[0] in wanted}


class InMemoryKeyStore:
    """A :class:`KeyStore` in a dict, with the same semantics (for tests)."""

    def __init__(self) -> None:
        self._entries: dict[str, WrappedKey] = {}

    def __repr__(self) -> str:
        return f"InMemoryKeyStore(<{len(self._entries)} entries>)"

    def get(self, shopper_id: str) -> WrappedKey:
        _check_shopper_id(shopper_id)
        try:
            return self._entries[shopper_id]
        except KeyError:
            raise KeyNotFoundError("no wrapped key for this shopper") from None

    def put(self, shopper_id: str, wrapped: WrappedKey) -> None:
        _check_shopper_id(shopper_id)
        if shopper_id in self._entries:
            raise KeyExistsError("shopper already has a wrapped key")
        self._entries[shopper_id] = wrapped

    def replace(self, shopper_id: str, wrapped: WrappedKey) -> None:
        if self.get(shopper_id).data_key_id != wrapped.data_key_id:
            raise KeyStoreError("replace() only accepts a re-wrap of the same data key")
        self._entries[shopper_id] = wrapped

    def destroy(self, shopper_id: str) -> bool:
        _check_shopper_id(shopper_id)
        return self._entries.pop(shopper_id, None) is not None

    def shopper_ids(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, WrappedKey]]:
        return iter(sorted(self._entries.items()))

    def wrapped_keys(self) -> dict[str, WrappedKey]:
        return dict(self._entries)

    def wrapped_key_records(
        self, shopper_ids: Collection[str] | None = None
    ) -> dict[str, WrappedKeyRecord]:
        wanted = self._entries if shopper_ids is None else shopper_ids
        return {
            shopper_id: (w.master_key_id, w.data_key_id, w.ciphertext, w.version)
            for shopper_id in wanted
            if (w := self._entries.get(shopper_id)) is not None
        }


def rotate_master_key(
    store: KeyStore, old_masters: Mapping[str, MasterKey], new_master: MasterKey
) -> int:
    """Re-wrap every data key in ``store`` under ``new_master``.

    Template ciphertexts are untouched. Entries already under ``new_master`` are
    skipped, so an interrupted rotation can simply be run again. Stops at the
    first entry that cannot be re-wrapped (the error propagates; nothing is
    silently skipped). Returns the number of entries re-wrapped. Once it returns,
    the old master keys are no longer needed by entries in this store.
    """
    rewrapped = 0
    for shopper_id, wrapped in store.items():
        try:
            new_wrapped = rewrap(wrapped, old_masters, new_master, shopper_id)
        except CryptoError:
            logger.error(
                "master key rotation stopped after %d entries: an entry could not be re-wrapped",
                rewrapped,
            )
            raise
        if new_wrapped is not wrapped:
            store.replace(shopper_id, new_wrapped)
            rewrapped += 1
    logger.info("master key rotation re-wrapped %d entries to %s", rewrapped, new_master.key_id)
    return rewrapped
