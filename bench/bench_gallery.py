"""Server gallery: cold start (read, unwrap, decrypt, fuse, index) and 1:N match latency.

Shoppers are simulated faces (`bench/simulated.py`: the gallery simulator calibrated to the
default pack), each enrolled from 3 frames of one visit, as enrollment stores them. The match
latency table bulk-loads one fused row per shopper (`server.matching.index.fuse`, as the
server keeps them) into `GalleryIndex` and times `search` on genuine probes (a new visit of an
enrolled shopper), with `exhaustive_below` at the pack's base threshold, as the service searches
at the face rung. Top-1 is checked against an exact numpy search.

Cold start builds a real instance per size (SQLite database, SQLite key store, AES-GCM
templates under per-shopper data keys, unique phone numbers), then times `Gallery.load`: read,
unwrap, decrypt every template, fuse each shopper's into one row, index. Setup writes the
wrapped keys in batches (`SqliteKeyStore.put_many`); the timed read path is the server's.
`--instance FOLDER` keeps each built instance (database, key store, master key) in
FOLDER/shoppers-N and reuses it on the next run; `--runs N` times the cold start N times per
size, each in a fresh process as a server starts (minimum and median reported, with the load
average when the script starts; each run's figures go to stderr). Several `--shoppers` sizes
are timed in one run, so their ratio is measured under the same conditions. The database and
key store files are in the OS file cache (just built or read).
Prints a markdown section.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Connection, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import simulated
from bench.machine import describe
from server import migrate
from server.config import Settings, load_settings
from server.crypto import (
    DataKey,
    MasterKey,
    SqliteKeyStore,
    WrappedKey,
    seal,
    template_associated_data,
    wrap_data_key,
)
from server.db import make_engine, make_session_factory
from server.enrollment.models import Template
from server.matching.index import GalleryIndex
from server.matching.service import Gallery, known_packs
from server.shoppers.models import Shopper
from server.shoppers.service import national_number

PACK = "dlib-resnet-v1@1"
PER_SHOPPER = simulated.FRAMES  # templates per shopper: the frames of one enrolment visit
_BUILD_CHUNK = 100_000  # shoppers simulated at a time while building an instance


def base_threshold() -> float:
    """The pack's threshold at the default FMR (the face rung's lowest)."""
    return known_packs()[PACK].calibration.threshold(Settings.match_fmr)


def bench_phone(number: int) -> str:
    """Shopper `number`'s phone number: unique (enrollment refuses a number in use), and its
    last four digits shared by about one shopper in 10,000, as in a real population."""
    if not 0 <= number < 10_000_000:
        raise ValueError("the bench numbers phones up to 10 million shoppers")
    digits = f"{number:07d}"
    return f"+1 438 {digits[:3]} {digits[3:]}"


class PhoneKeys(Protocol):
    """The instance's keyed phone hashes (`server.keys.InstanceKeys`)."""

    def phone_last4_hash(self, last4: str) -> str: ...

    def phone_hash(self, number: str) -> str: ...


@dataclass
class ShopperBatch:
    """Rows for one batch of synthetic enrolled shoppers, ready for Core bulk inserts."""

    shoppers: list[dict[str, Any]] = field(default_factory=list)
    templates: list[dict[str, Any]] = field(default_factory=list)
    wrapped_keys: list[tuple[str, WrappedKey]] = field(default_factory=list)


