"""The kiosk's server client against the real server app, in process: registration and the
pinned key, enrollment, payments, step-up, the outbox through lost answers, crashes and keys
in use, and problem codes. The transport calls the Flask test client, so real signatures,
sealing, idempotency and problem documents are exercised; the clock and sleep are fakes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from kiosk.client import (
    ABANDONED,
    ANSWERED,
    PENDING,
    DeletionAnswer,
    KioskIdentity,
    Outbox,
    OutboxPending,
    PaymentAnswer,
    RetryPolicy,
    ServerClient,
    urllib_transport,
)
from kiosk.errors import KioskError, NotRegistered, ServerError, ServerUnavailable
from kiosk.home import ENV_HOME, KioskHome, register
from tests.support.payments import SyntheticFace

SERVER = "http://localhost"
PACK = "dlib-resnet-v1@1"
PHONE = "+1 514 555 0142"


# ---------------------------------------------------------------- the server, in process


@pytest.fixture
def app(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    from server import create_app
    from server.cli import initialise
    from server.extensions import services

    marker = request.node.get_closest_marker("settings")
    application = create_app(
        {
            "instance": str(tmp_path / "instance"),
            "database_url": f"sqlite:///{tmp_path / 'facepay.db'}",
            "change_poll_s": 0.1,
            # A face alone pays in these one-shopper galleries (the default stranger target
            # asks every payment for step-up; tests/unit/server/conftest.py says why).
            "risk_stranger": 1e-2,
            **(marker.kwargs if marker else {}),
        }
    )
    application.config["TESTING"] = True
    with application.app_context():
        initialise(services())
        services().start()
    yield application
    application.extensions["facepay"].stop()


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None


class AppTransport:
    """A transport into the app's test client; it records every exchange."""

    def __init__(self, app: Any) -> None:
        self.client = app.test_client()
        self.calls: list[Call] = []

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> tuple[int, Mapping[str, str], bytes]:
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == SERVER
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        response = self.client.open(target, method=method, data=body, headers=dict(headers))
        self.calls.append(Call(method, target, dict(headers), body, response.status_code))
        return response.status_code, dict(response.headers), response.get_data()

    def posts(self, path: str) -> list[Call]:
        return [call for call in self.calls if call.method == "POST" and call.path == path]


class Crash(Exception):
    """The kiosk process dying: nothing after it runs."""


class Scripted:
    """Wraps a transport; each call takes the next action: ``pass``, ``down`` (no connection),
    ``lose`` (the server runs the request, the answer is lost), ``crash`` (the kiosk dies
    before sending) or ``crash_after`` (it dies once the server has answered)."""

    def __init__(self, inner: Callable[..., Any], *actions: str) -> None:
        self.inner = inner
        self.actions = list(actions)

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> tuple[int, Mapping[str, str], bytes]:
        action = self.actions.pop(0) if self.actions else "pass"
        if action == "down":
            raise ServerUnavailable("connection refused")
        if action == "crash":
            raise Crash()
        answer = self.inner(method, url, headers, body, timeout)
        if action == "lose":
            raise ServerUnavailable("connection reset by peer")
        if action == "crash_after":
            raise Crash()
        return answer


class FakeClock:
    """Unix time that moves only when the client sleeps; starts now, so the server's
    signature window accepts its timestamps."""

    def __init__(self) -> None:
        self.now = time.time()
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass(frozen=True)
class Template:
    vector: np.ndarray
    pack: str = PACK


@pytest.fixture
def transport(app: Any) -> AppTransport:
    return AppTransport(app)


@pytest.fixture
def pairing_code(app: Any) -> Callable[[], str]:
    def new_code() -> str:
        from server.db import transaction
        from server.kiosks import service

        svc = app.extensions["facepay"]
        with transaction(svc.sessions) as session:
            created = service.add_kiosk(
                session, svc.keys.audit_key, name="till-1", store="Montreal 01"
            )
        return created.pairing_code

    return new_code


