"""The gallery's cold start: unwrap data keys and decrypt templates in bulk, in this process
or in worker processes. Used by `Gallery.load` only; per-request decryption stays in the
service.

A chunk is a list of template rows ordered by shopper, with the wrapped keys of the shoppers
in it. Its result is, per pack, the owner of each template (one shopper id per row) and the
decrypted float32 vectors concatenated. Workers are started with the `spawn` method (no fork
of a process that may hold threads, locks or database connections); each one receives the
master keys once, through its initializer (a pipe to a child of this process), and never
logs or returns key material.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from server.crypto import (
    DataKeyUnwrapper,
    KeyFormatError,
    KeyNotFoundError,
    KeyStoreCorruptError,
    MasterKey,
    TemplateOpener,
    WrappedKey,
    WrappedKeyRecord,
)

__all__ = [
    "ChunkResult",
    "PackedRows",
    "Row",
    "decrypt_chunk",
    "decrypt_in_worker",
    "decrypt_packed_in_worker",
    "init_worker",
    "pack_rows",
]

# (shopper_id, template_id, pack, ciphertext)
Row = tuple[str, str, str, bytes]
# The same rows as a few large objects (cheap to send to a worker): shopper ids, template ids
# and packs each joined with NUL, and the ciphertexts (a list pickles as fast as one bytes).
PackedRows = tuple[int, str, str, str, list[bytes]]
# pack -> (owner shopper id per template, concatenated little-endian float32 vectors)
ChunkResult = dict[str, tuple[list[str], bytes]]

_FLOAT32_SIZE: Final = 4

_worker_masters: dict[str, MasterKey] = {}


def decrypt_chunk(
    masters: Mapping[str, MasterKey],
    rows: Sequence[Row],
    keys: Mapping[str, WrappedKey | WrappedKeyRecord],
    dimensions: Mapping[str, int],
) -> ChunkResult:
    """Decrypt ``rows`` (templates of packs not in ``dimensions`` are skipped).

    Raises what `unwrap_data_key` and `open_` raise, `KeyNotFoundError` if a shopper's key
    is not in ``keys``, `KeyStoreCorruptError` if its record is malformed, and `ValueError`
    if a template has the wrong length for its pack.
    """
    unwrapper = DataKeyUnwrapper(masters)
    sizes = {pack: dimension * _FLOAT32_SIZE for pack, dimension in dimensions.items()}
    owners: dict[str, list[str]] = {pack: [] for pack in sizes}
    vectors: dict[str, list[bytes]] = {pack: [] for pack in sizes}
    current: str | None = None
    opener: TemplateOpener | None = None
    for shopper_id, template_id, pack, ciphertext in rows:
        size = sizes.get(pack)
        if size is None:
            continue
        if shopper_id != current or opener is None:
            found = keys.get(shopper_id)
            if found is None:
                raise KeyNotFoundError("no wrapped key for this shopper")
            try:
                wrapped = found if isinstance(found, WrappedKey) else WrappedKey(*found)
            except (KeyFormatError, TypeError):
                raise KeyStoreCorruptError("key store record is malformed") from None
            opener = TemplateOpener(unwrapper.unwrap(wrapped, shopper_id), shopper_id)
            current = shopper_id
        raw = opener.open(ciphertext, template_id, pack)
        if len(raw) != size:
            raise ValueError("a template has the wrong length for its pack")
        owners[pack].append(shopper_id)
        vectors[pack].append(raw)
    return {pack: (owners[pack], b"".join(vectors[pack])) for pack in sizes}


def pack_rows(rows: Sequence[Row]) -> PackedRows | None:
    """``rows`` as :data:`PackedRows`, or None if an id contains NUL (then send the rows)."""
    shopper_ids = "\0".join([row[0] for row in rows])
    template_ids = "\0".join([row[1] for row in rows])
    packs = "\0".join([row[2] for row in rows])
    separators = len(rows) - 1
    if (
        shopper_ids.count("\0") != separators
        or template_ids.count("\0") != separators
        or packs.count("\0") != separators
    ):
        return None
    return (len(rows), shopper_ids, template_ids, packs, [row[3] for row in rows])


def _unpack_rows(packed: PackedRows) -> list[Row]:
    count, shopper_ids, template_ids, packs, ciphertexts = packed
    if count == 0:
        return []
    return list(
        zip(
            shopper_ids.split("\0"),
            template_ids.split("\0"),
            packs.split("\0"),
            ciphertexts,
            strict=True,
        )
    )


def init_worker(master_keys: list[tuple[str, bytes]]) -> None:
    """Worker initializer: keep the master keys for this worker's chunks."""
    _worker_masters.clear()
    _worker_masters.update((key_id, MasterKey(key_id, key)) for key_id, key in master_keys)


def decrypt_in_worker(
    rows: Sequence[Row], keys: Mapping[str, WrappedKeyRecord], dimensions: Mapping[str, int]
) -> ChunkResult:
    return decrypt_chunk(_worker_masters, rows, keys, dimensions)


def decrypt_packed_in_worker(
    packed: PackedRows, keys: Mapping[str, WrappedKeyRecord], dimensions: Mapping[str, int]
) -> ChunkResult:
    return decrypt_chunk(_worker_masters, _unpack_rows(packed), keys, dimensions)
