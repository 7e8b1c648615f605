"""Payments: sustained authorizations per second and latency through the production server.

For each database (SQLite, and PostgreSQL when the machine's server answers) this builds an
instance of `--shoppers` enrolled shoppers as enrollment leaves them (shopper, consent,
enrollment, 3 templates sealed under a wrapped data key, a funded wallet with its opening
transfer), starts gunicorn on `server.wsgi:app` with the instance's own keys, and drives
`POST /v1/payments` from a load generator in another process: `--connections` threads, each
with a persistent `http.client` connection, sending requests built before the timed phase
(sealed probe, Ed25519 signature, fresh idempotency key), a warm-up, then `--requests` timed
ones. The requests come from 64 paired kiosks in turn, so that the per-kiosk rate limit stays
at its default. Every answer must be 201 "approved"; anything else is an error. The ledger is
checked with `facepay server ledger check` afterwards.

Probes are a random shopper's template plus noise (cosine 0.99 to it), amounts below the
step-up amount, captured at once. The server runs with a target false-positive
identification risk that lets a face alone approve at this gallery size: the bench measures
the authorization path; asking a large gallery for step-up is a policy choice.

CPU is read from /proc (Linux) over the timed phase: gunicorn's processes, the PostgreSQL
backends of the bench database, the load generator, and the whole machine.
Prints a markdown section.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.client
import json
import multiprocessing
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_gallery import PACK, PER_SHOPPER, genuine_probes, insert_batch, shopper_batches
from bench.bench_gallery import unit_rows as random_templates
from bench.machine import describe
from server import create_app
from server.cli import initialise
from server.consent import service as consent
from server.consent.models import Consent
from server.crypto import SqliteKeyStore
from server.db import transaction, utcnow
from server.enrollment.models import Enrollment
from server.kiosks import service as kiosks
from server.ledger.models import FUNDING, WALLET, Account, Transfer
from server.ledger.service import SANDBOX_FUNDING
from server.matching.service import known_packs
from tests.support.kiosk import SigningKiosk, register_kiosk
from tests.support.payments import new_key, payment_payload
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
PAYMENTS_PATH = "/v1/payments"
CURRENCY = "CAD"
BALANCE = 10_000_000  # minor units per wallet: no payment is declined for funds
AMOUNTS = (100, 9_999)  # minor units, below the default step-up amount (10,000)
PROBE_COSINE = 0.99  # a second capture of the same face; the strictest calibrated point passes
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TARGET_RATE, TARGET_P99_MS = 300.0, 100.0
SIGNATURE_WINDOW_S = 300  # the server's default (FACEPAY_SIGNATURE_WINDOW_S)
# Paired kiosks the load comes from, across every connection: a connection stands for many
# tills, so that the server's per-kiosk rate limit (its default, 30/s and 600/min) stays on
# and what is measured is the whole production request path.
KIOSKS = 64
# gunicorn shapes and connections per database: the two best found by measurement, both
# printed (the section says how and why).
DEFAULT_SHAPES = {"sqlite": ("sync:1,sync:2", "2"), "postgresql": ("sync:2,sync:3", "4")}


# ---------------------------------------------------------------- the server's shape


@dataclass(frozen=True)
class ServerShape:
    """A gunicorn set-up: `sync:3` (3 sync workers) or `gthread:2x4` (2 workers, 4 threads)."""

    worker_class: str
    workers: int
    threads: int = 1

    @classmethod
    def parse(cls, text: str) -> ServerShape:
        kind, _, size = text.partition(":")
        workers, _, threads = size.partition("x")
        if kind not in ("sync", "gthread") or not workers.isdigit():
            raise argparse.ArgumentTypeError(f"{text!r}: expected sync:N or gthread:NxT")
        return cls(kind, int(workers), int(threads or 1))

    @property
    def label(self) -> str:
        workers = f"{self.workers} {self.worker_class} worker{'s' if self.workers > 1 else ''}"
        return workers if self.worker_class == "sync" else f"{workers} x {self.threads} threads"

    def flags(self) -> list[str]:
        flags = ["--worker-class", self.worker_class, "--workers", str(self.workers)]
        return [*flags, "--threads", str(self.threads)] if self.worker_class == "gthread" else flags


def target_fpir(shoppers: int) -> float:
    """The smallest target (at least 1) that lets a face alone approve among `shoppers`: the
    FPIR estimate is N x the FMR of the strictest calibrated point a genuine probe passes."""
    points = known_packs()[PACK].calibration.points
    return max(1.0, shoppers * min(point.fmr for point in points))


def server_settings(folder: Path, database_url: str, shoppers: int) -> dict[str, str]:
    """The server's settings (by `Settings` field name), for `create_app` and for gunicorn."""
    return {
        "instance": str(folder),
        "database_url": database_url,
        "target_fpir": repr(target_fpir(shoppers)),
        "limit_per_day": str(BALANCE),  # the daily limit never declines a bench payment
    }