def shopper_batches(
    ids: list[str],
    frames: np.ndarray,
    master: MasterKey,
    *,
    keys: PhoneKeys | None = None,
    first: int = 0,
    batch_templates: int = 30_000,
) -> Iterator[ShopperBatch]:
    """Shoppers `ids` (numbered from `first`: their phone is `bench_phone(first + i)`), with
    the `PER_SHOPPER` enrolment frames `frames[i]` each, as the server stores them: a data
    key per shopper wrapped under `master`, templates sealed under it, the phone's keyed
    hashes. Without `keys` (no server reads this instance's phones) the hashes are left as
    placeholders, and a server started on it would hash the numbers itself."""
    batch = ShopperBatch()
    for index, shopper_id in enumerate(ids):
        key = DataKey.generate()
        batch.wrapped_keys.append((shopper_id, wrap_data_key(master, key, shopper_id)))
        phone = bench_phone(first + index)
        number = national_number(phone)
        batch.shoppers.append(
            {
                "id": shopper_id,
                "full_name": "Bench Shopper",
                "masked_label": "Bench S.",
                "email": f"bench{first + index}@example.com",
                "phone": phone,
                "phone_last4_hash": keys.phone_last4_hash(number[-4:]) if keys else "0" * 64,
                "phone_hash": keys.phone_hash(number) if keys else None,
                "status": "active",
            }
        )
        for slot in range(PER_SHOPPER):
            template_id = str(uuid.uuid4())
            row = frames[index, slot]
            batch.templates.append(
                {
                    "id": template_id,
                    "shopper_id": shopper_id,
                    "pack": PACK,
                    "liveness": "none",
                    "ciphertext": seal(
                        key,
                        row.astype("<f4").tobytes(),
                        template_associated_data(shopper_id, template_id, PACK),
                    ),
                }
            )
        if len(batch.templates) >= batch_templates or index == len(ids) - 1:
            yield batch
            batch = ShopperBatch()


def insert_batch(connection: Connection, store: SqliteKeyStore, batch: ShopperBatch) -> None:
    connection.execute(Shopper.__table__.insert(), batch.shoppers)  # type: ignore[attr-defined]
    connection.execute(Template.__table__.insert(), batch.templates)  # type: ignore[attr-defined]
    store.put_many(batch.wrapped_keys)


def _instance_settings(folder: Path) -> Settings:
    return load_settings(
        {"instance": str(folder), "database_url": f"sqlite:///{folder / 'facepay.db'}"}
    )


def build_instance(
    folder: Path, shoppers: int, rng: np.random.Generator
) -> tuple[Settings, MasterKey, SqliteKeyStore]:
    """An instance of `shoppers` simulated shoppers in `folder` (3 enrolment frames each)."""
    settings = _instance_settings(folder)
    engine = make_engine(settings.database)
    migrate.upgrade(engine)
    master = MasterKey.generate()
    store = SqliteKeyStore(folder / "keystore.sqlite3", create=True)
    sim = simulated.simulator()
    started = time.perf_counter()
    with engine.begin() as connection:
        for first in range(0, shoppers, _BUILD_CHUNK):
            count = min(_BUILD_CHUNK, shoppers - first)
            frames = simulated.enrolled(sim, count, rng).frames
            assert frames is not None
            ids = [str(uuid.uuid4()) for _ in range(count)]
            for batch in shopper_batches(ids, frames, master, first=first):
                insert_batch(connection, store, batch)
    print(
        f"<!-- setup: {shoppers} shoppers in {time.perf_counter() - started:.0f} s -->",
        file=sys.stderr,
    )
    engine.dispose()
    return settings, master, store


_MASTER_FILE = "bench-master.key"


def kept_instance(
    folder: Path, shoppers: int, rng: np.random.Generator
) -> tuple[Settings, MasterKey, SqliteKeyStore]:
    """The instance kept in `folder` (built there first if it is not yet)."""
    master_file = folder / _MASTER_FILE
    if not master_file.exists():
        folder.mkdir(parents=True, exist_ok=True)
        if any(folder.iterdir()):
            raise SystemExit(f"{folder} is neither empty nor a kept bench instance")
        settings, master, store = build_instance(folder, shoppers, rng)
        master.save(master_file)  # last: a folder with the key file is complete
        return settings, master, store
    settings = _instance_settings(folder)
    engine = make_engine(settings.database)
    with engine.connect() as connection:
        found = connection.scalar(select(func.count()).select_from(Shopper))
    engine.dispose()
    if found != shoppers:
        raise SystemExit(f"{folder} holds {found} shoppers, not {shoppers}: use another folder")
    return settings, MasterKey.load(master_file), SqliteKeyStore(folder / "keystore.sqlite3")


