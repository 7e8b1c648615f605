"""Load.

A load generator in another process drives a mix of enrollments, payments and deletions
against the production server (gunicorn, two workers, default risk settings) on loopback, on
SQLite and on PostgreSQL, for a bounded time, with a gallery of shoppers enrolled by bulk insert (as
`bench/bench_payments.py` builds it). Faces are simulated (`bench/simulated.py`, calibrated to
the default pack): the bulk shoppers and the newcomers the load enrolls (3 frames of one
visit), and every probe a new visit. A payment follows the step-up the server asks for (at
this gallery size, every face): the payment, then the step-up with the whole phone number or
its last four digits, as `step_up_ask` says; a deletion sends the whole phone number.

Every payment, enrollment and deletion is a case: handled when each of its requests gets an
expected answer (no 5xx, no transport error) and, for an approved payment, exactly one charge
in the books. A new capture of an honest shopper's face can score below the rung's threshold
(the risk rule computes about 1 % at this size): that payment ends not matched, or that
deletion not found, with no charge; a case, then, for the share of honest payments approved
and of deletions done, each at least `MIN_HONEST`. Then `facepay server ledger check` and
`facepay server audit verify` must pass. The figures (requests per kind, rate, p50/p99, the
rungs asked) are recorded with the tally, never asserted.

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

from bench import simulated
from bench.payments_instance import Instance, KioskKeys, seed_instance, server_settings
from tests.adversarial.conftest import LONG, Tally
from tests.adversarial.test_faults import Books, final_checks
from tests.support.kiosk import SigningKiosk, enrollment_payload
from tests.support.payments import new_key, payment_payload
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
# Honest payments approved and deletions done, at least: the risk rule computes that about 99 %
# of new captures pass the rung's threshold at this size; far fewer means a fault, not chance.
MIN_HONEST = 0.95


# ---------------------------------------------------------------- the generator (its own process)


@dataclass(frozen=True)
class Job:
    port: int
    seconds: float
    kiosks: list[KioskKeys]
    centres: str  # .npy file: the bulk shoppers' identity centres, shopper i in row i
    policy: dict[str, Any]
    seed: int


@dataclass(frozen=True)
class Outcome:
    kind: str
    status: int  # the last request's; 0: no answer
    milliseconds: float  # every request of the case
    requests: int
    expected: bool  # every answer one the case may get
    done: bool  # approved (a payment), deleted (a deletion), enrolled
    payment_id: str | None  # an approved payment's
    asked: str  # the step-up rung a payment's first answer asked for ("" if none)
    detail: str


@dataclass(eq=False)  # one shopper is one object (and arrays do not compare as ==)
class Newcomer:
    centre: np.ndarray  # the simulated face: each capture is a new visit of it
    phone: str
    enrolled_at: float


def generate(job: Job) -> list[Outcome]:
    """Runs in the generator process: one closed-loop thread per kiosk until `job.seconds`."""
    centres = np.load(job.centres, mmap_mode="r")
    deadline = time.monotonic() + job.seconds
    outcomes: list[list[Outcome]] = [[] for _ in job.kiosks]
    threads = [
        threading.Thread(
            target=_drive_or_say_why, args=(job, kiosk, number, centres, deadline, outcomes[number])
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
    saved: KioskKeys,
    number: int,
    centres: np.ndarray,
    deadline: float,
    out: list[Outcome],
) -> None:
    """`_drive`; a fault in the generator itself is an outcome too (never a silent stop)."""
    try:
        _drive(job, saved, number, centres, deadline, out)
    except Exception:
        detail = traceback.format_exc()[-600:]
        out.append(Outcome("generator", 0, 0.0, 0, False, False, None, "", detail))


class _Client:
    """One kiosk's persistent connection: signed requests, answers as (status, document)."""

    def __init__(self, kiosk: SigningKiosk, port: int) -> None:
        self.kiosk, self.port = kiosk, port
        self.connection = HTTPConnection("127.0.0.1", port, timeout=60)
        self.requests = 0

    def send(self, path: str, payload: dict[str, Any], key: str | None) -> tuple[int, Any]:
        body = json.dumps(payload).encode()
        headers = self.kiosk.headers("POST", path, body)
        if key is not None:
            headers["Idempotency-Key"] = key
        self.requests += 1
        try:
            self.connection.request("POST", path, body, headers)
            response = self.connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        except (OSError, HTTPException, ValueError) as exc:
            self.connection.close()
            self.connection = HTTPConnection("127.0.0.1", self.port, timeout=60)
            return 0, f"{type(exc).__name__}: {exc}"

    def pay(self, probe: np.ndarray, amount: int, phone: str) -> tuple[int, dict[str, Any], str]:
        """A payment and, when asked, its step-up answered from `phone` (the whole number or
        its last four digits, what `step_up_ask` names): (last status, last answer, asked)."""
        status, answer = self.send(
            "/v1/payments", payment_payload(self.kiosk, probe, amount), new_key()
        )
        document = answer if isinstance(answer, dict) else {"error": answer}
        if status != 201 or document.get("status") != "step_up_required":
            return status, document, ""
        asked = str(document.get("step_up_ask"))
        digits = "".join(c for c in phone if c.isdigit())
        reply = {"phone": phone} if asked == "phone" else {"phone_last4": digits[-4:]}
        status, answer = self.send(
            f"/v1/payments/{document['payment_id']}/step-up",
            {"challenge_id": document["challenge_id"], **reply},
            new_key(),
        )
        return status, answer if isinstance(answer, dict) else {"error": answer}, asked