def server_environment(settings: dict[str, str]) -> dict[str, str]:
    """The FACEPAY_* variables for `settings` (each is FACEPAY_<FIELD>, see server/config.py)."""
    return {**os.environ, **{f"FACEPAY_{name.upper()}": value for name, value in settings.items()}}


# ---------------------------------------------------------------- the instance


@dataclass
class Instance:
    name: str
    settings: dict[str, str]
    kiosks: list[SigningKiosk]
    vectors: np.ndarray
    seed_seconds: float
    postgres_database: str | None = None

    @property
    def environment(self) -> dict[str, str]:
        return server_environment(self.settings)


def seed_instance(
    name: str,
    settings: dict[str, str],
    shoppers: int,
    kiosk_count: int,
    rng: np.random.Generator,
) -> Instance:
    """Migrate, pair `kiosk_count` kiosks and enroll `shoppers` with bulk inserts, using the
    very keys the server will load (created in the instance folder, development mode)."""
    app = create_app({**settings, "kiosk_rate_limit": ""})  # pairing many kiosks at once
    svc = app.extensions["facepay"]
    started = time.perf_counter()
    policy_version = initialise(svc)["policy_version"]
    with transaction(svc.sessions) as session:
        policy = consent.current(session)
        codes = [
            kiosks.add_kiosk(
                session, svc.keys.audit_key, name=f"till-{number}", store=f"Bench {number:02d}"
            ).pairing_code
            for number in range(kiosk_count)
        ]
    client = app.test_client()
    paired = [register_kiosk(client, code) for code in codes]
    text_sha256 = consent.text_sha256(policy.texts["en"])
    store = svc.keys.key_store
    assert isinstance(store, SqliteKeyStore), "the bench writes wrapped keys in batches"
    vectors = random_templates(rng, shoppers * PER_SHOPPER)
    ids = [str(uuid.uuid4()) for _ in range(shoppers)]
    funding_id = str(uuid.uuid4())
    with svc.engine.begin() as connection:
        # The sandbox's funding account pays every opening transfer, as `open_wallet` does.
        connection.execute(
            Account.__table__.insert(),  # type: ignore[attr-defined]
            [
                {
                    "id": funding_id,
                    "kind": FUNDING,
                    "owner": SANDBOX_FUNDING,
                    "currency": CURRENCY,
                    "debits_posted": BALANCE * shoppers,
                    "credits_posted": 0,
                    "debits_held": 0,
                }
            ],
        )
        for batch in shopper_batches(
            ids, vectors, svc.keys.master, phone_last4_hash=svc.keys.phone_last4_hash
        ):
            insert_batch(connection, store, batch)
            enrolled = enrollment_rows(
                [row["id"] for row in batch.shoppers],
                kiosk_id=paired[0].kiosk_id,
                policy_version=policy_version,
                text_sha256=text_sha256,
                funding_id=funding_id,
            )
            for table, rows in enrolled:
                connection.execute(table.insert(), rows)
    svc.stop()
    store.close()
    return Instance(name, settings, paired, vectors, time.perf_counter() - started)