def time_cold_start(instance: tuple[Settings, MasterKey, SqliteKeyStore]) -> tuple[float, float]:
    """Seconds until `Gallery.load` returns (searchable, exhaustively while the quantised
    index is built in the background) and until that index is published too."""
    settings, master, store = instance
    engine = make_engine(settings.database)
    sessions = make_session_factory(engine)
    gallery = Gallery(settings, {master.key_id: master}, store)
    started = time.perf_counter()
    with sessions() as session:
        gallery.load(session)
    servable = time.perf_counter() - started
    gallery.wait_indexed()
    indexed = time.perf_counter() - started
    engine.dispose()
    return servable, indexed


# A fresh process with no main module to speak of, as under gunicorn: the gallery's `spawn`
# workers re-import the parent's main module, and this script's imports are heavy.
_COLD_START_ONCE = """
import json, sys
from pathlib import Path
import numpy as np
from bench.bench_gallery import kept_instance, time_cold_start
instance = kept_instance(Path(sys.argv[1]), int(sys.argv[2]), np.random.default_rng(0))
print(json.dumps(time_cold_start(instance)))
"""


def time_cold_start_in_new_process(folder: Path, shoppers: int) -> tuple[float, float, float]:
    """`time_cold_start` on the kept instance in `folder`, in a fresh Python process; and the
    CPU seconds that process and its workers used, start-up and background work included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "-c", _COLD_START_ONCE, str(folder), str(shoppers)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    servable, indexed = json.loads(result.stdout.strip().splitlines()[-1])
    return float(servable), float(indexed), cpu


def search_latency(
    index: GalleryIndex,
    gallery: simulated.Enrolled,
    probes_count: int,
    rng: np.random.Generator,
) -> tuple[list[float], int, int, int]:
    """Latency of `probes_count` genuine searches (a new visit each), how many found the
    exact search's top-1, and how many of those were the probe's own shopper."""
    sim = simulated.simulator()
    threshold = base_threshold()
    picks = rng.choice(gallery.fused.shape[0], size=probes_count, replace=False)
    probes = simulated.probes(sim, gallery.centres[picks], rng)
    for probe in probes[:10]:
        index.search(probe, k=2)
    samples, agree, own = [], 0, 0
    for probe, shopper in zip(probes, picks, strict=True):
        start = time.perf_counter()
        found = index.search(probe, k=2, exhaustive_below=threshold)
        samples.append((time.perf_counter() - start) * 1000)
        exact = int(np.argmax(gallery.fused @ probe))
        agree += int(bool(found) and found[0].shopper_id == f"s{exact}")
        own += int(exact == shopper)
    return samples, agree, own, len(probes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--shoppers",
        default="333334,1000000",
        help="cold start sizes in shoppers, x3 templates each (comma-separated: each is timed "
        "in turn, so their ratio is measured in the same run)",
    )
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument(
        "--sizes",
        default="10000,100000,1000000",
        help="shoppers (one fused row each) for match latency (empty: cold start only)",
    )
    parser.add_argument(
        "--instance",
        type=Path,
        help="keep the cold start instances in this folder (shoppers-N) and reuse them",
    )
    parser.add_argument("--runs", type=int, default=5, help="cold starts to time per size")
    args, _ = parser.parse_known_args()  # run_all.py passes every script the same arguments
    load = os.getloadavg()  # before this script's own work
    rng = np.random.default_rng(2026)
    cold_sizes = [int(s) for s in args.shoppers.split(",") if s]

    lines = ["## Server gallery (`bench/bench_gallery.py`)", "", f"Machine: {describe()}.", ""]
    lines += [
        f"Shoppers: {simulated.describe()}; 3 enrolment frames of one visit per shopper, fused "
        "into one row as the server keeps them; probes: a new visit of an enrolled shopper, "
        f"searched with `exhaustive_below` at the pack's base threshold ({base_threshold()}), as "
        "the service searches at the face rung.",
        "",
        "| shoppers (fused rows, 128-d) | match median ms | match p95 ms | top-1 = exact search "
        "| exact top-1 = the shopper |",
        "| --- | --- | --- | --- | --- |",
    ]
    sim = simulated.simulator()
    for size in (int(s) for s in args.sizes.split(",") if s):
        gallery = simulated.enrolled(sim, size, rng, keep_frames=False)
        index = GalleryIndex(gallery.fused.shape[1])
        index.bulk_load([f"s{i}" for i in range(size)], gallery.fused, np.arange(size))
        samples, agree, own, total = search_latency(index, gallery, args.probes, rng)
        p95 = sorted(samples)[int(0.95 * len(samples)) - 1]
        lines.append(
            f"| {size:,} | {statistics.median(samples):.2f} | {p95:.2f} | {agree} of {total} "
            f"| {own} of {total} |"
        )
        del gallery, index

    runs: dict[int, list[tuple[float, float, float]]] = {size: [] for size in cold_sizes}
    with tempfile.TemporaryDirectory() as scratch:
        root = args.instance or Path(scratch)
        folders = {size: root / f"shoppers-{size}" for size in cold_sizes}
        for size, folder in folders.items():
            kept_instance(folder, size, rng)
        for _ in range(args.runs):  # sizes in turn, so that each sees the same conditions
            for size, folder in folders.items():
                runs[size].append(time_cold_start_in_new_process(folder, size))
                print(
                    f"<!-- cold start {size}: searchable {runs[size][-1][0]:.2f} s, "
                    f"quantised {runs[size][-1][1]:.2f} s, CPU {runs[size][-1][2]:.1f} s; "
                    f"load average now {os.getloadavg()[0]:.2f} -->",
                    file=sys.stderr,
                )

    def figure(values: list[float]) -> str:
        if len(values) == 1:
            return f"**{values[0]:.1f} s**"
        return f"**{min(values):.1f} s** (median {statistics.median(values):.1f} s)"

    runs_note = (
        f"minimum (median) of {args.runs} runs per size, each a fresh process, the sizes in turn"
        if args.runs > 1
        else "one run per size"
    ) + ", the database and key store files in the OS file cache"
    lines += [
        "",
        "Cold start: the shoppers' templates read from SQLite, their data keys read "
        "from the SQLite key store and unwrapped, every template decrypted (AES-256-GCM), "
        "each shopper's fused into one row, and indexed (target: searchable within 10 s):",
        "",
    ]
    for size in cold_sizes:
        servable = [run[0] for run in runs[size]]
        indexed = [run[1] for run in runs[size]]
        cpu = statistics.median(run[2] for run in runs[size])
        lines.append(
            f"- {size:,} shoppers ({size * PER_SHOPPER:,} templates): searchable after "
            f"{figure(servable)}, with the quantised shortlist built in the background by "
            f"{figure(indexed)} (searches are exhaustive, so exact, until then); {cpu:.1f} s "
            "of CPU (median) for the whole process with its workers and the background build."
        )
    if len(cold_sizes) > 1:
        small, large = cold_sizes[0], cold_sizes[-1]
        ratio = statistics.median(r[0] for r in runs[large]) / statistics.median(
            r[0] for r in runs[small]
        )
        lines.append(
            f"- {large:,} shoppers over {small:,} in this run (medians): searchable "
            f"{ratio:.2f}x as long, for {large / small:.2f}x the shoppers."
        )
    lines += [
        "",
        f"{runs_note[0].upper()}{runs_note[1:]}; load average when the script started "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.",
        "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
