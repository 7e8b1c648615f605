"""Faults.

Against the production server (gunicorn, three workers, on loopback): every server process
killed during authorizations, PostgreSQL restarted under load, a kiosk killed between sending
a payment and reading its answer, and the shopper key store gone (at start-up and while
serving). After each, every idempotency key has its one answer and at most one charge (none
lost, none doubled), and `facepay server ledger check` and `facepay server audit verify`
pass (run as commands; each is a case). On SQLite and PostgreSQL, except the restart of
PostgreSQL.

Long variants (FACEPAY_RELIABILITY_LONG=1): more kills, rounds and keys.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from server.idempotency.models import IdempotencyKey
from server.ledger.models import Transfer
from server.payments.models import CAPTURED, Payment
from server.shoppers.models import Shopper
from tests.adversarial.conftest import LONG, Tally
from tests.integration.test_payments_concurrency import SHOPPERS, Store, store
from tests.support.kiosk import enrollment_payload
from tests.support.payments import SyntheticFace, new_key, payment_payload, unit
from tests.support.processes import (
    Reply,
    exchange,
    http,
    register_kiosk_http,
    signed_exchange,
)

__all__ = ["store"]  # the fixture: a gunicorn, 20 enrolled shoppers, a paired kiosk

PACK = "dlib-resnet-v1@1"
RETRIED = frozenset({409, 429, 500, 502, 503})  # what a kiosk retries with the same key


# ---------------------------------------------------------------- what the books say


@dataclass
class Books:
    """The server's database, read directly: payments, charges, and the answer each
    idempotency key holds."""

    payments: dict[str, tuple[str, int]]  # payment id -> (state, amount)
    charges: Counter[str]  # payment id -> its charge transfers
    keys: dict[str, str | None]  # idempotency key -> payment id of its stored answer

    @classmethod
    def read(cls, database_url: str) -> Books:
        engine = sa.create_engine(database_url)
        try:
            with engine.connect() as connection:
                payments = {
                    row.id: (row.state, row.amount)
                    for row in connection.execute(
                        sa.select(Payment.id, Payment.state, Payment.amount)
                    )
                }
                charges = Counter(
                    str(payment_id)
                    for (payment_id,) in connection.execute(
                        sa.select(Transfer.payment_id).where(Transfer.kind == "charge")
                    )
                )
                keys = {
                    row.key: json.loads(row.response_body or "{}").get("payment_id")
                    for row in connection.execute(
                        sa.select(IdempotencyKey.key, IdempotencyKey.response_body)
                    )
                }
        finally:
            engine.dispose()
        return cls(payments, charges, keys)

    def charged_once(self, key: str, answer: dict[str, Any], amount: int) -> tuple[bool, str]:
        """The key's answer is an approval whose payment is captured with exactly one charge,
        and the answer the key holds names that payment."""
        payment_id = answer.get("payment_id")
        if answer.get("status") != "approved" or not isinstance(payment_id, str):
            return False, f"{key[:8]}: answered {answer}"
        found = (
            self.payments.get(payment_id) == (CAPTURED, amount)
            and self.charges[payment_id] == 1
            and self.keys.get(key) == payment_id
        )
        detail = (
            f"{key[:8]}: payment {self.payments.get(payment_id)}, "
            f"{self.charges[payment_id]} charges, key holds {self.keys.get(key)}"
        )
        return found, detail


def shopper_active(database_url: str, shopper_id: str) -> bool:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            status = connection.scalar(sa.select(Shopper.status).where(Shopper.id == shopper_id))
    finally:
        engine.dispose()
    return status == "active"


def shopper_count(database_url: str) -> int:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.scalar(sa.select(sa.func.count()).select_from(Shopper)) or 0)
    finally:
        engine.dispose()


def final_checks(tally: Tally, env: dict[str, str]) -> None:
    """`facepay server ledger check` and `facepay server audit verify`, run as commands: each
    must exit 0 (a case each)."""
    for command in (("ledger", "check"), ("audit", "verify")):
        result = subprocess.run(
            [sys.executable, "-m", "facepay_cli", "server", *command, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        tally.case(
            result.returncode == 0,
            f"facepay server {' '.join(command)}: exit {result.returncode} "
            f"{result.stdout[-300:]} {result.stderr[-300:]}",
        )


# ---------------------------------------------------------------- a kiosk that retries


@dataclass
class Attempts:
    """A payment sent until it had its final answer, and every answer on the way."""

    key: str
    amount: int
    final: Reply | None = None
    on_the_way: list[str] = field(default_factory=list)  # "503 problem", "transport", ...
    unclean: list[str] = field(default_factory=list)  # answers that were not clean errors

    @property
    def retries(self) -> int:
        return len(self.on_the_way)

    def answer(self) -> dict[str, Any]:
        document = self.final.json() if self.final is not None else None
        return document if isinstance(document, dict) else {}


def pay_until_final(
    store: Store, payload: dict[str, Any], key: str, amount: int, deadline_s: float = 120
) -> Attempts:
    """What a kiosk does: send, and on no answer (connection lost, 409 still running, 429,
    5xx) send the same body with the same key again. Every non-final answer must be a clean
    error: a problem+json document that is not `internal_error` (a fault outside the server
    is not a bug in it), or no connection at all."""
    attempts, deadline = Attempts(key, amount), time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            reply = signed_exchange(
                store.kiosk, store.url, "POST", "/v1/payments", payload, idempotency_key=key
            )
        except OSError as exc:
            attempts.on_the_way.append(f"transport {type(exc).__name__}")
            time.sleep(0.1)
            continue
        if reply.status not in RETRIED:
            attempts.final = reply
            return attempts
        code = (reply.json() or {}).get("code")
        attempts.on_the_way.append(f"{reply.status} {code}")
        if not reply.is_problem or code == "internal_error":  # an outage is not a bug
            attempts.unclean.append(f"{reply.status} {reply.mimetype} {reply.body[:120]!r}")
        time.sleep(0.1)
    return attempts


def charge_cases(tally: Tally, books: Books, done: list[Attempts]) -> None:
    """One case per key: its final answer an approval charged exactly once, and nothing but
    clean errors on the way."""
    for attempts in done:
        ok, detail = books.charged_once(attempts.key, attempts.answer(), attempts.amount)
        final = attempts.final.status if attempts.final is not None else "none"
        tally.case(
            ok and attempts.final is not None and attempts.final.status == 201,
            f"final {final}: {detail}",
        )
        if attempts.unclean:
            tally.case(False, f"{attempts.key[:8]} unclean answers: {attempts.unclean[:3]}")


# ---------------------------------------------------------------- SIGKILL of the server


def test_server_killed_during_authorizations(store: Store, database_url: str, tally: Tally) -> None:
    """SIGKILL of every server process during authorizations, restarted; the kiosk retries."""
    kills = 3 if LONG else 1
    amount, done = 100, []
    for _ in range(kills):
        jobs = [
            (payment_payload(store.kiosk, face.sample(), amount), new_key())
            for face in store.faces
            for _ in range(5)
        ]
        answered = threading.Semaphore(0)

        def send(job: tuple[dict[str, Any], str], answered: threading.Semaphore) -> Attempts:
            payload, key = job
            attempts = pay_until_final(store, payload, key, amount)
            answered.release()
            return attempts

        with ThreadPoolExecutor(max_workers=10) as pool:
            futures = [pool.submit(send, job, answered) for job in jobs]
            for _ in range(len(jobs) // 5):  # a fifth answered: kill in the middle of the rest
                assert answered.acquire(timeout=60)
            store.server.kill()
            time.sleep(0.5)
            store.server.start()
            round_done = [future.result() for future in futures]
        assert sum(a.retries for a in round_done) > 0, "the kill hit no request in flight"
        done += round_done

    books = Books.read(database_url)
    charge_cases(tally, books, done)
    tally.case(
        len(books.payments) == len(done) == sum(books.charges.values()),
        f"{len(books.payments)} payments and {sum(books.charges.values())} charges "
        f"for {len(done)} keys",
    )
    final_checks(tally, store.env)


# ---------------------------------------------------------------- PostgreSQL restarted


def _cluster_of(admin_url: str) -> tuple[str, str] | None:
    """(version, name) of this machine's PostgreSQL cluster serving `admin_url`, when it is
    local and this process may restart it with pg_ctlcluster; None otherwise."""
    url = sa.make_url(admin_url)
    if url.host not in ("127.0.0.1", "localhost", "::1") or shutil.which("pg_ctlcluster") is None:
        return None
    if os.geteuid() != 0:
        return None
    listed = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False
    )
    for line in listed.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == str(url.port or 5432):
            return fields[0], fields[1]
    return None


def _postgres_answers(admin_url: str) -> bool:
    engine = sa.create_engine(admin_url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def wait_for_postgres(admin_url: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _postgres_answers(admin_url):
            return True
        time.sleep(0.2)
    return False


@contextmanager
def postgres_back_up_afterwards(admin_url: str, cluster: tuple[str, str] | None) -> Iterator[None]:
    """Whatever happens in the block, PostgreSQL answers again after it (others need it)."""
    try:
        yield
    finally:
        if not wait_for_postgres(admin_url, timeout=30) and cluster is not None:
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "start"],
                capture_output=True,
                check=False,
                timeout=120,
            )
            wait_for_postgres(admin_url, timeout=60)


def restart_postgres(admin_url: str, database: str, cluster: tuple[str, str] | None) -> str:
    """Restart the machine's PostgreSQL (`pg_ctlcluster ... restart`: fast shutdown, every
    connection cut, then start). Where this process may not (another host, not root), cut every
    connection to the test database instead. Returns what was done."""
    if cluster is not None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"],
            capture_output=True,
            check=True,
            timeout=120,
        )
        return "restarted"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": database},
            )
    finally:
        engine.dispose()
    return "connections terminated"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_restarted_during_load(
    store: Store, database_url: str, postgres_server: str, tally: Tally
) -> None:
    """PostgreSQL restarted while payments are in flight from several threads.

    A request that meets the outage gets a clean error (problem+json) or no connection, and
    its kiosk retries the same key; once the database is back every key has exactly one
    charge. The server recovers by itself (no restart): after the retries, new payments
    succeed at their first attempt, every worker answers /readyz, and the change feed
    (LISTEN/NOTIFY) carries a new enrollment to every worker.
    """
    cluster = _cluster_of(postgres_server)
    database = sa.make_url(database_url).database or ""
    amount, threads = 10, 8
    stop, restarted = threading.Event(), threading.Event()
    after_restart = threading.Semaphore(0)

    def keep_paying(worker: int) -> list[Attempts]:
        rng, done = np.random.default_rng(worker), []  # the faces' own generator is shared
        while not stop.is_set():
            face = store.faces[int(rng.integers(len(store.faces)))]
            probe = unit(face.direction + 0.01 * rng.standard_normal(face.direction.size))
            payload, key = payment_payload(store.kiosk, probe, amount), new_key()
            done.append(pay_until_final(store, payload, key, amount))
            if restarted.is_set():
                after_restart.release()
        return done

    with postgres_back_up_afterwards(postgres_server, cluster):
        with ThreadPoolExecutor(max_workers=threads) as pool:
            futures = [pool.submit(keep_paying, worker) for worker in range(threads)]
            time.sleep(1.0)  # payments under way
            what = restart_postgres(postgres_server, database, cluster)
            restarted.set()
            for _ in range((10 if LONG else 3) * threads):  # answered after the restart
                assert after_restart.acquire(timeout=120), "no payment answered after restart"
            stop.set()
            done = [attempts for future in futures for attempts in future.result()]
        seen = Counter(answer for attempts in done for answer in attempts.on_the_way)
        tally.figures = {"postgresql": what, "answers_before_the_final_one": dict(seen)}
        assert sum(a.retries for a in done) > 0, "the restart hit no request in flight"

        books = Books.read(database_url)
        charge_cases(tally, books, done)
        tally.case(
            len(books.payments) == len(done) == sum(books.charges.values()),
            f"{len(books.payments)} payments, {sum(books.charges.values())} charges "
            f"for {len(done)} keys",
        )
        # Recovered by itself: new payments succeed at their first attempt (from another
        # kiosk: the first one may have spent its rate allowance on the retries).
        till = register_kiosk_http(store.env, store.url, name="till-2")
        for face in store.faces:
            reply = signed_exchange(
                till,
                store.url,
                "POST",
                "/v1/payments",
                payment_payload(till, face.sample(), amount),
                idempotency_key=new_key(),
            )
            answer = reply.json() or {}
            tally.case(
                reply.status == 201 and answer.get("status") == "approved",
                f"after recovery: {reply.status} {answer.get('code') or answer.get('status')}",
            )
        # And the change feed: a new shopper reaches every worker's gallery.
        _, policy = http("GET", f"{store.url}/v1/policy")
        newcomer = SyntheticFace(np.random.default_rng(99))
        enrolled = signed_exchange(
            till,
            store.url,
            "POST",
            "/v1/enrollments",
            enrollment_payload(till, policy, newcomer.templates(), email="new@example.com"),
        )
        tally.case(enrolled.status == 201, f"enrollment after recovery: {enrolled.status}")
        tally.case(
            gallery_everywhere(store.url, SHOPPERS + 1),
            "the change feed did not carry the enrollment to every worker",
        )
        final_checks(tally, store.env)


def gallery_everywhere(base: str, size: int, reads: int = 30, timeout: float = 30) -> bool:
    """Whether /readyz answers ready with `size` shoppers `reads` times in a row (each answer
    from whichever worker took the connection) within `timeout`."""
    deadline, agreeing = time.monotonic() + timeout, 0
    while agreeing < reads:
        if time.monotonic() > deadline:
            return False
        try:
            status, body = http("GET", f"{base}/readyz")
        except OSError:
            status, body = 0, None
        ready = status == 200 and isinstance(body, dict) and body["gallery"].get(PACK) == size
        agreeing = agreeing + 1 if ready else 0
        time.sleep(0.01)
    return True


# ---------------------------------------------------------------- the kiosk killed


# The kiosk's own client (kiosk/client.py) in a process of its own: `pay` sends one payment
# through the outbox and prints its answer; `resolve` finishes what the outbox holds pending.
KIOSK_PROCESS = r"""
import dataclasses, json, sys, types
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kiosk.client import KioskIdentity, Outbox, RetryPolicy, ServerClient

