"""The server's instance keys: where they live, and refusing to run without them in production.

- master key: wraps each shopper's data key (the data keys live in the key store, apart from
  the main database, so that destroying one makes that shopper's templates unreadable in
  every copy of the database);
- audit key: HMAC key of the audit chain;
- sealing key: X25519 key pair that kiosks seal templates to;
- phone key: HMAC key for the phone's last four digits (step-up), so they are not stored
  in a form anyone can enumerate without it.

In development the missing ones are created (0600) under <instance>/keys, loudly.

The key store is an SQLite file of its own (`SqliteKeyStore`, by default
`<instance>/keystore.sqlite3`); if the configured path (FACEPAY_KEY_STORE) is a directory,
the one-JSON-file-per-shopper `FileKeyStore` in it is used instead. An instance created before
the SQLite store existed (a `<instance>/keystore` directory and no `keystore.sqlite3`) keeps
using its directory. A key store that cannot be opened (missing volume, corrupt file) does
not stop the process: it fails closed on every use and is opened again once it can be
(`UnopenedKeyStore`), so a server serves, not ready, and recovers by itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from server.config import ConfigError, Settings
from server.crypto import (
    BulkKeyStore,
    FileKeyStore,
    KeyStore,
    KeyStoreError,
    KeyStoreUnavailable,
    MasterKey,
    ServerSealingKey,
    SqliteKeyStore,
    WrappedKey,
    WrappedKeyRecord,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceKeys:
    master: MasterKey
    audit_key: bytes
    phone_key: bytes
    sealing: ServerSealingKey
    key_store: KeyStore

    @property
    def masters(self) -> dict[str, MasterKey]:
        return {self.master.key_id: self.master}

    def phone_last4_hash(self, last4: str) -> str:
        return hmac.new(
            self.phone_key, b"facepay-phone-last4\x00" + last4.encode(), hashlib.sha256
        ).hexdigest()

    def phone_hash(self, number: str) -> str:
        """Keyed hash of a whole phone number (`shoppers.service.national_number` form): the
        full-number step-up finds its one shopper by it."""
        return hmac.new(
            self.phone_key, b"facepay-phone\x00" + number.encode(), hashlib.sha256
        ).hexdigest()

    def contact_hash(self, purpose: str, value: str) -> str:
        """Keyed hash for one-time codes and the emails they were sent to (never kept plain)."""
        return hmac.new(
            self.phone_key, f"facepay-{purpose}\x00{value}".encode(), hashlib.sha256
        ).hexdigest()


def key_paths(settings: Settings) -> dict[str, Path]:
    keys = settings.keys_dir
    return {
        "master": settings.master_key_file or keys / "master.key",
        "audit": settings.audit_key_file or keys / "audit.key",
        "phone": settings.phone_key_file or keys / "phone.key",
        "sealing": settings.sealing_key_file or keys / "sealing.key",
        "key_store": settings.key_store or _default_key_store(settings.instance),
    }


def _default_key_store(instance: Path) -> Path:
    legacy, current = instance / "keystore", instance / "keystore.sqlite3"
    if legacy.is_dir() and not current.exists():
        return legacy
    return current


def open_key_store(path: Path, *, create: bool) -> KeyStore:
    """The key store at `path`: a `FileKeyStore` if it is a directory, else a `SqliteKeyStore`."""
    if path.is_dir():
        return FileKeyStore(path, create=create)
    return SqliteKeyStore(path, create=create)


class UnopenedKeyStore:
    """The key store when it could not be opened: every call tries to open it again and,
    until that works, raises `KeyStoreUnavailable` (fail closed: never "no key" when it cannot
    tell). Once opened, every call goes to the real store."""

    def __init__(self, path: Path, *, create: bool) -> None:
        self._path, self._create = path, create
        self._store: KeyStore | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"UnopenedKeyStore({str(self._path)!r})"

    def _opened(self) -> KeyStore:
        with self._lock:
            if self._store is None:
                try:  # raises KeyStoreError (unavailable, corrupt) until it can be opened
                    self._store = open_key_store(self._path, create=self._create)
                except OSError as exc:
                    raise KeyStoreUnavailable("key store cannot be opened") from exc
                logger.warning("the shopper key store can be used again")
            return self._store

    def get(self, shopper_id: str) -> WrappedKey:
        return self._opened().get(shopper_id)

    def put(self, shopper_id: str, wrapped: WrappedKey) -> None:
        self._opened().put(shopper_id, wrapped)

    def replace(self, shopper_id: str, wrapped: WrappedKey) -> None:
        self._opened().replace(shopper_id, wrapped)

    def destroy(self, shopper_id: str) -> bool:
        return self._opened().destroy(shopper_id)

    def shopper_ids(self) -> list[str]:
        return self._opened().shopper_ids()

    def items(self) -> Iterator[tuple[str, WrappedKey]]:
        return self._opened().items()

    def wrapped_keys(self) -> dict[str, WrappedKey]:
        store = self._opened()
        return store.wrapped_keys() if isinstance(store, BulkKeyStore) else dict(store.items())

    def wrapped_key_records(
        self, shopper_ids: Collection[str] | None = None
    ) -> dict[str, WrappedKeyRecord]:
        store = self._opened()
        if isinstance(store, BulkKeyStore):
            if shopper_ids is None:
                return store.wrapped_key_records()
            return store.wrapped_key_records(shopper_ids)
        wanted = None if shopper_ids is None else set(shopper_ids)
        return {
            shopper_id: (w.master_key_id, w.data_key_id, w.ciphertext, w.version)
            for shopper_id, w in store.items()
            if wanted is None or shopper_id in wanted
        }


def _open_or_later(path: Path, *, create: bool) -> KeyStore:
    """The key store at `path`, or, if it cannot be opened now, one that fails closed until it
    can (logged: the server will not be ready, and will not match, until then)."""
    try:
        return open_key_store(path, create=create)
    except KeyStoreError as exc:
        logger.error(
            "the shopper key store at %s cannot be opened (%s): nothing will be matched, "
            "enrolled or deleted until it can",
            path,
            type(exc).__name__,
        )
        return UnopenedKeyStore(path, create=create)


def load_keys(settings: Settings) -> InstanceKeys:
    paths = key_paths(settings)
    if settings.is_production:
        missing = [
            name for name in ("master", "audit", "phone", "sealing") if not paths[name].is_file()
        ]
        if settings.master_key_file is None or missing:
            absent = ", ".join(missing) or "the master key setting"
            raise ConfigError(
                "production mode needs its keys: set FACEPAY_MASTER_KEY_FILE, "
                "FACEPAY_AUDIT_KEY_FILE, FACEPAY_PHONE_KEY_FILE and FACEPAY_SEALING_KEY_FILE "
                f"(missing: {absent}); `facepay server keys generate` makes them"
            )
    else:
        created = generate_missing(paths)
        if created:
            logger.warning(
                "DEVELOPMENT MODE: created instance keys %s under %s; never use them in production",
                ", ".join(created),
                settings.keys_dir,
            )
    return InstanceKeys(
        master=MasterKey.load(paths["master"]),
        audit_key=MasterKey.load(paths["audit"]).key,
        phone_key=MasterKey.load(paths["phone"]).key,
        sealing=ServerSealingKey.load(paths["sealing"]),
        key_store=_open_or_later(paths["key_store"], create=not settings.is_production),
    )


def generate_missing(paths: dict[str, Path]) -> list[str]:
    """Create whichever instance keys do not exist yet (0600 files); never overwrite one."""
    created = []
    for name in ("master", "audit", "phone"):
        if not paths[name].exists():
            paths[name].parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            MasterKey.generate_to_file(paths[name], key_id=f"{name}-{_suffix()}")
            created.append(name)
    if not paths["sealing"].exists():
        paths["sealing"].parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        ServerSealingKey.generate().save(paths["sealing"])
        created.append("sealing")
    if not paths["key_store"].exists():
        SqliteKeyStore(paths["key_store"], create=True).close()
        created.append("key_store")
    return created


def _suffix() -> str:
    import secrets

    return secrets.token_hex(6)