def _not_matched(status: int, answer: dict[str, Any]) -> bool:
    """A step-up answered "not matched": the face below the rung's threshold, no charge (the
    challenge still open, or declined: the server says every such decline as `not_approved`)."""
    return status == 200 and (
        answer.get("status") == "step_up_required"
        or answer.get("decline_code") in ("not_approved", "step_up_failed")
    )


def _drive(
    job: Job,
    saved: KioskKeys,
    number: int,
    centres: np.ndarray,
    deadline: float,
    out: list[Outcome],
) -> None:
    client = _Client(saved.signing(), job.port)
    kiosk = client.kiosk
    sim = simulated.simulator()
    rng = np.random.default_rng(job.seed + number)
    pick = random.Random(job.seed + number)
    newcomers: list[Newcomer] = []
    leavers: list[Newcomer] = []
    serial = 0

    while time.monotonic() < deadline:
        now = time.monotonic()
        settled = [n for n in newcomers if now - n.enrolled_at >= SETTLED_S]
        roll = pick.random()
        before = client.requests
        started = time.perf_counter()
        asked = ""
        if roll < 0.10:
            serial += 1
            kind = "enrollment"
            centre = sim.identities(1, rng)
            frames = sim.captures(centre, rng, frames=simulated.FRAMES)[0]
            # Unique per kiosk thread and serial (bulk shoppers' numbers start +1 438).
            phone = f"+1 514 9{number:02d} {serial % 10_000:04d}"
            payload = enrollment_payload(
                kiosk,
                job.policy,
                list(frames),
                name=f"Load Shopper {number}-{serial}",
                email=f"load{number}-{serial}@example.com",
                phone=phone,
                wallet=100_000,
            )
            status, answer = client.send("/v1/enrollments", payload, None)
            document = answer if isinstance(answer, dict) else {"error": answer}
            ok = done = status == 201
            if ok:
                newcomers.append(Newcomer(centre[0], phone, time.monotonic()))
        elif roll < 0.20 and settled:
            kind = "payment (new shopper)"
            newcomer = pick.choice(settled)
            probe = sim.probes(newcomer.centre[None, :], rng)[0]
            status, document, asked = client.pay(probe, pick.randint(100, 999), newcomer.phone)
            done = status in (200, 201) and document.get("status") == "approved"
            ok = done or _not_matched(status, document)
        elif roll < 0.27 and settled:
            kind = "deletion"
            newcomer = pick.choice(settled)
            payload = {
                "probe": kiosk.seal(sim.probes(newcomer.centre[None, :], rng)[0], purpose="delete"),
                "phone": newcomer.phone,
            }
            status, answer = client.send("/v1/deletions", payload, new_key())
            document = answer if isinstance(answer, dict) else {"error": answer}
            done = status == 200 and document.get("status") == "deleted"
            ok = done or (status == 200 and document.get("status") == "not_found")
            if done:
                newcomers.remove(newcomer)
                leavers.append(newcomer)
        elif roll < 0.30 and leavers:
            kind = "payment (deleted face)"
            leaver = pick.choice(leavers)
            probe = sim.probes(leaver.centre[None, :], rng)[0]
            status, document, asked = client.pay(probe, pick.randint(100, 999), leaver.phone)
            done = False
            # Step-up with the deleted number finds nobody; a face alone finds nobody either;
            # a face that failed ten times today is locked out (step_up_locked).
            ok = (
                _not_matched(status, document)
                or (status == 200 and document.get("decline_code") == "step_up_locked")
                or (status == 201 and document.get("decline_code") in ("not_approved", "no_match"))
            )
        else:
            kind = "payment"
            shopper = pick.randrange(centres.shape[0])
            probe = sim.probes(np.asarray(centres[shopper : shopper + 1]), rng)[0]
            phone = Instance.phone(shopper)
            status, document, asked = client.pay(probe, pick.randint(100, 9_999), phone)
            done = status in (200, 201) and document.get("status") == "approved"
            ok = done or _not_matched(status, document)
        milliseconds = (time.perf_counter() - started) * 1000
        approved = kind.startswith("payment") and done
        out.append(
            Outcome(
                kind,
                status,
                milliseconds,
                client.requests - before,
                ok,
                done,
                document.get("payment_id") if approved else None,
                asked,
                "" if ok else f"{status} {str(document)[:200]}",
            )
        )
    client.connection.close()


