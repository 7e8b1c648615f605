"""Load.

A load generator in another process drives a mix of enrollments, payments and deletions
against the production server (gunicorn, two workers) and PostgreSQL on loopback, for a
bounded time, with a gallery of shoppers enrolled by bulk insert (as `bench/bench_payments.py`
builds it). Every request is a case: handled when it gets its expected answer (no 5xx, no
transport error) and, for an approved payment, exactly one charge in the books. Then
`facepay server ledger check` and `facepay server audit verify` must pass. The figures
(requests per kind, rate, p50/p99) are recorded with the tally, never asserted.

CI: 10,000 shoppers, 40 s of load. Long (FACEPAY_RELIABILITY_LONG=1): 100,000 shoppers,
three minutes.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.bench_gallery import genuine_probes
from bench.bench_payments import Instance, seed_instance, server_settings, target_fpir
from tests.adversarial.conftest import LONG, Tally
from tests.adversarial.test_faults import Books, final_checks
from tests.support.kiosk import SigningKiosk, enrollment_payload
from tests.support.payments import SyntheticFace, new_key, payment_payload
from tests.support.processes import Gunicorn, free_port, http

SHOPPERS = 100_000 if LONG else 10_000
SECONDS = 180.0 if LONG else 40.0
CONNECTIONS = 6  # generator threads, each a kiosk of its own, closed loop
WORKERS = 2  # one sync worker per core (bench/bench_payments.py measured why)
SETTLED_S = 5.0  # a new shopper is paid with or deleted only this long after enrolling
# The kiosk rate limit stays on, per kiosk and per server process, raised above the default
# (30/second;600/minute) because these kiosks send without pause; flooding is tested apart
# (test_hostile_kiosks.py).
KIOSK_RATE_LIMIT = "100/second;6000/minute"


# ---------------------------------------------------------------- the generator (its own process)


@dataclass(frozen=True)
class Kiosk:
    """A paired kiosk as it travels to the generator process: id and raw keys."""

    kiosk_id: str
    private_key: bytes
    server_public_key: bytes

    @classmethod
    def of(cls, kiosk: SigningKiosk) -> Kiosk:
        return cls(kiosk.kiosk_id, kiosk.private_key.private_bytes_raw(), kiosk.server_public_key)

    def signing(self) -> SigningKiosk:
        private = Ed25519PrivateKey.from_private_bytes(self.private_key)
        return SigningKiosk(self.kiosk_id, private, self.server_public_key)


@dataclass(frozen=True)
class Job:
    port: int
    seconds: float
    kiosks: list[Kiosk]
    vectors: str  # .npy file: the bulk shoppers' templates, three rows each
    policy: dict[str, Any]
    seed: int


@dataclass(frozen=True)
class Outcome:
    kind: str
    status: int  # 0: no answer
    milliseconds: float
    expected: bool
    payment_id: str | None
    detail: str


@dataclass
class Newcomer:
    face: SyntheticFace
    last4: str
    enrolled_at: float


def generate(job: Job) -> list[Outcome]:
    """Runs in the generator process: one closed-loop thread per kiosk until `job.seconds`."""
    vectors = np.load(job.vectors, mmap_mode="r")
    deadline = time.monotonic() + job.seconds
    outcomes: list[list[Outcome]] = [[] for _ in job.kiosks]
    threads = [
        threading.Thread(
            target=_drive_or_say_why, args=(job, kiosk, number, vectors, deadline, outcomes[number])
        )
        for number, kiosk in enumerate(job.kiosks)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [outcome for per_thread in outcomes for outcome in per_thread]


def _drive_or_say_why(
    job: Job,
    saved: Kiosk,
    number: int,
    vectors: np.ndarray,
    deadline: float,
    out: list[Outcome],
) -> None:
    """`_drive`; a fault in the generator itself is an outcome too (never a silent stop)."""
    try:
        _drive(job, saved, number, vectors, deadline, out)
    except Exception:
        out.append(Outcome("generator", 0, 0.0, False, None, traceback.format_exc()[-600:]))


def _drive(
    job: Job,
    saved: Kiosk,
    number: int,
    vectors: np.ndarray,
    deadline: float,
    out: list[Outcome],
) -> None:
    kiosk = saved.signing()
    rng = np.random.default_rng(job.seed + number)
    pick = random.Random(job.seed + number)
    connection = HTTPConnection("127.0.0.1", job.port, timeout=60)
    newcomers: list[Newcomer] = []
    leavers: list[SyntheticFace] = []
    serial = 0

    def send(kind: str, path: str, payload: dict[str, Any], key: str | None) -> tuple[int, Any]:
        nonlocal connection
        body = json.dumps(payload).encode()
        headers = kiosk.headers("POST", path, body)
        if key is not None:
            headers["Idempotency-Key"] = key
        try:
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        except (OSError, HTTPException, ValueError) as exc:
            connection.close()
            connection = HTTPConnection("127.0.0.1", job.port, timeout=60)
            return 0, f"{type(exc).__name__}: {exc}"

    while time.monotonic() < deadline:
        now = time.monotonic()
        settled = [n for n in newcomers if now - n.enrolled_at >= SETTLED_S]
        roll = pick.random()
        if roll < 0.10:
            serial += 1
            face = SyntheticFace(rng)
            last4 = f"{(number * 1_000 + serial) % 10_000:04d}"
            kind, expected = "enrollment", (201, None)
            payload = enrollment_payload(
                kiosk,
                job.policy,
                face.templates(),
                name=f"Load Shopper {number}-{serial}",
                email=f"load{number}-{serial}@example.com",
                phone=f"+1 514 555 {last4}",
                wallet=100_000,
            )
            started = time.perf_counter()
            status, answer = send(kind, "/v1/enrollments", payload, None)
            if status == 201:
                newcomers.append(Newcomer(face, last4, time.monotonic()))
        elif roll < 0.20 and settled:
            kind, expected = "payment (new shopper)", (201, "approved")
            newcomer = pick.choice(settled)
            payload = payment_payload(kiosk, newcomer.face.sample(), pick.randint(100, 999))
            started = time.perf_counter()
            status, answer = send(kind, "/v1/payments", payload, new_key())
        elif roll < 0.27 and settled:
            kind, expected = "deletion", (200, "deleted")
            newcomer = pick.choice(settled)
            payload = {
                "probe": kiosk.seal(newcomer.face.sample(), purpose="delete"),
                "phone_last4": newcomer.last4,
            }
            started = time.perf_counter()
            status, answer = send(kind, "/v1/deletions", payload, new_key())
            if status == 200:
                newcomers.remove(newcomer)
                leavers.append(newcomer.face)
        elif roll < 0.30 and leavers:
            kind, expected = "payment (deleted face)", (201, "declined")
            face = pick.choice(leavers)
            payload = payment_payload(kiosk, face.sample(), pick.randint(100, 999))
            started = time.perf_counter()
            status, answer = send(kind, "/v1/payments", payload, new_key())
        else:
            kind, expected = "payment", (201, "approved")
            row = pick.randrange(vectors.shape[0])
            probe = genuine_probes(rng, np.asarray(vectors[row : row + 1]), cosine=0.99)[0]
            payload = payment_payload(kiosk, probe, pick.randint(100, 9_999))
            started = time.perf_counter()
            status, answer = send(kind, "/v1/payments", payload, new_key())
        milliseconds = (time.perf_counter() - started) * 1000
        document = answer if isinstance(answer, dict) else {}
        got = document.get("status")
        ok = status == expected[0] and (expected[1] is None or got == expected[1])
        if kind == "payment (deleted face)":
            ok = ok and document.get("decline_code") == "no_match"
        out.append(
            Outcome(
                kind,
                status,
                milliseconds,
                ok,
                document.get("payment_id") if got == "approved" else None,
                "" if ok else f"{status} {str(answer)[:200]}",
            )
        )
    connection.close()


# ---------------------------------------------------------------- the server under load


@dataclass
class Loaded:
    instance: Instance
    server: Gunicorn
    seconds_to_seed: float
    seconds_to_start: float


@pytest.fixture
def loaded(tmp_path: Path, database_url: str) -> Iterator[Loaded]:
    """PostgreSQL with SHOPPERS bulk-enrolled shoppers and CONNECTIONS paired kiosks, and
    gunicorn serving it (every worker's gallery loaded)."""
    settings = server_settings(tmp_path / "instance", database_url, SHOPPERS)
    # The target false-positive identification risk, with room for the shoppers the load
    # enrolls: at the bench's (exactly this gallery's risk) every face would ask for step-up
    # once enrollments outnumber deletions.
    settings["target_fpir"] = repr(target_fpir(2 * SHOPPERS))
    instance = seed_instance(
        "PostgreSQL", settings, SHOPPERS, CONNECTIONS, np.random.default_rng(2026)
    )
    env = {**instance.environment, "FACEPAY_KIOSK_RATE_LIMIT": KIOSK_RATE_LIMIT}
    server = Gunicorn(
        env,
        free_port(),
        tmp_path / "gunicorn.log",
        workers=WORKERS,
        extra_args=("--timeout", "600"),  # a worker loads the whole gallery before it serves
    )
    started = time.perf_counter()
    server.start(timeout=900)
    try:
        _wait_for_every_worker(server.url, SHOPPERS)
        yield Loaded(instance, server, instance.seed_seconds, time.perf_counter() - started)
    finally:
        server.stop()


def _wait_for_every_worker(base: str, size: int, reads: int = 20, timeout: float = 900) -> None:
    deadline, agreeing = time.monotonic() + timeout, 0
    while agreeing < reads:
        assert time.monotonic() < deadline, "the workers never all loaded the gallery"
        try:
            status, body = http("GET", f"{base}/readyz")
        except OSError:
            status, body = 0, None
        ready = status == 200 and sum(body["gallery"].values()) == size
        agreeing = agreeing + 1 if ready else 0
        time.sleep(0.05)


def _percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else 0.0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_load(loaded: Loaded, database_url: str, tmp_path: Path, tally: Tally) -> None:
    """Enrollments, payments and deletions from a load generator, on gunicorn and PostgreSQL."""
    instance = loaded.instance
    vectors = tmp_path / "vectors.npy"
    np.save(vectors, instance.vectors)
    _, policy = http("GET", f"{loaded.server.url}/v1/policy")
    job = Job(
        port=loaded.server.port,
        seconds=SECONDS,
        kiosks=[Kiosk.of(kiosk) for kiosk in instance.kiosks],
        vectors=str(vectors),
        policy=policy,
        seed=7,
    )
    spawn = multiprocessing.get_context("spawn")
    began = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as generator:
        outcomes = generator.submit(generate, job).result()
    elapsed = time.perf_counter() - began

    books = Books.read(database_url)
    for outcome in outcomes:
        charged = outcome.payment_id is None or books.charges[outcome.payment_id] == 1
        tally.case(
            outcome.expected and charged,
            f"{outcome.kind}: {outcome.detail or 'approved, but not charged exactly once'}",
        )
    approved = sum(1 for outcome in outcomes if outcome.payment_id is not None)
    tally.case(
        sum(books.charges.values()) == approved,
        f"{sum(books.charges.values())} charges for {approved} approved payments",
    )
    final_checks(tally, instance.environment)

    by_kind: dict[str, list[float]] = {}
    for outcome in outcomes:
        by_kind.setdefault(outcome.kind, []).append(outcome.milliseconds)
    everything = [outcome.milliseconds for outcome in outcomes]
    tally.figures = {
        "database": "PostgreSQL",
        "shoppers": SHOPPERS,
        "gunicorn_workers": WORKERS,
        "kiosks": CONNECTIONS,
        "kiosk_rate_limit": KIOSK_RATE_LIMIT,
        "seconds": round(elapsed, 1),
        "requests": len(outcomes),
        "per_second": round(len(outcomes) / elapsed, 1),
        "p50_ms": _percentile(everything, 50),
        "p99_ms": _percentile(everything, 99),
        "unexpected": sum(1 for outcome in outcomes if not outcome.expected),
        "statuses": dict(Counter(str(outcome.status) for outcome in outcomes)),
        "kinds": {
            kind: {
                "requests": len(values),
                "p50_ms": _percentile(values, 50),
                "p99_ms": _percentile(values, 99),
            }
            for kind, values in sorted(by_kind.items())
        },
        "seed_s": round(loaded.seconds_to_seed, 1),
        "start_s": round(loaded.seconds_to_start, 1),
    }
