"""Payments: sustained payments per second and latency through the production server.

For each database (SQLite, and PostgreSQL when the machine's server answers) this builds an
instance of `--shoppers` enrolled shoppers as enrollment leaves them (`bench/payments_instance.py`:
shopper with a unique phone number, consent, enrollment, 3 templates sealed under a wrapped
data key, a funded wallet with its opening transfer), starts gunicorn on `server.wsgi:app` with
the instance's own keys and the server's default settings, and drives payments from a load
generator in another process: `--connections` threads, each with a persistent `http.client`
connection, a warm-up, then `--requests` timed payments.

Shoppers and probes are simulated faces (`bench/simulated.py`, calibrated to the default
pack): a probe is a new visit of a random enrolled shopper. Under the risk rule
(`server.matching.risk`) a gallery of this size asks every face for step-up, so a payment is
two requests: `POST /v1/payments` (built and signed before the timed phase: sealed probe,
Ed25519 signature, fresh idempotency key; amounts below the step-up amount, captured at once),
answered 201 `step_up_required` with `step_up_ask`; then `POST /v1/payments/{id}/step-up`
with what was asked (the whole phone number or its last four digits, the shopper's own),
signed by the generator when the first answer is in. A payment approved by the face alone
needs no second request. The requests come from 64 paired kiosks in turn, so that the
per-kiosk rate limit stays at its default. Every payment must end approved; anything else
is an error, counted apart when it is the face itself that did not pass the rung's threshold
(the step-up answered "not matched": a new capture of the shopper scored below it, which the
risk rule expects for a share of honest payments). The ledger is checked with
`facepay server ledger check` afterwards.

CPU is read from /proc (Linux) over the timed phase: gunicorn's processes, the PostgreSQL
backends of the bench database, the load generator, and the whole machine.
Prints a markdown section.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import simulated
from bench.bench_gallery import PER_SHOPPER
from bench.machine import describe
from bench.payments_instance import (
    Instance,
    KioskKeys,
    RungExpectation,
    postgres_database,
    postgres_reachable,
    seed_instance,
    server_settings,
)
from bench.serving import CpuSnapshot, ServerShape, gunicorn
from tests.support.payments import new_key, payment_payload

ROOT = Path(__file__).resolve().parent.parent
PAYMENTS_PATH = "/v1/payments"
AMOUNTS = (100, 9_999)  # minor units, below the default step-up amount (10,000)
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
FACE_NOT_MATCHED = "face below the rung's threshold"

# ---------------------------------------------------------------- the load generator


@dataclass(frozen=True)
class Prepared:
    """A payment's first request, signed, and what its step-up will need."""

    kiosk: int  # index into the kiosks handed to the generator
    shopper: int  # whose face the probe is: the step-up answers with their phone
    body: bytes
    headers: dict[str, str]


def build_requests(
    instance: Instance, count: int, connections: int, rng: np.random.Generator
) -> list[list[Prepared]]:
    """`count` payments from the instance's kiosks in turn, dealt round-robin to `connections`,
    signed now: each a new visit of a random shopper's face, a random amount, a fresh
    idempotency key."""
    shoppers = rng.integers(0, instance.shoppers, size=count)
    probes = simulated.probes(simulated.simulator(), instance.centres[shoppers], rng)
    amounts = rng.integers(AMOUNTS[0], AMOUNTS[1] + 1, size=count)
    batches: list[list[Prepared]] = [[] for _ in range(connections)]
    for number, (shopper, probe, amount) in enumerate(zip(shoppers, probes, amounts, strict=True)):
        which = number % len(instance.kiosks)
        kiosk = instance.kiosks[which]
        body, headers = kiosk.signed(
            "POST", PAYMENTS_PATH, payment_payload(kiosk, probe, int(amount))
        )
        headers["Idempotency-Key"] = new_key()
        batches[number % connections].append(Prepared(which, int(shopper), body, headers))
    return batches


