"""Storage of wrapped per-shopper data keys, kept apart from the main database.

Crypto-shredding: template ciphertexts (in the main database *and all of its
backups*) can only be opened with the shopper's data key, which exists only
wrapped, in this store. :meth:`KeyStore.destroy` removes that wrapped key, after
which every copy of the shopper's templates is unreadable, even to someone who
holds the master key. This only holds if the key store itself is **not** backed
up together with the main database (or its backups expire within the erasure
deadline): an old copy of a wrapped key plus the master key recovers the data key.

Why one JSON file per shopper (``FileKeyStore``) rather than an SQLite file:

* ``destroy`` is a single ``unlink`` of a small file. SQLite keeps deleted rows
  in free pages, the rollback journal or the WAL until they are overwritten or
  vacuumed (``secure_delete`` + checkpoint + ``VACUUM`` would be needed).
* every write is atomic (temporary file, fsync, ``rename``/``link``, directory
  fsync) without a database engine, and creating an entry uses ``link``, which
  fails if the entry exists, so concurrent workers can never overwrite a key.
* the directory can live on its own volume / mount with its own backup policy.

The cost is one file per shopper and O(n) listing, fine for a prototype up to
~10^5 shoppers. File names are ``sha256(shopper_id).hex() + ".json"`` (no path
tricks, no case-folding problems); the shopper id is stored inside the file.

Limits: deleting a file does not guarantee the bytes are gone from the physical
medium (SSD wear levelling, copy-on-write or journalling file systems, snapshots).
``destroy`` overwrites the file with zeros before unlinking as a best effort;
put the store on an encrypted volume and keep no long-lived snapshots of it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final, Protocol

from server.crypto._fs import fsync_dir, write_private_file
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
    "FileKeyStore",
    "InMemoryKeyStore",
    "KeyStore",
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