def enrollment_rows(
    shopper_ids: list[str],
    *,
    kiosk_id: str,
    policy_version: int,
    text_sha256: str,
    funding_id: str,
) -> list[tuple[Any, list[dict[str, Any]]]]:
    """What `server.enrollment.service.enroll` adds beside the shopper and templates: consent,
    enrollment, a wallet funded by an opening transfer (the change feed and the audit record
    are left out: the gallery loads from the tables, and nothing here reads the chain)."""
    consents, enrollments, wallets, openings = [], [], [], []
    for shopper_id in shopper_ids:
        consent_id, wallet_id = str(uuid.uuid4()), str(uuid.uuid4())
        consents.append(
            {
                "id": consent_id,
                "shopper_id": shopper_id,
                "policy_version": policy_version,
                "locale": "en",
                "text_sha256": text_sha256,
                "signature_name": "Bench Shopper",
                "signed_at": utcnow(),
                "kiosk_id": kiosk_id,
            }
        )
        enrollments.append(
            {
                "id": str(uuid.uuid4()),
                "shopper_id": shopper_id,
                "consent_id": consent_id,
                "kiosk_id": kiosk_id,
                "pack": PACK,
                "template_count": PER_SHOPPER,
            }
        )
        wallets.append(
            {
                "id": wallet_id,
                "kind": WALLET,
                "owner": shopper_id,
                "currency": CURRENCY,
                "debits_posted": 0,
                "credits_posted": BALANCE,
                "debits_held": 0,
            }
        )
        openings.append(
            {
                "id": str(uuid.uuid4()),
                "debit_account": funding_id,
                "credit_account": wallet_id,
                "amount": BALANCE,
                "currency": CURRENCY,
                "kind": "opening",
                "reference": shopper_id,
            }
        )
    return [
        (Consent.__table__, consents),
        (Enrollment.__table__, enrollments),
        (Account.__table__, wallets),
        (Transfer.__table__, openings),
    ]


# ---------------------------------------------------------------- PostgreSQL


def postgres_reachable(admin_url: str) -> bool:
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[tuple[str, str]]:
    """A fresh database for one run (its URL and name), dropped afterwards whatever happens."""
    import sqlalchemy as sa

    name = f"facepay_bench_{secrets.token_hex(6)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False), name
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# ---------------------------------------------------------------- CPU accounting (Linux /proc)


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of one process, 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _processes() -> Iterator[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process we can see."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        yield int(entry.name), parent, command


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


@dataclass(frozen=True)
class CpuSnapshot:
    server: float  # gunicorn master and workers
    database: float  # PostgreSQL backends serving the bench database
    machine_busy: float
    machine_total: float

    @classmethod
    def take(cls, gunicorn_pid: int, postgres_database: str | None) -> CpuSnapshot:
        server, database = _cpu_of(gunicorn_pid), 0.0
        for pid, parent, command in _processes():
            if parent == gunicorn_pid:
                server += _cpu_of(pid)
            elif (
                postgres_database
                and command.startswith("postgres:")
                and f" {postgres_database} " in command  # "postgres: [cluster:] user db host"
            ):
                database += _cpu_of(pid)
        busy, total = _machine_busy()
        return cls(server, database, busy, total)


# ---------------------------------------------------------------- gunicorn


@contextlib.contextmanager
def gunicorn(
    shape: ServerShape, environment: dict[str, str], log: Path
) -> Iterator[tuple[int, int]]:
    """gunicorn on `server.wsgi:app` with `shape`; yields (port, master pid) once every worker
    has loaded its gallery."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        *shape.flags(),
        "--bind",
        f"127.0.0.1:{port}",
        "--timeout",
        "300",  # a worker loads the whole gallery before it serves
        "server.wsgi:app",
    ]
    with log.open("a") as handle:
        process = subprocess.Popen(
            command, env=environment, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT
        )
    try:
        wait_until_loaded(port, process, shape.workers, log)
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_loaded(
    port: int, process: subprocess.Popen[bytes], workers: int, log: Path, timeout: float = 600
) -> None:
    """Ready when /readyz answers and every worker has gone quiet: each loads its gallery (and
    builds its quantised index) on its own, and one still loading would steal the timed run's CPU."""
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    previous: dict[int, float] = {}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text()[-4000:]}")
        time.sleep(0.5)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5):
                pass
        except OSError:
            continue
        children = {pid: _cpu_of(pid) for pid, parent, _ in _processes() if parent == process.pid}
        busy = len(children) < workers or any(
            cpu - previous.get(pid, 0.0) > 0.05 for pid, cpu in children.items()
        )
        previous = children
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 1.5:
            return
    raise RuntimeError(f"gunicorn not ready after {timeout:.0f} s: {log.read_text()[-4000:]}")


# ---------------------------------------------------------------- the load generator

Prepared = tuple[bytes, dict[str, str]]  # body, headers