@dataclass(frozen=True)
class Outcome:
    """One payment, as the generator saw it."""

    milliseconds: float  # first request sent to last answer read
    requests: int
    asked: str  # the rung the first answer asked for ("face": approved at once)
    problem: str | None  # None: approved


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the load generator's own

    @property
    def latencies_ms(self) -> list[float]:
        return [outcome.milliseconds for outcome in self.outcomes]

    @property
    def errors(self) -> list[str]:
        return [o.problem for o in self.outcomes if o.problem is not None]

    @property
    def requests(self) -> int:
        return sum(outcome.requests for outcome in self.outcomes)


def _pay(
    connection: http.client.HTTPConnection,
    kiosks: list[Any],
    instance: type[Instance],
    prepared: Prepared,
) -> tuple[int, str, str | None]:
    """The payment and, when asked, its step-up: (requests sent, rung asked, problem)."""
    connection.request("POST", PAYMENTS_PATH, prepared.body, prepared.headers)
    response = connection.getresponse()
    data = response.read()
    answer = json.loads(data) if data else {}
    status = answer.get("status")
    if response.status == 201 and status == "approved":
        return 1, "face", None
    if response.status != 201 or status != "step_up_required":
        return 1, "?", f"payment: {response.status} {data[:300]!r}"
    asked = str(answer.get("step_up_ask"))
    path = f"{PAYMENTS_PATH}/{answer['payment_id']}/step-up"
    kiosk = kiosks[prepared.kiosk]
    body, headers = kiosk.signed(
        "POST",
        path,
        {"challenge_id": answer["challenge_id"], **instance.answer(prepared.shopper, asked)},
    )
    headers["Idempotency-Key"] = new_key()
    connection.request("POST", path, body, headers)
    response = connection.getresponse()
    data = response.read()
    final = json.loads(data) if data else {}
    if response.status == 200 and final.get("status") == "approved":
        return 2, asked, None
    # Not matched: the challenge still open (tries left), or declined for it. The server says
    # every such decline as one code (`not_approved`); here funds, limits and consent never
    # decline, so it is the face. A guess-limit lock (`step_up_locked`) is an error.
    not_matched = response.status == 200 and (
        final.get("status") == "step_up_required"
        or final.get("decline_code") in ("not_approved", "step_up_failed")
    )
    if not_matched:
        return 2, asked, FACE_NOT_MATCHED
    return 2, asked, f"step-up: {response.status} {data[:300]!r}"


def drive(
    port: int, batches: list[list[Prepared]], kiosks: list[KioskKeys], stale_at: float
) -> LoadResult:
    """Send every batch on its own persistent connection, all at once (closed loop: each
    connection sends its next payment when the last one is done, step-up included). Runs in
    the load generator's process. Payments still unsent at `stale_at` (epoch seconds: their
    signatures are about to leave the server's window) are errors, not sent."""
    signing = [keys.signing() for keys in kiosks]
    outcomes: list[list[Outcome]] = [[] for _ in batches]
    start = threading.Barrier(len(batches) + 1)

    def send(batch: list[Prepared], out: list[Outcome]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start.wait()
        for prepared in batch:
            began = time.perf_counter()
            if time.time() > stale_at:
                stale = "not sent: its signature would be stale (lower --requests)"
                out.append(Outcome(0.0, 0, "?", stale))
                continue
            problem: str | None
            try:
                sent, asked, problem = _pay(connection, signing, Instance, prepared)
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                sent, asked, problem = 1, "?", f"{type(exc).__name__}: {exc}"
                connection.close()  # the next request opens a new connection
            out.append(Outcome((time.perf_counter() - began) * 1000, sent, asked, problem))
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
        result.outcomes += out
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
        return len(self.load.outcomes) - len(self.load.errors)

    @property
    def rate(self) -> float:
        return self.approved / self.load.seconds

    @property
    def request_rate(self) -> float:
        return self.load.requests / self.load.seconds

    @property
    def face_not_matched(self) -> int:
        return sum(1 for error in self.load.errors if error == FACE_NOT_MATCHED)

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
        sent = len(self.load.outcomes)
        per = 1000 / max(1, sent)  # CPU ms per payment
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
            f"| {self.load.requests:,} | {self.load.seconds:.1f} | **{self.rate:.0f}** "
            f"| {self.request_rate:.0f} | {self.percentile(50):.1f} "
            f"| **{self.percentile(99):.1f}** | {max(self.load.latencies_ms):.1f} "
            f"| {len(self.load.errors)} | {self.face_not_matched} | {server:.1f} "
            f"| {database_cell} | {generator:.1f} | {ceiling:.0f} | {100 * busy / total:.0f} % "
            f"| {others / self.load.seconds:.2f} | {'yes' if self.target_met else 'no'} |"
        )