mode, saved, outbox, url = sys.argv[1:5]
with open(saved) as handle:
    kiosk = json.load(handle)
identity = KioskIdentity(
    url,
    kiosk["kiosk_id"],
    Ed25519PrivateKey.from_private_bytes(bytes.fromhex(kiosk["private_key"])),
    bytes.fromhex(kiosk["server_public_key"]),
)
retry = RetryPolicy(tries=200, first_delay_s=0.1, max_delay_s=0.5, total_s=120)
client = ServerClient(identity, Outbox(outbox), retry=retry, timeout_s=60)
if mode == "pay":
    vector = np.load(sys.argv[5])
    probe = types.SimpleNamespace(vector=vector, pack="dlib-resnet-v1@1")
    answers = [client.pay(int(sys.argv[6]), "CAD", probe, "none")]
else:
    answers = client.resolve_pending()
print(json.dumps([dataclasses.asdict(answer) for answer in answers]))
"""


class Proxy:
    """A TCP proxy between the kiosk and the server, one exchange per connection (the kiosk
    sends `Connection: close`). Modes: `forward` passes everything; `withhold` passes the
    request on and reads the server's answer, but keeps it from the kiosk (the connection stays
    open, silent); `drop` closes each connection before reading it (nothing reaches the
    server)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "forward"
        self.received = threading.Event()  # a whole request came in
        self.answered = threading.Event()  # the server answered one
        self.answers: list[bytes] = []
        self.dropped = 0
        self._closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def reset(self, mode: str) -> None:
        self.mode = mode
        self.received.clear()
        self.answered.clear()

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            if self.mode == "drop":
                self.dropped += 1
                linger = struct.pack("ii", 1, 0)  # on, 0 s: close() sends a reset
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                return
            mode = self.mode
            request = _read_request(connection)
            self.received.set()
            with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
                upstream.sendall(request)
                answer = b""
                while chunk := upstream.recv(65536):
                    answer += chunk
            self.answers.append(answer)
            self.answered.set()
            if mode == "forward":
                connection.sendall(answer)
                return
            self._closing.wait(300)  # withheld: silent until the test ends


