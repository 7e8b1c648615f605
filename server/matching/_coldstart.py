"""The gallery's cold start: read, unwrap and decrypt templates in bulk, in this process or in
worker processes. Used by `Gallery.load` only; per-request decryption stays in the service.

The work is cut into chunks of active shoppers (ids in the database's order, with their
wrapped keys). A chunk's templates are read with one index range query (``shopper_id BETWEEN``
its first and last) by whoever decrypts it: this process, through the load's session, or a
worker, through its own connection to the same database, so no template ciphertext is ever
copied between processes. A chunk's result is, per pack, the decrypted float32 vectors
concatenated, grouped by shopper in the chunk's order, and the owner of each (its position in
the chunk).

Workers are started with the `spawn` method (no fork of a process that may hold threads,
locks or database connections); each one receives the master keys and the database URL once,
through its initializer (a pipe to a child of this process), and never logs or returns key
material. They only read: SQLite in WAL mode lets them read while the loading session holds
the write lock, and whatever they read that is newer than the load's change-feed position is
applied again, idempotently, by the next sync.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from server.crypto import (
    KeyFormatError,
    KeyStoreCorruptError,
    MasterKey,
    WrappedKeyRecord,
    open_templates_into,
)
from server.enrollment.models import Template

__all__ = [
    "ChunkResult",
    "ShopperChunk",
    "decrypt_chunk",
    "decrypt_in_worker",
    "init_worker",
    "prepare_scan",
    "template_rows",
]

# Active shopper ids (in the database's order) and their wrapped keys; None where the key
# store has none (an error only if the shopper has a template to open).
ShopperChunk = tuple[list[str], list[WrappedKeyRecord | None]]
# pack -> (owner of each template: its shopper's position in the chunk, as int32 bytes;
#          the decrypted little-endian float32 vectors, concatenated in the same order)
ChunkResult = dict[str, tuple[bytes, bytes]]
# (shopper_id, template_id, pack, ciphertext)
Row = tuple[str, str, str, bytes]

_FLOAT32_SIZE: Final = 4
# A memory map for the scan: fewer system calls and no copy into SQLite's page cache.
SQLITE_SCAN_MMAP: Final = 1 << 32

_worker_masters: dict[str, MasterKey] = {}
_worker_database: list[str] = []
_worker_connection: list[Connection] = []


def template_rows(connection: Connection, shopper_ids: Sequence[str]) -> list[Row]:
    """Every template of the shoppers from ``shopper_ids[0]`` to ``shopper_ids[-1]`` in the
    database's order of shopper ids (an index range; all packs, and the templates of other
    shoppers in the range too), as the driver's plain tuples (no Core row objects: a million
    of them cost about a second)."""
    if not shopper_ids:
        return []
    statement = select(Template.shopper_id, Template.id, Template.pack, Template.ciphertext).where(
        Template.shopper_id.between(shopper_ids[0], shopper_ids[-1])
    )
    compiled = statement.compile(dialect=connection.dialect)
    values = compiled.construct_params()
    parameters: Sequence[object] | Mapping[str, object] = (
        [values[name] for name in compiled.positiontup or ()] if compiled.positional else values
    )
    sql = str(compiled)
    # psycopg: bytea in binary rather than hex text (half the client's time per row)
    options = {"binary": True} if connection.dialect.driver == "psycopg" else {}
    driver_error = connection.dialect.loaded_dbapi.Error
    try:
        cursor = connection.connection.cursor(**options)
        try:
            cursor.execute(sql, parameters)
            rows: list[Row] = list(cursor.fetchall())
        finally:
            cursor.close()
    except driver_error as exc:  # as SQLAlchemy would raise it, without the shopper ids
        raise DBAPIError.instance(
            sql, None, exc, driver_error, hide_parameters=True, dialect=connection.dialect
        ) from exc
    if rows and not isinstance(rows[0][3], bytes):  # e.g. a driver returning memoryview
        rows = [(a, b, c, bytes(d)) for a, b, c, d in rows]
    return rows


def prepare_scan(connection: Connection) -> None:
    """Per-connection settings for a bulk read (SQLite: a memory map of the file)."""
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql(f"PRAGMA mmap_size = {SQLITE_SCAN_MMAP}")


def decrypt_chunk(
    masters: Mapping[str, MasterKey],
    chunk: ShopperChunk,
    rows: Sequence[Row],
    dimensions: Mapping[str, int],
) -> ChunkResult:
    """Decrypt the templates in ``rows`` of the shoppers in ``chunk`` (templates of packs not
    in ``dimensions`` are skipped, and so are rows of shoppers outside the chunk: not active,
    between two that are).

    Raises what `open_templates_into` raises (`KeyNotFoundError` if a shopper with a template
    has no wrapped key, `ValueError` if a template has the wrong length for its pack), but
    `KeyStoreCorruptError` for a malformed key record.
    """
    shopper_ids, records = chunk
    sizes = {pack: dimension * _FLOAT32_SIZE for pack, dimension in dimensions.items()}
    # One buffer per pack, large enough for every row; each template is decrypted into it.
    buffers = {pack: bytearray(size * len(rows)) for pack, size in sizes.items()}
    try:
        owners = open_templates_into(
            masters,
            rows,
            dict(zip(shopper_ids, records, strict=True)),
            {pack: (memoryview(buffers[pack]), size) for pack, size in sizes.items()},
        )
    except KeyFormatError:
        raise KeyStoreCorruptError("key store record is malformed") from None
    position = {shopper_id: slot for slot, shopper_id in enumerate(shopper_ids)}
    result = {}
    for pack, buffer in buffers.items():
        del buffer[len(owners[pack]) * sizes[pack] :]
        slots = np.fromiter(map(position.__getitem__, owners[pack]), np.int32, len(owners[pack]))
        result[pack] = _grouped(slots, buffer, sizes[pack])
    return result


def _grouped(owners: npt.NDArray[np.int32], vectors: bytearray, size: int) -> tuple[bytes, bytes]:
    """The rows ordered by owner (stable), as the index stores them (as bytes: a bytearray
    pickles through a copy on each side)."""
    if owners.size < 2 or bool(np.all(owners[1:] >= owners[:-1])):
        return owners.tobytes(), bytes(vectors)
    order = np.argsort(owners, kind="stable")
    rows = np.frombuffer(vectors, dtype=np.uint8).reshape(-1, size)
    return owners[order].tobytes(), rows[order].tobytes()


def init_worker(master_keys: list[tuple[str, bytes]], database_url: str) -> None:
    """Worker initializer: keep the master keys and the database URL for this worker's chunks
    (it connects with its first chunk, so that a connection error is that chunk's error)."""
    _worker_masters.clear()
    _worker_masters.update((key_id, MasterKey(key_id, key)) for key_id, key in master_keys)
    _worker_database[:] = [database_url]


def decrypt_in_worker(chunk: ShopperChunk, dimensions: Mapping[str, int]) -> ChunkResult:
    if not _worker_connection:
        (database_url,) = _worker_database
        connection = create_engine(make_url(database_url), poolclass=NullPool).connect()
        prepare_scan(connection)
        _worker_connection[:] = [connection]
    (connection,) = _worker_connection
    try:
        return decrypt_chunk(
            _worker_masters, chunk, template_rows(connection, chunk[0]), dimensions
        )
    finally:
        connection.rollback()  # no transaction (and no snapshot) kept between chunks
