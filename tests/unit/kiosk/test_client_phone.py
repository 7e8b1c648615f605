"""The client's phone answers: a step-up answered with what the server asks (`step_up_ask`:
the last four digits or the full number), and a deletion confirmed by either.

The server of these tests stands in for the payments and deletions API as its contract says
(not yet in the server this repo runs in process): it checks each signature, asks for the
kind it was set to ask for, refuses the other kind with 422 ``step_up_answer_mismatch``, and a
deletion by four digits with 422 ``full_phone_required`` when told to. No network, no waiting.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.client import ANSWERED, KioskIdentity, Outbox, PaymentAnswer, ServerClient
from kiosk.errors import KioskError, ServerError
from server.crypto import ServerSealingKey

SERVER = "http://localhost"
PACK = "dlib-resnet-v1@1"
PHONE = "+1 514 555 0142"
LAST4 = "0142"


@dataclass(frozen=True)
class Template:
    vector: np.ndarray
    pack: str = PACK


@dataclass(frozen=True)
class Sent:
    path: str
    key: str
    body: dict[str, Any]


@dataclass
class PhoneServer:
    """`POST /v1/payments`, `/v1/payments/{id}/step-up` and `/v1/deletions` as the contract
    has them. `ask` is what a step-up asks for (None: an older server that does not say);
    `deletion_needs_full_phone` refuses a deletion by four digits."""

    identity: KioskIdentity
    ask: str | None = "phone"
    deletion_needs_full_phone: bool = False
    sent: list[Sent] = field(default_factory=list)
    payment_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    challenge_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> tuple[int, Mapping[str, str], bytes]:
        from server.crypto import body_sha256_hex, kiosk_public_key_bytes, verify_request

        path = urlsplit(url).path
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
        document = json.loads(body)
        self.sent.append(Sent(path, headers["Idempotency-Key"], document))
        if path == "/v1/payments":
            return self._json(201, self._challenge())
        if path == f"/v1/payments/{self.payment_id}/step-up":
            return self._step_up(document)
        assert path == "/v1/deletions"
        return self._deletion(document)

    def _challenge(self) -> dict[str, Any]:
        answer = {
            "status": "step_up_required",
            "payment_id": self.payment_id,
            "challenge_id": self.challenge_id,
            "step_up_reason": "identity",
            "tries_left": 3,
        }
        if self.ask is not None:
            answer["step_up_ask"] = self.ask
        return answer

    def _step_up(self, document: dict[str, Any]) -> tuple[int, Mapping[str, str], bytes]:
        given = {"phone_last4", "phone"} & set(document)
        if given != {self.ask or "phone_last4"}:
            return self._problem(422, "step_up_answer_mismatch")
        return self._json(200, {"status": "approved", "payment_id": self.payment_id})

    def _deletion(self, document: dict[str, Any]) -> tuple[int, Mapping[str, str], bytes]:
        if self.deletion_needs_full_phone and "phone" not in document:
            return self._problem(422, "full_phone_required")
        answer = {"status": "deleted", "request_id": str(uuid.uuid4()), "done_at": "2026-11-26"}
        return self._json(201, answer)

    @staticmethod
    def _json(status: int, answer: dict[str, Any]) -> tuple[int, Mapping[str, str], bytes]:
        return status, {"Content-Type": "application/json"}, json.dumps(answer).encode()

    @staticmethod
    def _problem(status: int, code: str) -> tuple[int, Mapping[str, str], bytes]:
        problem = {"status": status, "code": code, "title": "Unprocessable", "detail": code}
        return status, {"Content-Type": "application/problem+json"}, json.dumps(problem).encode()


@pytest.fixture
def identity() -> KioskIdentity:
    return KioskIdentity(
        server_url=SERVER,
        kiosk_id=str(uuid.uuid4()),
        private_key=Ed25519PrivateKey.generate(),
        server_public_key=ServerSealingKey.generate().public_bytes(),
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox.sqlite3")


def client_of(server: PhoneServer, outbox: Outbox) -> ServerClient:
    now = time.time()
    return ServerClient(
        server.identity, outbox, transport=server, clock=lambda: now, sleep=lambda _: None
    )


def template() -> Template:
    vector = np.random.default_rng(3).normal(size=128).astype(np.float32)
    return Template(vector / np.linalg.norm(vector))


def asked_by(server: PhoneServer, outbox: Outbox) -> tuple[ServerClient, PaymentAnswer]:
    client = client_of(server, outbox)
    return client, client.pay(25_000, "CAD", template(), "none")


# ---------------------------------------------------------------- step-up


def test_a_step_up_asking_for_the_full_number_sends_the_number_only(
    identity: KioskIdentity, outbox: Outbox
) -> None:
    server = PhoneServer(identity, ask="phone")
    client, asked = asked_by(server, outbox)
    assert (asked.status, asked.step_up_ask) == ("step_up_required", "phone")
    approved = client.step_up(asked, phone=PHONE)
    assert approved.status == "approved"
    step_up = server.sent[-1]
    assert step_up.body == {"challenge_id": server.challenge_id, "phone": PHONE}
    assert "phone_last4" not in step_up.body
    # The outbox keeps the server's answer as it came, what it asked for included.
    paid = outbox.get(asked.idempotency_key or "")
    assert paid is not None and paid.response is not None
    assert json.loads(paid.response)["step_up_ask"] == "phone"
    entry = outbox.get(step_up.key)
    assert entry is not None and entry.state == ANSWERED and entry.body is None


@pytest.mark.parametrize("ask", ["phone_last4", None])
def test_a_step_up_asking_for_four_digits_sends_them_only(
    identity: KioskIdentity, outbox: Outbox, ask: str | None
) -> None:
    """Said by the server, or not said at all (an older server): four digits."""
    server = PhoneServer(identity, ask=ask)
    client, asked = asked_by(server, outbox)
    assert asked.step_up_ask == "phone_last4"
    assert client.step_up(asked, phone_last4=LAST4).status == "approved"
    assert server.sent[-1].body == {"challenge_id": server.challenge_id, "phone_last4": LAST4}


@pytest.mark.parametrize(
    ("ask", "given"),
    [("phone", {"phone_last4": LAST4}), ("phone_last4", {"phone": PHONE})],
)
def test_the_other_kind_than_asked_is_refused_before_anything_is_sent(
    identity: KioskIdentity, outbox: Outbox, ask: str, given: dict[str, str]
) -> None:
    server = PhoneServer(identity, ask=ask)
    client, asked = asked_by(server, outbox)
    entries = len(outbox.entries())
    with pytest.raises(KioskError) as refused:
        client.step_up(asked, **given)
    assert refused.value.code == "step_up_answer_mismatch"
    assert [sent.path for sent in server.sent] == ["/v1/payments"]
    assert len(outbox.entries()) == entries and not client.has_pending()


def test_the_servers_own_refusal_of_the_other_kind_is_a_final_answer(
    identity: KioskIdentity, outbox: Outbox
) -> None:
    """A kiosk that believes four digits are asked (an answer read before the server changed
    its mind) gets the server's 422: final, nothing left pending, the right kind goes next."""
    server = PhoneServer(identity, ask="phone")
    client, asked = asked_by(server, outbox)
    believed = dataclasses.replace(asked, step_up_ask="phone_last4")
    with pytest.raises(ServerError) as refused:
        client.step_up(believed, phone_last4=LAST4)
    assert (refused.value.code, refused.value.status) == ("step_up_answer_mismatch", 422)
    assert not client.has_pending()
    assert client.step_up(asked, phone=PHONE).status == "approved"


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ({"phone": "555014"}, "phone_invalid"),  # 6 digits
        ({"phone": "1234567890123456"}, "phone_invalid"),  # 16 digits
        ({"phone": "+1 (514) 555 - 0142 - 00 00"}, "phone_invalid"),  # over 24 characters
        ({"phone": "514 555 0142 ext 9"}, "phone_invalid"),
        ({"phone": "1+5145550142"}, "phone_invalid"),
        ({"phone_last4": "142"}, "phone_last4_invalid"),
        ({"phone_last4": "01a2"}, "phone_last4_invalid"),
    ],
)
def test_a_malformed_phone_answer_is_refused_locally(
    identity: KioskIdentity, outbox: Outbox, given: dict[str, str], code: str
) -> None:
    kind = next(iter(given))
    server = PhoneServer(identity, ask=kind)
    client, asked = asked_by(server, outbox)
    with pytest.raises(KioskError) as refused:
        client.step_up(asked, **given)
    assert refused.value.code == code
    assert given[kind] not in str(refused.value)  # a phone number stays out of errors
    with pytest.raises(KioskError) as also:
        client.delete_me(template(), "none", **given)
    assert also.value.code == code
    assert [sent.path for sent in server.sent] == ["/v1/payments"]