def build_requests(
    instance: Instance, count: int, connections: int, rng: np.random.Generator
) -> list[list[Prepared]]:
    """`count` payments from the instance's kiosks in turn, dealt round-robin to `connections`,
    signed now: each a probe near one template of a random shopper, a random amount, a fresh
    idempotency key."""
    rows = rng.integers(0, instance.vectors.shape[0], size=count)
    probes = genuine_probes(rng, instance.vectors[rows], cosine=PROBE_COSINE)
    amounts = rng.integers(AMOUNTS[0], AMOUNTS[1] + 1, size=count)
    batches: list[list[Prepared]] = [[] for _ in range(connections)]
    for number, (probe, amount) in enumerate(zip(probes, amounts, strict=True)):
        kiosk = instance.kiosks[number % len(instance.kiosks)]
        body, headers = kiosk.signed(
            "POST", PAYMENTS_PATH, payment_payload(kiosk, probe, int(amount))
        )
        headers["Idempotency-Key"] = new_key()
        batches[number % connections].append((body, headers))
    return batches


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line per request that was not approved
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the load generator's own


def drive(port: int, batches: list[list[Prepared]], stale_at: float) -> LoadResult:
    """Send every batch on its own persistent connection, all at once (closed loop: each
    connection sends its next request when the answer to the last one is in). Runs in the
    load generator's process. Requests still unsent at `stale_at` (epoch seconds: their
    signatures are about to leave the server's window) are errors, not sent."""
    outcomes: list[list[tuple[float, str | None]]] = [[] for _ in batches]
    start = threading.Barrier(len(batches) + 1)

    def send(batch: list[Prepared], out: list[tuple[float, str | None]]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start.wait()
        for body, headers in batch:
            began = time.perf_counter()
            if time.time() > stale_at:
                out.append((0.0, "not sent: its signature would be stale (lower --requests)"))
                continue
            try:
                connection.request("POST", PAYMENTS_PATH, body, headers)
                response = connection.getresponse()
                data = response.read()
                problem = None
                if response.status != 201 or json.loads(data).get("status") != "approved":
                    problem = f"{response.status} {data[:300]!r}"
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                connection.close()  # the next request opens a new connection
            out.append(((time.perf_counter() - began) * 1000, problem))
        connection.close()

    threads = [
        threading.Thread(target=send, args=(batch, out), daemon=True)
        for batch, out in zip(batches, outcomes, strict=True)
    ]
    for thread in threads:
        thread.start()
    cpu = time.process_time()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    result = LoadResult(seconds=time.perf_counter() - began, cpu_seconds=time.process_time() - cpu)
    for out in outcomes:
        for latency, problem in out:
            result.latencies_ms.append(latency)
            if problem is not None:
                result.errors.append(problem)
    return result


# ---------------------------------------------------------------- one measurement


@dataclass(frozen=True)
class Measurement:
    database: str
    shape: ServerShape
    connections: int
    load: LoadResult
    warmup_errors: int
    before: CpuSnapshot
    after: CpuSnapshot

    @property
    def approved(self) -> int:
        return len(self.load.latencies_ms) - len(self.load.errors)

    @property
    def rate(self) -> float:
        return self.approved / self.load.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.load.latencies_ms, q))

    @property
    def target_met(self) -> bool:
        return (
            self.rate >= TARGET_RATE
            and self.percentile(99) <= TARGET_P99_MS
            and not self.load.errors
            and not self.warmup_errors
        )

    def row(self) -> str:
        sent = len(self.load.latencies_ms)
        per = 1000 / max(1, sent)  # CPU ms per request
        server = (self.after.server - self.before.server) * per
        database = (self.after.database - self.before.database) * per
        generator = self.load.cpu_seconds * per
        busy = self.after.machine_busy - self.before.machine_busy
        total = self.after.machine_total - self.before.machine_total
        # What this machine's cores could serve if they did nothing but this bench.
        ceiling = (os.cpu_count() or 1) * 1000 / (server + database + generator)
        others = max(0.0, busy - (server + database + generator) * sent / 1000)
        database_cell = f"{database:.1f}" if self.database == "PostgreSQL" else "in workers"
        return (
            f"| {self.database} | {self.shape.label} | {self.connections} | {sent:,} "
            f"| {self.load.seconds:.1f} | **{self.rate:.0f}** | {self.percentile(50):.1f} "
            f"| **{self.percentile(99):.1f}** | {max(self.load.latencies_ms):.1f} "
            f"| {len(self.load.errors)} | {server:.1f} | {database_cell} | {generator:.1f} "
            f"| {ceiling:.0f} | {100 * busy / total:.0f} % | {others / self.load.seconds:.2f} "
            f"| {'yes' if self.target_met else 'no'} |"
        )