@pytest.fixture
def home(tmp_path: Path) -> KioskHome:
    return KioskHome(tmp_path / "kiosk-home")


@pytest.fixture
def registered(home: KioskHome, transport: AppTransport, pairing_code: Callable[[], str]) -> str:
    return register(home, SERVER, pairing_code(), transport=transport).kiosk_id


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(
    home: KioskHome, registered: str, transport: AppTransport, clock: FakeClock
) -> Callable[..., ServerClient]:
    def make(**options: Any) -> ServerClient:
        settings: dict[str, Any] = {
            "transport": transport,
            "clock": clock,
            "sleep": clock.sleep,
            "jitter": lambda: 0.5,
            **options,
        }
        return ServerClient.from_home(home, **settings)

    return make


@pytest.fixture
def client(make_client: Callable[..., ServerClient]) -> ServerClient:
    return make_client()


def enroll(
    client: ServerClient, face: SyntheticFace, *, name: str = "Marie Tremblay", wallet: int = 10_000
) -> Any:
    policy = client.policy()
    return client.enroll(
        policy_version=policy["version"],
        text_sha256=policy["texts"]["en"]["sha256"],
        locale="en",
        signature_name=name,
        signed_at=dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC),
        embeddings=[Template(vector) for vector in face.templates()],
        liveness="none",
        email=f"{name.split(maxsplit=1)[0].lower()}@example.com",
        phone=PHONE,
        wallet_amount=wallet,
        currency="CAD",
    )


@pytest.fixture
def face(client: ServerClient) -> SyntheticFace:
    face = SyntheticFace(np.random.default_rng(5))
    enroll(client, face)
    return face


def probe(face: SyntheticFace) -> Template:
    return Template(face.sample())


def charges(app: Any) -> list[Any]:
    from server.ledger.models import Transfer

    with app.extensions["facepay"].sessions() as session:
        return list(session.scalars(select(Transfer).where(Transfer.kind == "charge")))


def assert_ledger_ok(app: Any) -> None:
    from server.ledger import service as ledger

    with app.extensions["facepay"].sessions() as session:
        report = ledger.check(session)
    assert report.ok, report.problems


# ---------------------------------------------------------------- the home and registration


def test_register_writes_a_private_key_and_pins_the_servers_key(
    app: Any, home: KioskHome, transport: AppTransport, pairing_code: Callable[[], str]
) -> None:
    registration = register(home, SERVER, pairing_code(), transport=transport)
    assert stat.S_IMODE(home.path.stat().st_mode) == 0o700
    assert stat.S_IMODE(home.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.config_path.stat().st_mode) == 0o600
    assert not [p for p in home.path.iterdir() if p.name.endswith(".tmp")]
    sealing = app.extensions["facepay"].keys.sealing
    assert registration.server_public_key_bytes == sealing.public_bytes()
    assert registration.server_key_id == sealing.key_id
    saved = json.loads(home.config_path.read_text())
    assert saved["kiosk_id"] == registration.kiosk_id
    assert saved["server_url"] == SERVER
    assert "PRIVATE" not in home.config_path.read_text()
    identity = home.identity()
    assert identity.kiosk_id == registration.kiosk_id
    assert identity.server_public_key == sealing.public_bytes()
    assert [call.path for call in transport.calls] == [
        "/.well-known/facepay-server-key",
        "/v1/kiosks/register",
    ]


def test_register_refuses_to_replace_a_registration_unless_forced(
    home: KioskHome, transport: AppTransport, pairing_code: Callable[[], str]
) -> None:
    first = register(home, SERVER, pairing_code(), transport=transport)
    key_before = home.key_path.read_bytes()
    with pytest.raises(KioskError) as refused:
        register(home, SERVER, pairing_code(), transport=transport)
    assert refused.value.code == "kiosk_already_registered"
    assert home.key_path.read_bytes() == key_before
    second = register(home, SERVER, pairing_code(), transport=transport, force=True)
    assert second.kiosk_id != first.kiosk_id
    assert home.key_path.read_bytes() != key_before
    assert home.identity().kiosk_id == second.kiosk_id