def _read_request(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _answer_body(raw: bytes) -> dict[str, Any]:
    document = json.loads(raw.partition(b"\r\n\r\n")[2] or b"{}")
    return document if isinstance(document, dict) else {}


@dataclass
class KioskHome:
    folder: Path
    saved: Path
    outbox: Path

    def start(self, mode: str, url: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                KIOSK_PROCESS,
                mode,
                str(self.saved),
                str(self.outbox),
                url,
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def pending(self) -> list[Any]:
        from kiosk.client import Outbox

        return Outbox(self.outbox).pending()


@pytest.fixture
def kiosk_home(store: Store, tmp_path: Path) -> KioskHome:
    """The store's kiosk identity, saved where a kiosk process can load it."""
    folder = tmp_path / "kiosk"
    folder.mkdir()
    saved = folder / "identity.json"
    saved.write_text(
        json.dumps(
            {
                "kiosk_id": store.kiosk.kiosk_id,
                "private_key": store.kiosk.private_key.private_bytes_raw().hex(),
                "server_public_key": store.kiosk.server_public_key.hex(),
            }
        )
    )
    return KioskHome(folder, saved, folder / "outbox.sqlite3")


def _wait_for(condition: Any, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_kiosk_killed_between_sending_and_receiving(
    store: Store, database_url: str, kiosk_home: KioskHome, tally: Tally
) -> None:
    """The kiosk killed between sending a payment and reading its answer.

    The real kiosk client (kiosk/client.py, its outbox in SQLite) in a process of its own,
    SIGKILLed; then a new kiosk process resolves the pending payment from the outbox. Three
    ways: the server answered but the answer never reached the kiosk (a proxy withholds it);
    the request was sent while the server was stopped (SIGSTOP) and ran after the kiosk died;
    the request never reached the server (connections reset while the kiosk retried). Each
    time exactly one charge, and the new kiosk process learns the answer the server gave
    (replayed) or, if the server never had the request, its first answer.
    """
    rounds = 4 if LONG else 1
    proxy = Proxy(store.server.port)
    amount = 250
    try:
        for number in range(rounds):
            for way in ("answer lost", "server stopped", "never arrived"):
                face = store.faces[(3 * number + len(way)) % len(store.faces)]
                probe = kiosk_home.folder / "probe.npy"
                np.save(probe, face.sample())
                before = Books.read(database_url)
                proxy.reset("drop" if way == "never arrived" else "withhold")
                if way == "server stopped":
                    store.server.signal(signal.SIGSTOP)
                try:
                    kiosk = kiosk_home.start("pay", proxy.url, str(probe), str(amount))
                    if way == "never arrived":
                        sent = _wait_for(lambda: proxy.dropped >= 2)
                    elif way == "server stopped":
                        sent = proxy.received.wait(60)
                    else:
                        sent = proxy.answered.wait(60)
                    kiosk.kill()
                    kiosk.communicate(timeout=30)
                finally:
                    if way == "server stopped":
                        store.server.signal(signal.SIGCONT)
                proxy.dropped = 0
                assert sent, f"{way}: the kiosk sent nothing"
                if way == "server stopped":
                    assert proxy.answered.wait(60), "the stopped server never answered"
                pending = kiosk_home.pending()
                tally.case(
                    len(pending) == 1 and pending[0].attempts >= 1,
                    f"{way}: outbox {[(e.kind, e.attempts) for e in pending]}",
                )
                resolver = kiosk_home.start("resolve", store.url)
                out, err = resolver.communicate(timeout=180)
                answers = json.loads(out) if resolver.returncode == 0 else []
                tally.case(len(answers) == 1, f"{way}: resolve answered {out[-200:]} {err[-300:]}")
                if len(answers) != 1:
                    continue
                answer = answers[0]
                key = str(answer.get("idempotency_key"))
                books = Books.read(database_url)
                ok, detail = books.charged_once(key, answer, amount)
                tally.case(
                    ok and len(books.payments) == len(before.payments) + 1,
                    f"{way}: {detail}; {len(books.payments) - len(before.payments)} new payments",
                )
                if way == "never arrived":
                    recovered = not answer["replayed"]  # the server's first run of the key
                else:
                    first = _answer_body(proxy.answers[-1])
                    recovered = bool(answer["replayed"]) and all(
                        answer.get(name) == first.get(name)
                        for name in ("payment_id", "status", "state", "amount", "wallet_balance")
                    )
                tally.case(recovered, f"{way}: recovered {answer} vs sent {proxy.answers[-1:]}")
                tally.case(not kiosk_home.pending(), f"{way}: still pending after resolve")
    finally:
        proxy.close()
    final_checks(tally, store.env)


# ---------------------------------------------------------------- the key store unavailable


def _log_since(log: Path, offset: int) -> str:
    with log.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def _phone_last4(number: int) -> str:
    return f"{1000 + number}"  # the store fixture's phones: +1 514 555 {1000 + number}


def readyz(base: str) -> Reply:
    return exchange("GET", f"{base}/readyz")


def test_key_store_unavailable(store: Store, database_url: str, tally: Tally) -> None:
    """The key store unavailable: removed while serving, corrupt or missing at start-up.

    What is right, and checked here:

    - while serving (the key store file removed): payments keep working from the in-memory
      gallery, which already holds every enrolled template decrypted (the key store only
      opens newly enrolled ones), so each is charged exactly once; an enrollment is refused
      with 503 problem+json and leaves no shopper (a shopper without a data key would stop
      the gallery from loading); a deletion is refused with 503 problem+json and deletes
      nothing, since its receipt would claim a crypto-shredding that cannot happen yet; the
      kiosk retries it with the same key once the store is back, and then it is done;
    - at start-up (the file corrupt; or missing, in production, where it is never created):
      the server runs but is not ready (/readyz 503) and
      refuses everything that needs a match (payments, enrollments, deletions: 503
      problem+json, nothing recorded, the idempotency key not spent), never matching against
      an empty or partial gallery; once the file is back it loads the gallery by itself and
      the kiosk's retry with the same key is charged once.
    """
    instance = Path(store.env["FACEPAY_INSTANCE"])
    key_store = instance / "keystore.sqlite3"
    away = instance / "keystore.sqlite3.away"
    _, policy = http("GET", f"{store.url}/v1/policy")
    amount, rounds = 200, 3 if LONG else 1

    def post(path: str, payload: dict[str, Any], key: str | None = None) -> Reply:
        """As the kiosk sends: the same body again after a 429 (the rate limit stays on)."""
        for _ in range(60):
            reply = signed_exchange(
                store.kiosk, store.url, "POST", path, payload, idempotency_key=key
            )
            if reply.status != 429:
                break
            time.sleep(float(reply.headers.get("Retry-After", "1")))
        return reply

    def payment(number: int) -> dict[str, Any]:
        return payment_payload(store.kiosk, store.faces[number].sample(), amount)

    def pay(body: dict[str, Any], key: str) -> Reply:
        return post("/v1/payments", body, key)

    def enroll(face: SyntheticFace, email: str) -> Reply:
        payload = enrollment_payload(store.kiosk, policy, face.templates(), email=email)
        return post("/v1/enrollments", payload)

    def deletion(number: int) -> dict[str, Any]:
        return {
            "probe": store.kiosk.seal(store.faces[number].sample(), purpose="delete"),
            "phone_last4": _phone_last4(number),
        }

    def delete(body: dict[str, Any], key: str) -> Reply:
        return post("/v1/deletions", body, key)

    def refused(reply: Reply) -> bool:
        return reply.status == 503 and reply.is_problem

    # While serving: the file removed (an unmounted volume, an operator's mistake).
    gone: set[int] = set()  # shoppers deleted in an earlier round: their faces are declined
    for round_number in range(rounds):
        key_store.rename(away)
        try:
            keys, answers = [], []
            for number in range(SHOPPERS):
                key = new_key()
                keys.append(key)
                answers.append(pay(payment(number), key))
            books = Books.read(database_url)
            for number, key, reply in zip(range(SHOPPERS), keys, answers, strict=True):
                answer = reply.json() or {}
                if number in gone:
                    declined = (answer.get("status"), answer.get("decline_code"))
                    tally.case(
                        declined == ("declined", "not_approved"), f"deleted face: {declined}"
                    )
                    continue
                ok, detail = books.charged_once(key, answer, amount)
                tally.case(reply.status == 201 and ok, f"pay while removed: {detail}")
            shoppers = shopper_count(database_url)
            newcomer = SyntheticFace(np.random.default_rng(500 + round_number))
            email = f"newcomer{round_number}@example.com"
            enrolled = enroll(newcomer, email)
            tally.case(refused(enrolled), f"enroll while removed: {enrolled.status}")
            tally.case(
                shopper_count(database_url) == shoppers, "an enrollment left a shopper behind"
            )
            leaving, deletion_key = SHOPPERS - 1 - round_number, new_key()
            leaving_body = deletion(leaving)
            deleted = delete(leaving_body, deletion_key)
            tally.case(refused(deleted), f"delete while removed: {deleted.status}")
            tally.case(
                shopper_active(database_url, store.shopper_ids[leaving]),
                "a deletion went ahead without its key being shredded",
            )
        finally:
            away.rename(key_store)
        again = delete(leaving_body, deletion_key)  # the kiosk's retry: same body, same key
        tally.case(
            again.status == 200 and (again.json() or {}).get("status") == "deleted",
            f"deletion retried: {again.status} {again.body[:200]!r}",
        )
        tally.case(
            not shopper_active(database_url, store.shopper_ids[leaving]),
            "the retried deletion left the shopper",
        )
        gone.add(leaving)
        enrolled = enroll(newcomer, email)
        tally.case(enrolled.status == 201, f"enroll once back: {enrolled.status}")
    remaining = SHOPPERS  # one leaves and one joins per round
    tally.case(gallery_everywhere(store.url, remaining), "the gallery did not settle")

    # At start-up: the file corrupt (development), or missing (production: never created).
    production = {
        "FACEPAY_ENV": "production",
        "FACEPAY_SECRET_KEY": "faults-test-secret",
        "FACEPAY_REQUIRE_LIVENESS": "false",
        **{
            f"FACEPAY_{name.upper()}_KEY_FILE": str(instance / "keys" / f"{name}.key")
            for name in ("master", "audit", "phone", "sealing")
        },
    }
    for way, settings in (("corrupt", {}), ("missing", production)):
        store.server.stop()
        key_store.rename(away)
        if way == "corrupt":
            key_store.write_bytes(b"this is not an SQLite database " * 64)
        development = dict(store.env)
        store.env.update(settings)
        key, body, logged = new_key(), payment(0), store.server.log.stat().st_size
        try:
            store.server.start(ready_path="/healthz")
            assert _wait_for(  # every worker up, and not ready (each says so once)
                lambda since=logged: (
                    _log_since(store.server.log, since).count("not ready:") == store.server.workers
                )
            ), "the workers did not all start"
            not_ready = [readyz(store.url) for _ in range(10)]
            tally.case(
                all(refused(reply) for reply in not_ready),
                f"{way}: readyz {Counter(r.status for r in not_ready)}",
            )
            before = Books.read(database_url)
            first = pay(body, key)
            tally.case(refused(first), f"{way}: pay {first.status} {first.body[:200]!r}")
            shoppers = shopper_count(database_url)
            newcomer = SyntheticFace(np.random.default_rng(900))
            enrolled = enroll(newcomer, f"late-{way}@example.com")
            tally.case(refused(enrolled), f"{way}: enroll {enrolled.status}")
            deleted = delete(deletion(0), new_key())
            tally.case(refused(deleted), f"{way}: delete {deleted.status}")
            after = Books.read(database_url)
            tally.case(
                after.payments == before.payments
                and shopper_count(database_url) == shoppers
                and shopper_active(database_url, store.shopper_ids[0]),
                f"{way}: something was recorded while the key store was unusable",
            )
        finally:
            away.replace(key_store)
        tally.case(
            gallery_everywhere(store.url, remaining, timeout=60),
            f"{way}: the server did not recover by itself once the key store was back",
        )
        second = pay(body, key)  # the kiosk's retry: same body, same key
        ok, detail = Books.read(database_url).charged_once(key, second.json() or {}, amount)
        tally.case(second.status == 201 and ok, f"{way}: the payment retried once back: {detail}")
        store.env.clear()
        store.env.update(development)
    final_checks(tally, store.env)