@pytest.mark.parametrize(
    "given", [{}, {"phone_last4": LAST4, "phone": PHONE}], ids=["neither", "both"]
)
def test_exactly_one_phone_answer_is_given(
    identity: KioskIdentity, outbox: Outbox, given: dict[str, str]
) -> None:
    server = PhoneServer(identity, ask="phone")
    client, asked = asked_by(server, outbox)
    with pytest.raises(ValueError, match="exactly one"):
        client.step_up(asked, **given)
    with pytest.raises(ValueError, match="exactly one"):
        client.delete_me(template(), "none", **given)
    assert len(server.sent) == 1


def test_a_well_formed_full_number_is_sent_as_typed(
    identity: KioskIdentity, outbox: Outbox
) -> None:
    for typed in ("5550142", "123456789012345", "(514) 555-0142", "+1.514.555.0142"):
        server = PhoneServer(identity, ask="phone")
        client, asked = asked_by(server, outbox)
        assert client.step_up(asked, phone=typed).status == "approved"
        assert server.sent[-1].body["phone"] == typed


# ---------------------------------------------------------------- deletion


def test_a_deletion_is_confirmed_by_the_full_number(
    identity: KioskIdentity, outbox: Outbox
) -> None:
    server = PhoneServer(identity, deletion_needs_full_phone=True)
    client = client_of(server, outbox)
    answer = client.delete_me(template(), "none", phone=PHONE)
    assert answer.status == "deleted"
    (sent,) = server.sent
    assert sent.body["phone"] == PHONE and "phone_last4" not in sent.body
    assert set(sent.body["probe"]) == {"pack", "liveness", "sealed"}


def test_four_digits_where_the_server_needs_the_full_number(
    identity: KioskIdentity, outbox: Outbox
) -> None:
    server = PhoneServer(identity, deletion_needs_full_phone=True)
    client = client_of(server, outbox)
    with pytest.raises(ServerError) as refused:
        client.delete_me(template(), "none", phone_last4=LAST4)
    assert (refused.value.code, refused.value.status) == ("full_phone_required", 422)
    (sent,) = server.sent
    assert sent.body["phone_last4"] == LAST4 and "phone" not in sent.body
    entry = outbox.get(sent.key)
    assert entry is not None and entry.state == ANSWERED  # final: not resent
    assert not client.has_pending()
    assert client.delete_me(template(), "none", phone=PHONE).status == "deleted"