# ---------------------------------------------------------------- the server under load


@dataclass
class Loaded:
    instance: Instance
    server: Gunicorn
    seconds_to_seed: float
    seconds_to_start: float


@pytest.fixture
def loaded(tmp_path: Path, database_url: str) -> Iterator[Loaded]:
    """The database with SHOPPERS bulk-enrolled shoppers and CONNECTIONS paired kiosks, and
    gunicorn serving it (every worker's gallery loaded)."""
    settings = server_settings(tmp_path / "instance", database_url)
    instance = seed_instance(
        _database_name(database_url), settings, SHOPPERS, CONNECTIONS, np.random.default_rng(2026)
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


def _database_name(database_url: str) -> str:
    return "SQLite" if database_url.startswith("sqlite") else "PostgreSQL"


def test_load(loaded: Loaded, database_url: str, tmp_path: Path, tally: Tally) -> None:
    """Enrollments, payments with step-up and deletions from a load generator, on gunicorn."""
    instance = loaded.instance
    centres = tmp_path / "centres.npy"
    np.save(centres, instance.centres)
    _, policy = http("GET", f"{loaded.server.url}/v1/policy")
    job = Job(
        port=loaded.server.port,
        seconds=SECONDS,
        kiosks=[KioskKeys.of(kiosk) for kiosk in instance.kiosks],
        centres=str(centres),
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
    for what, kinds in (
        ("honest payments approved", ("payment", "payment (new shopper)")),
        ("deletions done", ("deletion",)),
    ):
        cases = [o for o in outcomes if o.kind in kinds and o.expected]
        share = sum(o.done for o in cases) / len(cases) if cases else 1.0
        tally.case(share >= MIN_HONEST, f"{what}: {share:.3f} of {len(cases)}")
    final_checks(tally, instance.environment)

    by_kind: dict[str, list[float]] = {}
    for outcome in outcomes:
        by_kind.setdefault(outcome.kind, []).append(outcome.milliseconds)
    everything = [outcome.milliseconds for outcome in outcomes]
    requests = sum(outcome.requests for outcome in outcomes)
    honest = [o for o in outcomes if o.kind in ("payment", "payment (new shopper)")]
    tally.figures = {
        "database": _database_name(database_url),
        "shoppers": SHOPPERS,
        "gunicorn_workers": WORKERS,
        "kiosks": CONNECTIONS,
        "kiosk_rate_limit": KIOSK_RATE_LIMIT,
        "seconds": round(elapsed, 1),
        "cases": len(outcomes),
        "requests": requests,
        "per_second": round(requests / elapsed, 1),
        "cases_per_second": round(len(outcomes) / elapsed, 1),
        "p50_ms": _percentile(everything, 50),
        "p99_ms": _percentile(everything, 99),
        "unexpected": sum(1 for outcome in outcomes if not outcome.expected),
        "honest_payments_approved": sum(o.done for o in honest),
        "honest_payments": len(honest),
        "step_up_asked": dict(Counter(o.asked or "none" for o in honest)),
        "statuses": dict(Counter(str(outcome.status) for outcome in outcomes)),
        "kinds": {
            kind: {
                "cases": len(values),
                "p50_ms": _percentile(values, 50),
                "p99_ms": _percentile(values, 99),
            }
            for kind, values in sorted(by_kind.items())
        },
        "seed_s": round(loaded.seconds_to_seed, 1),
        "start_s": round(loaded.seconds_to_start, 1),
    }