TABLE_HEADER = [
    "| database | gunicorn | connections | timed payments | requests | s | payments/s "
    "| requests/s | payment p50 ms | payment p99 ms | max ms | errors | of which face below "
    "threshold | CPU ms / payment: workers | PostgreSQL | load generator | CPU ceiling "
    "payments/s | machine busy | other processes, cores | target met |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
    "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
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
    kiosks = [KioskKeys.of(kiosk) for kiosk in instance.kiosks]
    for shape in shapes:
        with gunicorn(shape, instance.environment, log) as (port, pid):
            for connections in connection_counts:
                # Each set is signed just before it is sent: valid for the signature window.
                warmup = build_requests(instance, args.warmup, connections, rng)
                stale_at = time.time() + SIGNATURE_WINDOW_S - 10
                warmed = generator.submit(drive, port, warmup, kiosks, stale_at).result()
                timed = build_requests(instance, args.requests, connections, rng)
                stale_at = time.time() + SIGNATURE_WINDOW_S - 10
                before = CpuSnapshot.take(pid, instance.postgres_database)
                load = generator.submit(drive, port, timed, kiosks, stale_at).result()
                after = CpuSnapshot.take(pid, instance.postgres_database)
                for problem in sorted(set(warmed.errors + load.errors))[:5]:
                    print(f"{instance.name}, {shape.label}: {problem}", file=sys.stderr)
                warmup_errors = sum(1 for e in warmed.errors if e != FACE_NOT_MATCHED)
                measurements.append(
                    Measurement(
                        instance.name, shape, connections, load, warmup_errors, before, after
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
    settings = server_settings(folder, database_url)
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
    sent = sum(len(m.load.outcomes) for m in measurements) + args.warmup * len(measurements)
    verdict = (
        f"{name}: `facepay server ledger check` {'passed' if ok else 'FAILED'} after the runs "
        f"({report.get('payments', 0):,} payments for {sent:,} payments sent, "
        f"{report.get('transfers', 0):,} transfers); seeding {args.shoppers:,} shoppers took "
        f"{instance.seed_seconds:.0f} s."
    )
    if not ok:
        print(f"{name}: ledger problems: {report.get('problems')}", file=sys.stderr)
    return measurements, verdict


def rungs_line(measurements: list[Measurement], expected: RungExpectation) -> str:
    """What the answers asked for, over every timed payment, beside what the risk rule says."""
    asked = Counter(o.asked for m in measurements for o in m.load.outcomes)
    total = sum(asked.values())
    names = {"face": "none (face alone)", "phone_last4": "`phone_last4`", "phone": "`phone`"}
    shares = ", ".join(
        f"{names.get(rung, 'no answer or an error')} {100 * count / total:.1f} % ({count:,})"
        for rung, count in asked.most_common()
    )
    not_matched = sum(m.face_not_matched for m in measurements)
    threshold = "none" if expected.threshold is None else f"{expected.threshold}"
    return (
        f"Step-up asked ({total:,} timed payments, from the first answers' `step_up_ask`): "
        f"{shares}. The risk rule asks `{expected.rung}` at this gallery size (threshold "
        f"{threshold}) and computes that a new capture of an honest shopper passes it "
        f"{100 * expected.face_passes:.2f} % of the time; the simulated captures passed "
        f"{100 * (1 - not_matched / max(total, 1)):.2f} % (the others are the errors counted "
        "as *face below threshold*: the step-up answered not matched, and typing the number "
        "again would not help)."
    )


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
    args, _ = parser.parse_known_args()  # run_all.py passes every script the same arguments
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    expected = RungExpectation.at(server_settings(Path("unused"), "sqlite://"), args.shoppers)

    load = os.getloadavg()
    lines = [
        "## Payments: sustained payments with step-up (`bench/bench_payments.py`)",
        "",
        f"Machine: {describe()}; load average at start {load[0]:.2f} / {load[1]:.2f} / "
        f"{load[2]:.2f}.",
        "",
        f"{args.shoppers:,} enrolled shoppers ({args.shoppers * PER_SHOPPER:,} templates, each "
        "shopper with a unique phone number, a consent, an enrollment, a wrapped data key and a "
        "wallet funded by an opening transfer), bulk-inserted; "
        f"{simulated.describe()}. gunicorn runs `server.wsgi:app` with the instance's keys and "
        "the default settings (the risk rule's default targets), each worker loading the "
        "whole gallery. The load generator is another process: a thread per connection on a "
        "persistent `http.client` connection, sending payments from "
        f"{KIOSKS} paired kiosks in turn (one per store, the server's per-kiosk rate limit on), "
        f"closed loop, {args.warmup:,} warm-up payments then the timed ones. A payment: "
        "`POST /v1/payments` with a new visit of a random shopper's face (probe sealed to the "
        "server, Ed25519 signature, fresh `Idempotency-Key`, built before the timed phase), "
        f"amount {AMOUNTS[0] / 100:.2f} to {AMOUNTS[1] / 100:.2f} CAD (under the step-up "
        "amount), captured at once; then, when the answer is `step_up_required`, `POST "
        "/v1/payments/{id}/step-up` with what `step_up_ask` names (the shopper's whole phone "
        "number, or its last four digits), signed and keyed when the first answer is in. "
        "*payments/s* counts payments that ended approved; *requests/s* every request sent; "
        "latency is the whole payment, both requests. Every payment must end approved; "
        "anything else is an error.",
        "",
        "gunicorn shapes and connections as chosen by measurement on the one-request payment "
        "(2026-12-06: sync 1-3 workers, gthread 1-2 workers x 2-4 threads, 1-8 connections; "
        "not measured again with step-up): a request is CPU-bound Python, so threads add "
        "contention, not throughput, and more connections than workers only queue. SQLite: "
        "writers take turns (a lock file beside the database, then `BEGIN IMMEDIATE`), and "
        "each request spends most of its time in its write transactions, so payments are "
        "nearly serial. Commits are durable (`synchronous=FULL`, the default): money must "
        "survive a power cut. PostgreSQL: workers run in parallel, so the machine's two cores "
        "are the limit.",
        "",
        "CPU per payment (both requests) is read from /proc over the timed phase: gunicorn's "
        "processes, the PostgreSQL backends of the bench database, the load generator. *CPU "
        "ceiling*: the cores over their sum, the most payments/s this machine could serve "
        "doing nothing else. *Other processes*: CPU the machine spent outside the bench (it "
        f"may be shared). Target: ≥ {TARGET_RATE:.0f} payments/s with p99 ≤ "
        f"{TARGET_P99_MS:.0f} ms and no errors.",
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
    lines += [*TABLE_HEADER, *(m.row() for m in measurements), ""]
    if measurements:
        lines += [rungs_line(measurements, expected), ""]
    lines += [*verdicts, ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