TABLE_HEADER = [
    "| database | gunicorn | connections | timed requests | s | authorizations/s | p50 ms "
    "| p99 ms | max ms | errors | CPU ms / auth: workers | PostgreSQL | load generator "
    "| CPU ceiling /s | machine busy | other processes, cores | target met |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
    "| ---: | ---: | ---: | --- |",
]


def measure(
    instance: Instance,
    shapes: list[ServerShape],
    connection_counts: list[int],
    args: argparse.Namespace,
    generator: concurrent.futures.Executor,
    rng: np.random.Generator,
    log: Path,
) -> list[Measurement]:
    measurements = []
    for shape in shapes:
        with gunicorn(shape, instance.environment, log) as (port, pid):
            for connections in connection_counts:
                # Each set is signed just before it is sent: valid for the signature window.
                warmup = build_requests(instance, args.warmup, connections, rng)
                stale_at = time.time() + SIGNATURE_WINDOW_S - 10
                warmed = generator.submit(drive, port, warmup, stale_at).result()
                timed = build_requests(instance, args.requests, connections, rng)
                stale_at = time.time() + SIGNATURE_WINDOW_S - 10
                before = CpuSnapshot.take(pid, instance.postgres_database)
                load = generator.submit(drive, port, timed, stale_at).result()
                after = CpuSnapshot.take(pid, instance.postgres_database)
                for problem in sorted(set(warmed.errors + load.errors))[:5]:
                    print(f"{instance.name}, {shape.label}: {problem}", file=sys.stderr)
                measurements.append(
                    Measurement(
                        instance.name, shape, connections, load, len(warmed.errors), before, after
                    )
                )
                print(f"<!-- {measurements[-1].row()} -->", file=sys.stderr)
    return measurements