def test_register_refuses_a_key_other_than_the_published_one(
    app: Any, home: KioskHome, transport: AppTransport, pairing_code: Callable[[], str]
) -> None:
    def forged(
        method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> tuple[int, Mapping[str, str], bytes]:
        status, answered, raw = transport(method, url, headers, body, timeout)
        if url.endswith("/.well-known/facepay-server-key"):
            document = json.loads(raw)
            document["public_key"] = "A" * 43
            raw = json.dumps(document).encode()
        return status, answered, raw

    with pytest.raises(KioskError) as refused:
        register(home, SERVER, pairing_code(), transport=forged)
    assert refused.value.code == "server_key_mismatch"
    assert not home.is_registered() and not home.key_path.exists()


def test_register_surfaces_the_servers_problem_code(
    home: KioskHome, transport: AppTransport
) -> None:
    with pytest.raises(ServerError) as refused:
        register(home, SERVER, "NOPE-NOPE-NOPE", transport=transport)
    assert (refused.value.code, refused.value.status) == ("pairing_code_invalid", 403)
    assert not home.is_registered()


def test_register_wants_https_for_a_server_elsewhere(home: KioskHome) -> None:
    with pytest.raises(ValueError, match="https"):
        register(home, "http://facepay.example.com", "CODE-CODE-CODE")
    with pytest.raises(ValueError, match="path"):
        register(home, "https://facepay.example.com/api", "CODE-CODE-CODE")


def test_an_unregistered_home_raises_not_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "elsewhere"))
    home = KioskHome()
    assert home.path == tmp_path / "elsewhere"
    with pytest.raises(NotRegistered):
        home.identity()
    with pytest.raises(NotRegistered):
        ServerClient.from_home(home)


def test_a_key_file_others_can_read_is_refused(home: KioskHome, registered: str) -> None:
    home.key_path.chmod(0o644)
    with pytest.raises(KioskError) as refused:
        home.identity()
    assert refused.value.code == "key_file_insecure"


def test_a_key_that_is_not_the_registered_one_is_refused(home: KioskHome, registered: str) -> None:
    saved = json.loads(home.config_path.read_text())
    saved["public_key"] = "B" * 43
    home.config_path.write_text(json.dumps(saved))
    with pytest.raises(NotRegistered):
        home.identity()


# ---------------------------------------------------------------- enrollment and payments


def test_enroll_then_pay_approved(app: Any, client: ServerClient) -> None:
    face = SyntheticFace(np.random.default_rng(5))
    enrolled = enroll(client, face, wallet=10_000)
    assert (enrolled.masked_label, enrolled.wallet_balance) == ("Marie T.", 10_000)
    assert enrolled.pack == PACK
    answer = client.pay(1_250, "CAD", probe(face), "none")
    assert answer.status == "approved" and answer.state == "captured"
    assert (answer.shopper_label, answer.wallet_balance) == ("Marie T.", 8_750)
    assert not answer.replayed
    assert [t.amount for t in charges(app)] == [1_250]
    assert_ledger_ok(app)
    entry = client.outbox.get(answer.idempotency_key or "")
    assert entry is not None and entry.state == ANSWERED and entry.body is None
    assert entry.response_status == 201
    assert not client.has_pending()
    read = client.get_payment(answer.payment_id or "")
    assert (read.status, read.kind, read.payment_id) == ("approved", "read", answer.payment_id)


def test_a_stranger_is_declined_with_a_code(client: ServerClient, face: SyntheticFace) -> None:
    stranger = SyntheticFace(np.random.default_rng(99))
    answer = client.pay(500, "CAD", probe(stranger), "none")
    # Said as not_approved: the kiosk learns nothing of whose face it is.
    assert (answer.status, answer.decline_code) == ("declined", "not_approved")


def test_the_policy_texts_are_checked_against_their_sha256(
    app: Any, home: KioskHome, registered: str, transport: AppTransport, clock: FakeClock
) -> None:
    def altered(
        method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> tuple[int, Mapping[str, str], bytes]:
        status, answered, raw = transport(method, url, headers, body, timeout)
        document = json.loads(raw)
        document["texts"]["en"]["text"] += " (and we may sell your face)"
        return status, answered, json.dumps(document).encode()

    client = ServerClient.from_home(home, transport=altered, clock=clock, sleep=clock.sleep)
    with pytest.raises(KioskError) as refused:
        client.policy()
    assert refused.value.code == "policy_text_mismatch"


def test_a_lost_answer_is_retried_with_the_same_key_and_replayed(
    app: Any,
    make_client: Callable[..., ServerClient],
    transport: AppTransport,
    clock: FakeClock,
    face: SyntheticFace,
) -> None:
    client = make_client(transport=Scripted(transport, "lose"))
    answer = client.pay(700, "CAD", probe(face), "none")
    assert answer.status == "approved" and answer.replayed
    first, second = transport.posts("/v1/payments")
    assert first.status == second.status == 201
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.headers["Idempotency-Key"] == answer.idempotency_key
    assert first.body == second.body
    assert first.headers["X-Facepay-Nonce"] != second.headers["X-Facepay-Nonce"]
    assert first.headers["X-Facepay-Signature"] != second.headers["X-Facepay-Signature"]
    assert len(clock.slept) == 1
    assert [t.amount for t in charges(app)] == [700]
    assert_ledger_ok(app)
    entry = client.outbox.get(answer.idempotency_key or "")
    assert entry is not None and entry.attempts == 2 and entry.replayed


def test_a_crash_before_sending_is_finished_by_resolve_pending(
    app: Any,
    make_client: Callable[..., ServerClient],
    transport: AppTransport,
    face: SyntheticFace,
) -> None:
    crashing = make_client(transport=Scripted(transport, "crash"))
    with pytest.raises(Crash):
        crashing.pay(900, "CAD", probe(face), "none")
    assert transport.posts("/v1/payments") == [] and charges(app) == []

    restarted = make_client()  # a new process on the same home
    (entry,) = restarted.outbox.pending()
    assert entry.kind == "payment" and entry.body is not None and entry.state == PENDING
    with pytest.raises(OutboxPending):
        restarted.pay(100, "CAD", probe(face), "none")
    (answer,) = restarted.resolve_pending()
    assert answer.status == "approved" and answer.idempotency_key == entry.key
    assert not answer.replayed
    assert [t.amount for t in charges(app)] == [900]
    assert restarted.resolve_pending() == []
    assert restarted.pay(100, "CAD", probe(face), "none").status == "approved"
    assert [t.amount for t in charges(app)] == [900, 100]
    assert_ledger_ok(app)


def test_a_crash_after_the_server_answered_is_resolved_from_the_stored_answer(
    app: Any,
    make_client: Callable[..., ServerClient],
    transport: AppTransport,
    face: SyntheticFace,
) -> None:
    crashing = make_client(transport=Scripted(transport, "crash_after"))
    with pytest.raises(Crash):
        crashing.pay(900, "CAD", probe(face), "none")
    assert len(charges(app)) == 1

    restarted = make_client()
    assert restarted.has_pending()
    (answer,) = restarted.resolve_pending()
    assert answer.status == "approved" and answer.replayed
    assert answer.wallet_balance == 9_100
    assert len(charges(app)) == 1
    assert not restarted.has_pending()
    assert_ledger_ok(app)


def test_an_entry_older_than_the_servers_key_memory_is_not_resent(
    app: Any,
    make_client: Callable[..., ServerClient],
    transport: AppTransport,
    clock: FakeClock,
    face: SyntheticFace,
) -> None:
    crashing = make_client(transport=Scripted(transport, "crash"))
    with pytest.raises(Crash):
        crashing.pay(900, "CAD", probe(face), "none")
    clock.now += 13 * 3600  # the kiosk stayed off half a day
    restarted = make_client()
    (answer,) = restarted.resolve_pending()
    assert (answer.status, answer.code) == ("error", "outbox_entry_expired")
    assert transport.posts("/v1/payments") == [] and charges(app) == []
    assert not restarted.has_pending()
    entry = restarted.outbox.get(answer.idempotency_key or "")
    assert entry is not None and entry.state == ABANDONED and entry.body is None


def test_a_key_still_in_use_is_waited_for(
    app: Any,
    make_client: Callable[..., ServerClient],
    transport: AppTransport,
    clock: FakeClock,
    registered: str,
    face: SyntheticFace,
) -> None:
    """Another attempt holds the key (claimed in the server's table): the server answers
    409 with Retry-After; the client waits and sends again; the other attempt gives up."""
    from server.idempotency import service as idempotency

    sessions = app.extensions["facepay"].sessions
    claims: list[Any] = []

    def claim_first(
        method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> tuple[int, Mapping[str, str], bytes]:
        if not claims and urlsplit(url).path == "/v1/payments":
            claims.append(
                idempotency.claim(
                    sessions,
                    scope=f"kiosk:{registered}",
                    key=headers["Idempotency-Key"],
                    fingerprint=idempotency.fingerprint("POST", "/v1/payments", json.loads(body)),
                    lease_s=60,
                )
            )
        return transport(method, url, headers, body, timeout)

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        idempotency.release(sessions, claims[0])

    client = make_client(transport=claim_first, sleep=sleep)
    answer = client.pay(400, "CAD", probe(face), "none")
    assert answer.status == "approved"
    assert [call.status for call in transport.posts("/v1/payments")] == [409, 201]
    assert clock.slept and clock.slept[0] >= 1.0  # the server's Retry-After
    assert [t.amount for t in charges(app)] == [400]
    assert_ledger_ok(app)


def test_no_answer_within_the_retry_policy_leaves_the_payment_pending(
    app: Any,
    make_client: Callable[..., ServerClient],
    transport: AppTransport,
    clock: FakeClock,
    face: SyntheticFace,
) -> None:
    policy = RetryPolicy(tries=4, first_delay_s=0.5, max_delay_s=1.5, total_s=60)
    client = make_client(transport=Scripted(transport, *["down"] * 4), retry=policy)
    with pytest.raises(ServerUnavailable):
        client.pay(300, "CAD", probe(face), "none")
    assert clock.slept == [policy.delay(n, 0.5) for n in (1, 2, 3)]
    assert clock.slept == [0.375, 0.75, 1.125]
    assert client.has_pending() and charges(app) == []
    (answer,) = client.resolve_pending()  # the server is back
    assert answer.status == "approved"
    assert [t.amount for t in charges(app)] == [300]


def test_retries_stop_at_the_total_time(
    make_client: Callable[..., ServerClient],
    transport: AppTransport,
    clock: FakeClock,
    face: SyntheticFace,
) -> None:
    policy = RetryPolicy(tries=1_000, first_delay_s=1.0, max_delay_s=4.0, total_s=10.0)
    client = make_client(transport=Scripted(transport, *["down"] * 1_000), retry=policy)
    with pytest.raises(ServerUnavailable):
        client.pay(300, "CAD", probe(face), "none")
    assert 0 < sum(clock.slept) <= 10.0
    assert max(clock.slept) <= 4.0


def test_server_problems_raise_their_code_and_close_the_entry(
    client: ServerClient, face: SyntheticFace
) -> None:
    with pytest.raises(ServerError) as refused:
        client.pay(500, "EUR", probe(face), "none")
    assert (refused.value.code, refused.value.status) == ("currency_not_accepted", 422)
    assert not client.has_pending()
    assert client.pay(500, "CAD", probe(face), "none").status == "approved"


def test_a_refused_signature_keeps_the_payment_pending(
    app: Any, client: ServerClient, registered: str, face: SyntheticFace
) -> None:
    from server.db import transaction
    from server.kiosks import service

    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        service.revoke(session, svc.keys.audit_key, registered)
    with pytest.raises(ServerError) as refused:
        client.pay(500, "CAD", probe(face), "none")
    assert (refused.value.code, refused.value.status) == ("kiosk_revoked", 403)
    assert client.has_pending()  # an earlier attempt might have gone through
    with pytest.raises(OutboxPending):
        client.pay(500, "CAD", probe(face), "none")


@pytest.mark.settings(step_up_above=1_000)
def test_step_up_has_its_own_key_and_a_wrong_challenge_is_a_final_409(
    app: Any, client: ServerClient, transport: AppTransport, face: SyntheticFace
) -> None:
    asked = client.pay(5_000, "CAD", probe(face), "none")
    assert asked.status == "step_up_required" and asked.step_up_reason == "amount"
    assert asked.step_up_ask == "phone_last4"  # said by the server, or its default
    assert asked.challenge_id and asked.tries_left == 1  # one answer per challenge
    wrong = dataclasses.replace(asked, challenge_id=str(uuid.uuid4()))
    with pytest.raises(ServerError) as refused:
        client.step_up(wrong, phone_last4="0142")
    assert (refused.value.code, refused.value.status) == ("challenge_mismatch", 409)
    assert not client.has_pending()
    approved = client.step_up(asked, phone_last4="0142")
    assert approved.status == "approved" and approved.kind == "step_up"
    assert approved.wallet_balance == 5_000
    keys = {call.headers.get("Idempotency-Key") for call in transport.calls}
    assert {asked.idempotency_key, approved.idempotency_key} <= keys
    assert asked.idempotency_key != approved.idempotency_key
    assert [t.amount for t in charges(app)] == [5_000]
    with pytest.raises(KioskError) as nothing_asked:
        client.step_up(approved, phone_last4="0142")
    assert nothing_asked.value.code == "no_step_up_pending"
    assert_ledger_ok(app)


def test_an_authorization_is_captured_once(
    app: Any, client: ServerClient, face: SyntheticFace
) -> None:
    held = client.pay(2_000, "CAD", probe(face), "none", capture_method="manual")
    assert held.status == "approved" and held.state == "authorized"
    assert charges(app) == []
    captured = client.capture(held.payment_id or "", 1_500)
    assert (captured.state, captured.captured_amount, captured.kind) == (
        "captured",
        1_500,
        "capture",
    )
    with pytest.raises(ServerError) as again:
        client.void(held.payment_id or "")
    assert again.value.code == "payment_not_authorized"
    assert [t.amount for t in charges(app)] == [1_500]
    assert_ledger_ok(app)


# ---------------------------------------------------------------- enrollment is sent once


def test_an_enrollment_whose_answer_is_lost_is_not_resent(
    app: Any,
    make_client: Callable[..., ServerClient],
    transport: AppTransport,
    face: SyntheticFace,
) -> None:
    other = SyntheticFace(np.random.default_rng(8))
    client = make_client(transport=Scripted(transport, "pass", "lose"))  # policy, enrollment
    with pytest.raises(ServerUnavailable):
        enroll(client, other, name="Jean Roy")
    assert len(transport.posts("/v1/enrollments")) == 2  # the fixture's face, then this one
    (entry,) = [e for e in client.outbox.entries() if e.state != ANSWERED]
    assert entry.state == ABANDONED and entry.body is None
    with pytest.raises(ServerError) as again:
        enroll(client, other, name="Jean Roy")  # the first attempt went through
    assert (again.value.code, again.value.status) == ("already_enrolled", 409)


def test_an_enrollment_interrupted_before_sending_is_abandoned_after_a_restart(
    make_client: Callable[..., ServerClient], transport: AppTransport, face: SyntheticFace
) -> None:
    crashing = make_client(transport=Scripted(transport, "pass", "crash"))
    with pytest.raises(Crash):
        enroll(crashing, SyntheticFace(np.random.default_rng(8)), name="Jean Roy")
    restarted = make_client()
    assert not restarted.has_pending()  # an enrollment does not hold payments back
    sent = len(transport.posts("/v1/enrollments"))
    assert restarted.resolve_pending() == []
    assert len(transport.posts("/v1/enrollments")) == sent
    assert restarted.outbox.pending() == []


# ---------------------------------------------------------------- deletion (planned endpoint)


class PlannedDeletions:
    """A stand-in for the planned `POST /v1/deletions`, as the server's other POSTs behave:
    it checks the signature, opens the probe sealed for "delete", runs once per key and
    replays its answer to a retry."""

    def __init__(self, identity: KioskIdentity, sealing: Any) -> None:
        self.identity = identity
        self.sealing = sealing
        self.calls: list[Call] = []
        self.opened: list[np.ndarray] = []
        self.answers: dict[str, bytes] = {}

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> tuple[int, Mapping[str, str], bytes]:
        from server.crypto import body_sha256_hex, kiosk_public_key_bytes, verify_request
        from server.templates import b64decode, transport_associated_data

        path = urlsplit(url).path
        assert (method, path) == ("POST", "/v1/deletions")
        self.calls.append(Call(method, path, dict(headers), body))
        verify_request(
            kiosk_public_key_bytes(self.identity.private_key),
            headers["X-Facepay-Signature"],
            method=method,
            path=path,
            body_sha256_hex=body_sha256_hex(body),
            timestamp=int(headers["X-Facepay-Timestamp"]),
            nonce=headers["X-Facepay-Nonce"],
            kiosk_id=headers["X-Facepay-Kiosk"],
        )
        key = headers["Idempotency-Key"]
        if key in self.answers:
            return 201, {"Idempotent-Replayed": "true"}, self.answers[key]
        sent = json.loads(body)
        associated = transport_associated_data(
            kiosk_id=self.identity.kiosk_id, pack=PACK, purpose="delete", liveness="none"
        )
        raw = self.sealing.open(b64decode(sent["probe"]["sealed"]), associated)
        self.opened.append(np.frombuffer(raw, dtype="<f4"))
        answer = {
            "status": "deleted" if sent["phone_last4"] == "0142" else "not_found",
            "request_id": str(uuid.uuid4()),
            "done_at": "2026-11-26T12:00:00+00:00",
        }
        self.answers[key] = json.dumps(answer).encode()
        return 201, {"Content-Type": "application/json"}, self.answers[key]


@pytest.fixture
def planned(tmp_path: Path) -> tuple[PlannedDeletions, Outbox, FakeClock]:
    from server.crypto import ServerSealingKey

    sealing = ServerSealingKey.generate()
    identity = KioskIdentity(
        server_url=SERVER,
        kiosk_id=str(uuid.uuid4()),
        private_key=Ed25519PrivateKey.generate(),
        server_public_key=sealing.public_bytes(),
    )
    return PlannedDeletions(identity, sealing), Outbox(tmp_path / "outbox.sqlite3"), FakeClock()


def deletion_client(
    planned: tuple[PlannedDeletions, Outbox, FakeClock], *actions: str
) -> ServerClient:
    server, outbox, clock = planned
    return ServerClient(
        server.identity,
        outbox,
        transport=Scripted(server, *actions),
        clock=clock,
        sleep=clock.sleep,
        jitter=lambda: 0.5,
    )


def test_delete_me_posts_a_probe_sealed_for_deletion(
    planned: tuple[PlannedDeletions, Outbox, FakeClock],
) -> None:
    server, outbox, _ = planned
    face = SyntheticFace(np.random.default_rng(4))
    sample = face.sample()
    answer = deletion_client(planned).delete_me(Template(sample), "none", phone_last4="0142")
    assert isinstance(answer, DeletionAnswer)
    assert answer.status == "deleted" and answer.request_id and not answer.replayed
    (opened,) = server.opened
    np.testing.assert_array_equal(opened, sample)
    (call,) = server.calls
    assert json.loads(call.body)["phone_last4"] == "0142"
    entry = outbox.get(call.headers["Idempotency-Key"])
    assert entry is not None and entry.state == ANSWERED and entry.body is None


def test_a_deletion_is_resent_with_its_key_until_answered(
    planned: tuple[PlannedDeletions, Outbox, FakeClock],
) -> None:
    server, _, _ = planned
    face = SyntheticFace(np.random.default_rng(4))
    answer = deletion_client(planned, "lose").delete_me(
        Template(face.sample()), "none", phone_last4="0142"
    )
    assert answer.status == "deleted" and answer.replayed
    first, second = server.calls
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.body == second.body and len(server.opened) == 1

    crashing = deletion_client(planned, "crash")
    with pytest.raises(Crash):
        crashing.delete_me(Template(face.sample()), "none", phone_last4="0142")
    restarted = deletion_client(planned)
    assert restarted.has_pending()
    with pytest.raises(OutboxPending):
        restarted.delete_me(Template(face.sample()), "none", phone_last4="0142")
    (resolved,) = restarted.resolve_pending()
    assert isinstance(resolved, DeletionAnswer) and resolved.status == "deleted"
    assert not restarted.has_pending()


# ---------------------------------------------------------------- secrets stay out of logs


def test_no_template_signature_or_key_reaches_a_log_line(
    home: KioskHome,
    make_client: Callable[..., ServerClient],
    transport: AppTransport,
    face: SyntheticFace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(transport=Scripted(transport, "down", "lose"))
    answer = client.pay(600, "CAD", probe(face), "none")
    assert answer.status == "approved"
    sent = transport.posts("/v1/payments")
    secrets_seen = [home.key_path.read_text().splitlines()[1]]
    for call in sent:
        secrets_seen.append(call.headers["X-Facepay-Signature"])
        secrets_seen.append(json.loads(call.body)["probe"]["sealed"])
    assert caplog.records  # the retries were logged
    words = (caplog.text, repr(client), repr(client.identity), repr(client.outbox.pending()))
    for secret in secrets_seen:
        assert all(secret not in text for text in words)
        assert secret[:24] not in caplog.text


# ---------------------------------------------------------------- the default transport


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"status": 409, "code": "idempotency_key_in_use"}).encode()
        self.send_response(409)
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_default_transport_returns_http_errors_and_follows_no_redirect(
    http_server: str,
) -> None:
    status, headers, body = urllib_transport("POST", http_server + "/v1/x", {}, b"{}", 5.0)
    assert status == 409 and json.loads(body)["code"] == "idempotency_key_in_use"
    assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "1"
    status, _, _ = urllib_transport("POST", http_server + "/moved", {}, b"{}", 5.0)
    assert status == 302


def test_the_default_transport_raises_server_unavailable_without_a_server() -> None:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    with pytest.raises(ServerUnavailable):
        urllib_transport("GET", f"http://127.0.0.1:{port}/v1/policy", {}, b"", 2.0)


def test_answers_are_typed() -> None:
    answer = PaymentAnswer(status="error", code="currency_not_accepted", http_status=422)
    with pytest.raises(ServerError) as raised:
        answer.raise_for_error()
    assert (raised.value.code, raised.value.status) == ("currency_not_accepted", 422)