def ledger_check(environment: dict[str, str]) -> tuple[bool, dict[str, Any]]:
    """`facepay server ledger check --json`: (exit code 0, its report)."""
    result = subprocess.run(
        [sys.executable, "-m", "facepay_cli", "server", "ledger", "check", "--json"],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        report = {"ok": False, "problems": [result.stderr.strip()[-500:]]}
    return result.returncode == 0, report


# ---------------------------------------------------------------- main


def run_database(
    kind: str,
    name: str,
    database_url: str,
    folder: Path,
    args: argparse.Namespace,
    generator: concurrent.futures.Executor,
    postgres_database: str | None = None,
) -> tuple[list[Measurement], str]:
    rng = np.random.default_rng(args.seed)
    servers, connections = DEFAULT_SHAPES[kind]
    connection_counts = [int(c) for c in (args.connections or connections).split(",")]
    settings = server_settings(folder, database_url, args.shoppers)
    instance = seed_instance(name, settings, args.shoppers, KIOSKS, rng)
    instance.postgres_database = postgres_database
    print(
        f"<!-- {name}: seeded {args.shoppers} shoppers in {instance.seed_seconds:.0f} s -->",
        file=sys.stderr,
    )
    shapes = [ServerShape.parse(text) for text in (args.servers or servers).split(",")]
    measurements = measure(
        instance, shapes, connection_counts, args, generator, rng, folder / "gunicorn.log"
    )
    ok, report = ledger_check(instance.environment)
    sent = sum(len(m.load.latencies_ms) for m in measurements) + args.warmup * len(measurements)
    verdict = (
        f"{name}: `facepay server ledger check` {'passed' if ok else 'FAILED'} after the runs "
        f"({report.get('payments', 0):,} payments for {sent:,} requests sent, "
        f"{report.get('transfers', 0):,} transfers); seeding {args.shoppers:,} shoppers took "
        f"{instance.seed_seconds:.0f} s."
    )
    if not ok:
        print(f"{name}: ledger problems: {report.get('problems')}", file=sys.stderr)
    return measurements, verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--shoppers", type=int, default=100_000, help="enrolled shoppers")
    parser.add_argument(
        "--requests",
        type=int,
        default=3_000,
        help="timed payments per run (all sent within the signature window, 300 s)",
    )
    parser.add_argument("--warmup", type=int, default=300, help="payments before timing")
    parser.add_argument("--databases", default="sqlite,postgresql", help="sqlite, postgresql")
    parser.add_argument(
        "--servers",
        help="gunicorn shapes, e.g. sync:3,gthread:2x4 (default: chosen per database)",
    )
    parser.add_argument(
        "--connections", help="load generator connections, e.g. 4,8 (default: per database)"
    )
    parser.add_argument("--postgres-url", default=POSTGRES_ADMIN_URL, help="an admin URL")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]

    load = os.getloadavg()
    lines = [
        "## Payments: sustained authorizations (`bench/bench_payments.py`)",
        "",
        f"Machine: {describe()}; load average at start {load[0]:.2f} / {load[1]:.2f} / "
        f"{load[2]:.2f}.",
        "",
        f"{args.shoppers:,} enrolled shoppers ({args.shoppers * PER_SHOPPER:,} templates, each "
        "shopper with a consent, an enrollment, a wrapped data key and a wallet funded by an "
        "opening transfer), bulk-inserted; gunicorn runs `server.wsgi:app` with the instance's "
        "keys, each worker loading the whole gallery. The load generator is another process: a "
        "thread per connection on a persistent `http.client` connection, sending requests from "
        f"{KIOSKS} paired kiosks in turn (one per store, the server's per-kiosk rate limit on), "
        "built before the timed phase (probe sealed to the server, "
        f"Ed25519 signature, fresh `Idempotency-Key`), closed loop, {args.warmup:,} warm-up "
        "requests then the timed ones. Probe: a random shopper's template plus noise (cosine "
        f"{PROBE_COSINE}); amount {AMOUNTS[0] / 100:.2f} to {AMOUNTS[1] / 100:.2f} CAD (under the "
        "step-up amount), captured at once. Every answer must be 201 `approved`; anything else "
        "is an error.",
        "",
        f"`FACEPAY_TARGET_FPIR={target_fpir(args.shoppers):g}`: with the default (1e-4) a gallery "
        "this size asks every face for step-up. This measures the authorization path; when to "
        "ask for step-up is a policy choice.",
        "",
        "gunicorn shapes and connections chosen by measurement (sync 1-3 workers, gthread 1-2 "
        "workers x 2-4 threads, 1-8 connections; each database is shown with the two best "
        "shapes found): a request is CPU-bound Python, so threads add contention, not "
        "throughput, and more connections than workers only queue (p99 up, the rate the same or "
        "lower). SQLite: writers take turns (a lock file beside the database, then `BEGIN "
        "IMMEDIATE`), and a payment spends most of its time in its three write transactions "
        "(kiosk and nonce, idempotency claim, the work), so payments are nearly serial: a "
        "second worker adds CPU spent waiting for the turn, not throughput. Commits are "
        "durable (`synchronous=FULL`, the default): money must survive a power cut. PostgreSQL: "
        "workers run in parallel, so the machine's two cores are the limit.",
        "",
        "CPU per authorization is read from /proc over the timed phase: gunicorn's processes, "
        "the PostgreSQL backends of the bench database, the load generator. *CPU ceiling*: the "
        "cores over their sum, the most this machine could serve doing nothing else. *Other "
        "processes*: CPU the machine spent outside the bench (it may be shared). Target: "
        f"≥ {TARGET_RATE:.0f} authorizations/s with p99 ≤ {TARGET_P99_MS:.0f} ms and no errors.",
        "",
    ]
    measurements: list[Measurement] = []
    verdicts: list[str] = []
    spawn = multiprocessing.get_context("spawn")
    with (
        concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as generator,
        tempfile.TemporaryDirectory(prefix="facepay-bench-") as scratch,
    ):
        if "sqlite" in databases:
            folder = Path(scratch) / "sqlite"
            found, verdict = run_database(
                "sqlite", "SQLite", f"sqlite:///{folder / 'facepay.db'}", folder, args, generator
            )
            measurements += found
            verdicts.append(verdict)
        if "postgresql" in databases:
            if postgres_reachable(args.postgres_url):
                with postgres_database(args.postgres_url) as (url, name):
                    folder = Path(scratch) / "postgresql"
                    found, verdict = run_database(
                        "postgresql",
                        "PostgreSQL",
                        url,
                        folder,
                        args,
                        generator,
                        name,
                    )
                measurements += found
                verdicts.append(verdict)
            else:
                verdicts.append(
                    "PostgreSQL: no server answered at the admin URL; measured SQLite only."
                )
    lines += [*TABLE_HEADER, *(m.row() for m in measurements), "", *verdicts, ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
