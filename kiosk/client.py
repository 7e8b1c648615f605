"""The kiosk's client for the facepay server: signed requests, sealed templates, and an outbox
that makes each payment request happen exactly once from the kiosk's side.

Every request but the public ones (the policy, the server key, registration) is signed with
the kiosk's Ed25519 key over method, path, body sha256, timestamp, nonce and kiosk id
(`server.crypto.sign_request`); a template travels sealed to the server's pinned X25519 key,
with associated data binding kiosk, pack, purpose and liveness check
(`server.templates.transport_associated_data`), so only the server can open it.

The outbox (kiosk.outbox: one SQLite file in the kiosk's home) holds, for each POST that
moves money, answers a challenge or deletes a shopper, its idempotency key and the exact
request body, committed *before* the first attempt. Its states:

- ``pending``: written, not answered yet (maybe never sent, maybe sent and the answer lost).
  Retries resend the same bytes with the same key (a fresh signature, timestamp and nonce each
  time), so the server runs the work once and replays its stored answer to every retry.
  No answer (connection lost, 5xx, 409 in use, not JSON) within the retry policy, or a 401/403
  (the server refused the kiosk's signature: revoked, clock off), says nothing about an
  earlier attempt: the entry stays pending.
- ``answered``: a final answer arrived (2xx, or a 4xx that is the request's answer: anything
  but ``409 idempotency_key_in_use``, 408, 429 and the kiosk-authentication refusals 401 and
  403); the answer is recorded and the body erased.
- ``abandoned``: not resent, body erased, fate unknown. Enrollments: the server does not
  implement idempotency keys for them yet, so an enrollment is sent once and never resent
  blindly; when its answer is lost (or the kiosk stopped while sending it) the entry is
  abandoned. A second attempt by the shopper is safe: the server refuses a face already
  enrolled (``409 already_enrolled``). And any entry older than `resend_within_s` (12 hours;
  the server forgets keys after 24): resent then, it could run twice.

While a payment, step-up, capture, void or deletion is pending, `ServerClient.pay` (and the
other requests of these kinds) refuse with `OutboxPending`: `ServerClient.resolve_pending` must
finish it first.

Nothing here logs a template, a sealed body, a signature or a private key; log lines name the
kind of request, the first characters of its idempotency key, attempts and HTTP statuses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import logging
import random
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Final, Literal, Protocol, Self

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.errors import KioskError, ServerError, ServerUnavailable
from kiosk.outbox import (
    ABANDONED,
    ANSWERED,
    DELETION,
    PENDING,
    RESENT_KINDS,
    Outbox,
    OutboxEntry,
    OutboxPending,
)
from kiosk.phone import PHONE, PHONE_LAST4, PhoneAsk, is_last4, is_phone_number, phone_answer
from server.crypto import body_sha256_hex, seal_to, sign_request
from server.templates import (
    LIVENESS_CHECKS,
    UNIT_TOLERANCE,
    b64encode,
    encode_vector,
    transport_associated_data,
)

if TYPE_CHECKING:
    from kiosk.home import KioskHome

logger = logging.getLogger(__name__)

__all__ = [
    "ABANDONED",
    "ANSWERED",
    "PENDING",
    "DeletionAnswer",
    "EmbeddingLike",
    "EnrollmentAnswer",
    "KioskIdentity",
    "Outbox",
    "OutboxEntry",
    "OutboxPending",
    "PaymentAnswer",
    "RetryPolicy",
    "ServerClient",
    "Transport",
    "request_json",
    "urllib_transport",
]

_ENROLLMENT: Final = "enrollment"
_TEMPLATES_PER_ENROLLMENT: Final = (3, 5)
_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")
_RETRY_STATUSES: Final = frozenset({408, 425, 429})
_AUTH_STATUSES: Final = frozenset({401, 403})
_KEY_IN_USE: Final = "idempotency_key_in_use"
_USER_AGENT: Final = "facepay-kiosk/1"
_EXPIRED: Final = "too old to resend safely (the server may have forgotten its key): not resent"


# ---------------------------------------------------------------- transport


class Transport(Protocol):
    """One HTTP exchange: returns (status, headers, body) for any HTTP answer, errors included,
    and raises `ServerUnavailable` when there is no answer (refused, reset, timed out)."""

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> tuple[int, Mapping[str, str], bytes]: ...


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would change the signed path: it is an answer to report, not to follow."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def urllib_transport(
    method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
) -> tuple[int, Mapping[str, str], bytes]:
    """The default transport: the standard library's HTTP client (TLS verified by default)."""
    request = urllib.request.Request(
        url, data=body if body else None, headers=dict(headers), method=method
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        with error:
            answered = dict(error.headers.items()) if error.headers is not None else {}
            return error.code, answered, error.read()
    except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
        raise ServerUnavailable(f"no answer to {method} {_path_of(url)}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__} ({reason})" if reason is not None else type(exc).__name__


def _path_of(url: str) -> str:
    return urllib.parse.urlsplit(url).path


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: Mapping[str, str]  # names in lower case
    document: dict[str, Any] | None  # the JSON object answered, None if not one

    @property
    def code(self) -> str:
        code = (self.document or {}).get("code")
        return code if isinstance(code, str) else f"http_{self.status}"

    @property
    def message(self) -> str:
        document = self.document or {}
        for name in ("detail", "title"):
            if isinstance(document.get(name), str) and document[name]:
                return str(document[name])
        return f"the server answered HTTP {self.status}"

    @property
    def replayed(self) -> bool:
        return self.headers.get("idempotent-replayed", "").lower() == "true"

    def retry_after(self) -> float | None:
        try:
            return max(0.0, float(self.headers.get("retry-after", "")))
        except ValueError:
            return None

    def error(self) -> ServerError:
        return ServerError(self.message, code=self.code, status=self.status)


def _reply(status: int, headers: Mapping[str, str], body: bytes) -> _Reply:
    document: dict[str, Any] | None = None
    if body:
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        if isinstance(parsed, dict):
            document = parsed
    return _Reply(status, {name.lower(): value for name, value in headers.items()}, document)


Verdict = Literal["final", "retry", "refused"]


def _verdict(reply: _Reply) -> Verdict:
    """final: the request's answer; retry: no answer yet (try again with the same key);
    refused: the kiosk's signature was not accepted, so this says nothing about the request."""
    if reply.document is None:
        return "retry"  # a proxy's page, a truncated body: not the server's answer
    if 200 <= reply.status < 300:
        return "final"
    if reply.status in _AUTH_STATUSES:
        return "refused"
    if reply.status in _RETRY_STATUSES or (reply.status == 409 and reply.code == _KEY_IN_USE):
        return "retry"
    if 400 <= reply.status < 500:
        return "final"
    return "retry"  # 5xx, and 1xx/3xx that should not happen here


def request_json(
    transport: Transport,
    method: str,
    url: str,
    payload: Mapping[str, Any] | None = None,
    *,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """One unsigned, unretried request (registration, the server's key): the JSON answer, or
    `ServerError` with the server's problem code, or `ServerUnavailable`."""
    body = _encode(payload) if payload is not None else b""
    status, headers, raw = transport(method, url, _base_headers(body), body, timeout)
    reply = _reply(status, headers, raw)
    if reply.document is None or not 200 <= status < 300:
        raise reply.error()
    return reply.document


def _base_headers(body: bytes) -> dict[str, str]:
    headers = {"Accept": "application/json, application/problem+json", "User-Agent": _USER_AGENT}
    if body:
        headers["Content-Type"] = "application/json"
    return headers


def _encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")


# ---------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded both in tries and in total time.

    The wait before retry n (n >= 1) is half of ``min(max_delay_s, first_delay_s * 2**(n-1))``
    plus a random part of the other half ("equal jitter": spread out, never zero); a
    ``Retry-After`` from the server is waited at least (up to ``max_delay_s``). No retry starts
    once ``total_s`` would be exceeded.
    """

    tries: int = 6
    first_delay_s: float = 0.25
    max_delay_s: float = 5.0
    total_s: float = 30.0

    def __post_init__(self) -> None:
        if self.tries < 1 or self.first_delay_s < 0 or self.max_delay_s < self.first_delay_s:
            raise ValueError("a retry policy needs tries >= 1 and 0 <= first <= max delay")

    def delay(self, retry: int, jitter: float, retry_after: float | None = None) -> float:
        ceiling = min(self.max_delay_s, self.first_delay_s * 2.0 ** max(0, retry - 1))
        wait = ceiling / 2 + min(max(jitter, 0.0), 1.0) * ceiling / 2
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_delay_s))
        return wait


# ---------------------------------------------------------------- identity and sealing


class EmbeddingLike(Protocol):
    """What the client needs of a template (models.engine.Embedding has it)."""

    @property
    def vector(self) -> npt.NDArray[np.float32]: ...

    @property
    def pack(self) -> str: ...


@dataclass(frozen=True)
class KioskIdentity:
    """Who this kiosk is to its server: its id, its private key, the pinned server key."""

    server_url: str  # scheme://host[:port], no path
    kiosk_id: str
    private_key: Ed25519PrivateKey = field(repr=False)
    server_public_key: bytes = field(repr=False)  # X25519, raw 32 bytes, pinned at registration

    def signed_headers(
        self, method: str, path: str, body: bytes, *, timestamp: int, nonce: str
    ) -> dict[str, str]:
        signature = sign_request(
            self.private_key,
            method=method,
            path=path,
            body_sha256_hex=body_sha256_hex(body),
            timestamp=timestamp,
            nonce=nonce,
            kiosk_id=self.kiosk_id,
        )
        return {
            "X-Facepay-Kiosk": self.kiosk_id,
            "X-Facepay-Timestamp": str(timestamp),
            "X-Facepay-Nonce": nonce,
            "X-Facepay-Signature": signature,
        }

    def seal(self, embedding: EmbeddingLike, *, purpose: str, liveness: str) -> dict[str, str]:
        """The template as the API takes it: pack, liveness check and the sealed vector."""
        pack = embedding.pack
        if not isinstance(pack, str) or not pack:
            raise KioskError("a template needs its pack id", code="template_invalid")
        if liveness not in LIVENESS_CHECKS:
            raise KioskError(
                f"unknown liveness check {liveness!r}; one of {', '.join(LIVENESS_CHECKS)}",
                code="liveness_unknown",
            )
        vector = _checked_vector(embedding.vector)
        associated = transport_associated_data(
            kiosk_id=self.kiosk_id, pack=pack, purpose=purpose, liveness=liveness
        )
        sealed = seal_to(self.server_public_key, encode_vector(vector), associated)
        return {"pack": pack, "liveness": liveness, "sealed": b64encode(sealed)}


def _checked_vector(value: Any) -> npt.NDArray[np.float32]:
    """A finite, unit-length, one-dimensional float32 vector; errors never quote its values."""
    vector = np.asarray(value, dtype=np.float32)
    if vector.ndim != 1 or vector.size == 0:
        raise KioskError("a template is a one-dimensional vector", code="template_invalid")
    if not np.all(np.isfinite(vector)):
        raise KioskError("a template holds NaN or infinite values", code="template_invalid")
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if abs(norm - 1.0) > UNIT_TOLERANCE:
        raise KioskError("a template must be unit length", code="template_invalid")
    return vector


# ---------------------------------------------------------------- answers


class _Refusable:
    """What every answer can do: turn a refusal (status ``error``) into `ServerError`."""

    status: str
    code: str | None
    detail: str | None
    http_status: int | None

    def raise_for_error(self) -> Self:
        """The answer itself, or `ServerError` when it is a refusal (status ``error``)."""
        if self.status == "error":
            raise ServerError(
                self.detail or "the server refused the request",
                code=self.code,
                status=self.http_status,
            )
        return self


@dataclass(frozen=True)
class PaymentAnswer(_Refusable):
    """The server's answer about a payment (to a payment, step-up, capture, void or read).

    `status` is approved, declined or step_up_required; in the list `resolve_pending` returns
    it may also be ``error``, when the final answer was a problem document (`code`, `detail`).
    """

    status: str
    kind: str = "payment"  # payment, step_up, capture, void, read
    payment_id: str | None = None
    state: str | None = None
    amount: int | None = None
    currency: str | None = None
    capture_method: str | None = None
    captured_amount: int | None = None
    decline_code: str | None = None
    challenge_id: str | None = None
    step_up_reason: str | None = None
    # What a step-up asks for: phone_last4 or phone (kiosk.phone); an older server does not
    # say, and asks for the last four digits.
    step_up_ask: str | None = None
    tries_left: int | None = None
    expires_at: str | None = None
    shopper_label: str | None = None
    wallet_balance: int | None = None
    code: str | None = None
    detail: str | None = None
    http_status: int | None = None
    idempotency_key: str | None = None
    replayed: bool = False


def _payment_answer(reply: _Reply, *, kind: str, key: str | None) -> PaymentAnswer:
    document = reply.document or {}
    if not 200 <= reply.status < 300:
        return PaymentAnswer(
            status="error",
            kind=kind,
            code=reply.code,
            detail=reply.message,
            http_status=reply.status,
            idempotency_key=key,
            replayed=reply.replayed,
        )

    def text(name: str) -> str | None:
        value = document.get(name)
        return value if isinstance(value, str) else None

    def number(name: str) -> int | None:
        value = document.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    status = text("status") or "error"
    asked = text("step_up_ask")
    if asked is None and status == "step_up_required":
        asked = PHONE_LAST4
    return PaymentAnswer(
        status=status,
        kind=kind,
        payment_id=text("payment_id"),
        state=text("state"),
        amount=number("amount"),
        currency=text("currency"),
        capture_method=text("capture_method"),
        captured_amount=number("captured_amount"),
        decline_code=text("decline_code"),
        challenge_id=text("challenge_id"),
        step_up_reason=text("step_up_reason"),
        step_up_ask=asked,
        tries_left=number("tries_left"),
        expires_at=text("expires_at"),
        shopper_label=text("shopper_label"),
        wallet_balance=number("wallet_balance"),
        http_status=reply.status,
        idempotency_key=key,
        replayed=reply.replayed,
    )


@dataclass(frozen=True)
class EnrollmentAnswer:
    enrollment_id: str
    shopper_id: str
    masked_label: str
    pack: str
    wallet_balance: int
    currency: str
    idempotency_key: str


@dataclass(frozen=True)
class DeletionAnswer(_Refusable):
    """The answer to `delete_me`: ``deleted``, ``not_found``, or ``error`` (in the list
    `resolve_pending` returns) with the problem's `code`."""

    status: str
    request_id: str | None = None
    done_at: str | None = None
    code: str | None = None
    detail: str | None = None
    http_status: int | None = None
    idempotency_key: str | None = None
    replayed: bool = False


def _deletion_answer(reply: _Reply, *, key: str | None) -> DeletionAnswer:
    document = reply.document or {}
    if not 200 <= reply.status < 300:
        return DeletionAnswer(
            status="error",
            code=reply.code,
            detail=reply.message,
            http_status=reply.status,
            idempotency_key=key,
            replayed=reply.replayed,
        )

    def text(name: str) -> str | None:
        value = document.get(name)
        return value if isinstance(value, str) else None

    return DeletionAnswer(
        status=text("status") or "error",
        request_id=text("request_id"),
        done_at=text("done_at"),
        http_status=reply.status,
        idempotency_key=key,
        replayed=reply.replayed,
    )


# ---------------------------------------------------------------- the client


class ServerClient:
    """Signed requests to the facepay server, with retries and the outbox.

    `transport` does one HTTP exchange (default: `urllib_transport`); `clock` gives Unix time
    (signature timestamps, the retry budget, outbox times); `sleep` waits between retries;
    `jitter` returns a number in [0, 1). All four are injected so that tests run without a
    network and without waiting.

    `resend_within_s` bounds how long after its creation an outbox entry is resent. The server
    forgets idempotency keys after `FACEPAY_IDEMPOTENCY_TTL_H` (24 hours, never less); a
    request resent after that would run a second time if the first went through. An older
    entry is therefore abandoned by `resolve_pending`, which returns it as an error answer
    with code ``outbox_entry_expired``: its fate is for an operator to check on the server.
    """

    def __init__(
        self,
        identity: KioskIdentity,
        outbox: Outbox,
        *,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        retry: RetryPolicy | None = None,
        timeout_s: float = 10.0,
        resend_within_s: float = 12 * 3600.0,
    ) -> None:
        self.identity = identity
        self.outbox = outbox
        self._transport: Transport = transport or urllib_transport
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._retry = retry or RetryPolicy()
        self._timeout_s = timeout_s
        self._resend_within_s = resend_within_s

    @classmethod
    def from_home(
        cls,
        home: KioskHome,
        *,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        retry: RetryPolicy | None = None,
        timeout_s: float = 10.0,
    ) -> ServerClient:
        """The client of a registered kiosk home (raises `NotRegistered` if it is not)."""
        return cls(
            home.identity(),
            home.outbox(),
            transport=transport,
            clock=clock,
            sleep=sleep,
            jitter=jitter,
            retry=retry,
            timeout_s=timeout_s,
        )

    def __repr__(self) -> str:
        return f"ServerClient({self.identity.server_url!r}, kiosk={self.identity.kiosk_id!r})"

    # ------------------------------------------------------------ public reads

    def policy(self) -> dict[str, Any]:
        """The current consent notice (version, purpose, retention, texts by locale with their
        sha256), each text checked against its sha256 so the kiosk shows what it will sign."""
        reply = self._attempts("GET", "/v1/policy", b"", signed=False, retry=True)
        document = self._final_document(reply)
        texts = document.get("texts")
        if not isinstance(texts, dict) or not texts:
            raise KioskError("the policy has no texts", code="policy_invalid")
        for locale, entry in texts.items():
            text = entry.get("text") if isinstance(entry, dict) else None
            digest = entry.get("sha256") if isinstance(entry, dict) else None
            if (
                not isinstance(text, str)
                or hashlib.sha256(text.encode("utf-8")).hexdigest() != digest
            ):
                raise KioskError(
                    f"the {locale} policy text does not match its sha256",
                    code="policy_text_mismatch",
                )
        return document

    def get_payment(self, payment_id: str) -> PaymentAnswer:
        """A payment this kiosk made, as the server has it now (a signed GET, retried)."""
        path = f"/v1/payments/{_uuid(payment_id)}"
        reply = self._attempts("GET", path, b"", signed=True, retry=True)
        self._final_document(reply)
        return _payment_answer(reply, kind="read", key=None)

    # ------------------------------------------------------------ enrollment

    def enroll(
        self,
        *,
        policy_version: int,
        text_sha256: str,
        locale: str,
        signature_name: str,
        signed_at: dt.datetime,
        embeddings: Sequence[EmbeddingLike],
        liveness: str,
        email: str,
        phone: str,
        wallet_amount: int,
        currency: str,
    ) -> EnrollmentAnswer:
        """Enroll a shopper who agreed to the notice `policy_version` (the text whose sha256 is
        `text_sha256`, in `locale`), with 3 to 5 templates of one pack.

        Sent once, never resent: the server has no idempotency for enrollments yet. If the
        answer is lost, the entry is abandoned and `ServerUnavailable` raised; enrolling again
        is safe (the server answers `already_enrolled` if the first attempt went through).
        """
        low, high = _TEMPLATES_PER_ENROLLMENT
        if not low <= len(embeddings) <= high:
            raise KioskError(
                f"an enrollment takes {low} to {high} templates", code="template_count"
            )
        if len({embedding.pack for embedding in embeddings}) != 1:
            raise KioskError("all templates must come from one pack", code="mixed_packs")
        if signed_at.tzinfo is None or signed_at.utcoffset() is None:
            raise ValueError("signed_at must be timezone-aware")
        _check_money(wallet_amount, currency, allow_zero=True)
        payload = {
            "consent": {
                "policy_version": policy_version,
                "text_sha256": text_sha256,
                "locale": locale,
                "signature_name": signature_name,
                "signed_at": signed_at.isoformat(),
            },
            "templates": [
                self.identity.seal(embedding, purpose="enroll", liveness=liveness)
                for embedding in embeddings
            ],
            "contact": {"email": email, "phone": phone},
            "wallet": {"amount": wallet_amount, "currency": currency},
        }
        key, reply = self._deliver_new(_ENROLLMENT, "/v1/enrollments", payload, retry=False)
        document = self._final_document(reply)
        try:
            return EnrollmentAnswer(
                enrollment_id=str(document["enrollment_id"]),
                shopper_id=str(document["shopper_id"]),
                masked_label=str(document["masked_label"]),
                pack=str(document["pack"]),
                wallet_balance=int(document["wallet_balance"]),
                currency=str(document["currency"]),
                idempotency_key=key,
            )
        except (KeyError, TypeError, ValueError):
            raise ServerError(
                "the enrollment answer is incomplete", code="bad_answer", status=reply.status
            ) from None

    # ------------------------------------------------------------ payments

    def pay(
        self,
        amount_minor: int,
        currency: str,
        embedding: EmbeddingLike,
        liveness: str,
        capture_method: str = "automatic",
    ) -> PaymentAnswer:
        """Pay `amount_minor` (integer minor units) in `currency` by face.

        Returns approved, declined or step_up_required. Raises `OutboxPending` while an
        earlier request is unresolved, `ServerError` for a refusal (its `code`), and
        `ServerUnavailable` when no answer came within the retry policy: the payment then stays
        pending in the outbox, and `resolve_pending()` learns its fate.
        """
        _check_money(amount_minor, currency)
        if capture_method not in ("automatic", "manual"):
            raise ValueError("capture_method is automatic or manual")
        payload = {
            "amount": amount_minor,
            "currency": currency,
            "capture_method": capture_method,
            "probe": self.identity.seal(embedding, purpose="pay", liveness=liveness),
        }
        return self._money("payment", "/v1/payments", payload)

    def step_up(
        self, answer: PaymentAnswer, *, phone_last4: str | None = None, phone: str | None = None
    ) -> PaymentAnswer:
        """Answer a step-up challenge with what it asks (`answer.step_up_ask`): the last four
        digits of the shopper's phone, or the full number. Exactly one of the two is given and
        sent; the other kind than asked is refused here (``step_up_answer_mismatch``, as the
        server would), before anything is written or sent."""
        if answer.status != "step_up_required" or not answer.challenge_id:
            raise KioskError("this payment asks for no step-up", code="no_step_up_pending")
        kind, typed = _checked_phone(phone_last4, phone)
        asked = answer.step_up_ask or PHONE_LAST4
        if kind != asked:
            raise KioskError(
                f"this step-up asks for {_WHAT.get(asked, asked)}, not {_WHAT[kind]}",
                code="step_up_answer_mismatch",
            )
        path = f"/v1/payments/{_uuid(answer.payment_id)}/step-up"
        payload = {"challenge_id": answer.challenge_id, kind: typed}
        return self._money("step_up", path, payload)

    def capture(self, payment_id: str, amount_minor: int | None = None) -> PaymentAnswer:
        """Capture an authorization (`capture_method="manual"`), all of it or `amount_minor`."""
        if amount_minor is not None:
            _check_amount(amount_minor)
        path = f"/v1/payments/{_uuid(payment_id)}/capture"
        payload = {} if amount_minor is None else {"amount": amount_minor}
        return self._money("capture", path, payload)

    def void(self, payment_id: str) -> PaymentAnswer:
        """Cancel an authorization: its hold goes back to the wallet."""
        return self._money("void", f"/v1/payments/{_uuid(payment_id)}/void", None)

    # ------------------------------------------------------------ deletion

    def delete_me(
        self,
        embedding: EmbeddingLike,
        liveness: str,
        *,
        phone_last4: str | None = None,
        phone: str | None = None,
    ) -> DeletionAnswer:
        """The kiosk's "delete my face data": the shopper is found by face and confirmed by
        the last four digits of their phone, or by the full number (exactly one is given).

        Posts to ``/v1/deletions`` {probe (sealed, purpose "delete"), phone_last4 or phone}
        with an Idempotency-Key, through the outbox like a payment. The answer: ``status``
        (``deleted`` or ``not_found``), ``request_id`` and ``done_at``. When four digits are
        not enough for the server's gallery it refuses with 422 ``full_phone_required``
        (raised as `ServerError`): ask the shopper for the full number and send it.
        """
        kind, typed = _checked_phone(phone_last4, phone)
        payload = {
            "probe": self.identity.seal(embedding, purpose="delete", liveness=liveness),
            kind: typed,
        }
        key, reply = self._deliver_new(DELETION, "/v1/deletions", payload, retry=True)
        return _deletion_answer(reply, key=key).raise_for_error()

    def has_pending(self) -> bool:
        """True while a payment or deletion request waits for its answer."""
        return self.outbox.has_pending()

    def resolve_pending(self) -> list[PaymentAnswer | DeletionAnswer]:
        """Finish what a crash or a lost connection left pending, oldest first: each payment or
        deletion request is resent (same key, same body) until it has its final answer; an
        enrollment left pending is abandoned (see `enroll`). Returns the answers, refusals
        included with status ``error``. Raises `ServerUnavailable` (the rest stays pending) or
        `ServerError` when the server refuses the kiosk itself (401/403: entries stay pending).
        """
        answers: list[PaymentAnswer | DeletionAnswer] = []
        for entry in self.outbox.pending():
            if entry.kind not in RESENT_KINDS:
                self.outbox.abandon(entry.key, now=self._now())
                logger.warning(
                    "outbox: %s %s abandoned after a restart (not resent)",
                    entry.kind,
                    entry.key[:8],
                )
                continue
            if self._clock() - _timestamp(entry.created_at) > self._resend_within_s:
                self.outbox.abandon(entry.key, now=self._now())
                logger.error(
                    "outbox: %s %s is too old to resend safely; abandoned, check it on the server",
                    entry.kind,
                    entry.key[:8],
                )
                answers.append(_expired(entry))
                continue
            assert entry.body is not None  # pending entries keep their body
            reply = self._deliver(entry.key, entry.kind, entry.path, entry.body, retry=True)
            if entry.kind == DELETION:
                answers.append(_deletion_answer(reply, key=entry.key))
            else:
                answers.append(_payment_answer(reply, kind=entry.kind, key=entry.key))
        return answers

    # ------------------------------------------------------------ the machinery

    def _money(self, kind: str, path: str, payload: Mapping[str, Any] | None) -> PaymentAnswer:
        key, reply = self._deliver_new(kind, path, payload, retry=True)
        answer = _payment_answer(reply, kind=kind, key=key)
        return answer.raise_for_error()

    def _deliver_new(
        self, kind: str, path: str, payload: Mapping[str, Any] | None, *, retry: bool
    ) -> tuple[str, _Reply]:
        """Write the request to the outbox, then send it."""
        key = str(uuid.uuid4())
        body = _encode(payload) if payload is not None else b""
        self.outbox.add(key=key, kind=kind, method="POST", path=path, body=body, now=self._now())
        return key, self._deliver(key, kind, path, body, retry=retry)

    def _deliver(self, key: str, kind: str, path: str, body: bytes, *, retry: bool) -> _Reply:
        """Send an outbox entry until it has a final answer, record it, return the reply."""
        try:
            reply = self._attempts(
                "POST",
                path,
                body,
                signed=True,
                retry=retry,
                key=key,
                before_each=lambda: self.outbox.count_attempt(key),
            )
        except ServerUnavailable:
            if not retry:
                self.outbox.abandon(key, now=self._now())
            raise
        verdict = _verdict(reply)
        if verdict == "refused" and retry:
            # The signature check failed: this says nothing about an earlier attempt.
            logger.warning("outbox: %s %s refused (%s), kept", kind, key[:8], reply.code)
            raise reply.error()
        if verdict in ("final", "refused"):
            raw = json.dumps(reply.document, separators=(",", ":")).encode("utf-8")
            self.outbox.answer(
                key, status=reply.status, response=raw, replayed=reply.replayed, now=self._now()
            )
            logger.info("outbox: %s %s answered %d", kind, key[:8], reply.status)
            return reply
        self.outbox.abandon(key, now=self._now())  # not retried: its fate is unknown
        raise ServerUnavailable(
            f"{kind}: no answer ({reply.code}); not resent, try again", code="answer_unknown"
        )

    def _attempts(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        signed: bool,
        retry: bool,
        key: str | None = None,
        before_each: Callable[[], None] | None = None,
    ) -> _Reply:
        """Send until the reply is final or refused, within the retry policy (`retry`), else
        raise `ServerUnavailable`. Each attempt is signed afresh."""
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            if before_each is not None:
                before_each()
            retry_after: float | None = None
            try:
                reply = self._exchange(method, path, body, signed=signed, key=key)
            except ServerUnavailable as exc:
                last = str(exc)
            else:
                if _verdict(reply) != "retry" or not retry:
                    return reply
                last = f"HTTP {reply.status} {reply.code}"
                retry_after = reply.retry_after()
            if not retry:
                raise ServerUnavailable(f"{method} {path}: {last}")
            wait = self._retry.delay(attempt, self._jitter(), retry_after)
            spent = self._clock() - started
            if attempt >= self._retry.tries or spent + wait > self._retry.total_s:
                raise ServerUnavailable(
                    f"{method} {path}: no answer after {attempt} attempt(s); last: {last}"
                )
            logger.info(
                "%s %s: attempt %d failed (%s), again in %.2f s", method, path, attempt, last, wait
            )
            self._sleep(wait)

    def _exchange(
        self, method: str, path: str, body: bytes, *, signed: bool, key: str | None
    ) -> _Reply:
        headers = _base_headers(body)
        if signed:
            headers.update(
                self.identity.signed_headers(
                    method,
                    path,
                    body,
                    timestamp=int(self._clock()),
                    nonce=secrets.token_urlsafe(18),
                )
            )
        if key is not None:
            headers["Idempotency-Key"] = key
        url = self.identity.server_url + path
        status, answered, raw = self._transport(method, url, headers, body, self._timeout_s)
        return _reply(status, answered, raw)

    @staticmethod
    def _final_document(reply: _Reply) -> dict[str, Any]:
        if reply.document is None or not 200 <= reply.status < 300:
            raise reply.error()
        return reply.document

    def _now(self) -> str:
        return dt.datetime.fromtimestamp(self._clock(), dt.UTC).isoformat()


def _expired(entry: OutboxEntry) -> PaymentAnswer | DeletionAnswer:
    code = "outbox_entry_expired"
    if entry.kind == DELETION:
        return DeletionAnswer("error", code=code, detail=_EXPIRED, idempotency_key=entry.key)
    return PaymentAnswer(
        "error", kind=entry.kind, code=code, detail=_EXPIRED, idempotency_key=entry.key
    )


_WHAT: Final[dict[str, str]] = {
    PHONE_LAST4: "the last four digits of the phone",
    PHONE: "the full phone number",
}


def _checked_phone(phone_last4: str | None, phone: str | None) -> tuple[PhoneAsk, str]:
    """The one phone answer given, in the server's format; the errors never quote it."""
    kind, typed = phone_answer(phone_last4, phone)
    if kind == PHONE_LAST4 and not is_last4(typed):
        raise KioskError("four digits are needed", code="phone_last4_invalid")
    if kind == PHONE and not is_phone_number(typed):
        raise KioskError(
            "a phone number has 7 to 15 digits (a leading +, spaces, dashes, dots or "
            "parentheses allowed; 24 characters at most)",
            code="phone_invalid",
        )
    return kind, typed


def _timestamp(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def _check_amount(amount: int, *, allow_zero: bool = False) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError("amounts are int minor units")
    if amount < 0 or (amount == 0 and not allow_zero):
        raise ValueError("the amount must be positive")


def _check_money(amount: int, currency: str, *, allow_zero: bool = False) -> None:
    _check_amount(amount, allow_zero=allow_zero)
    if not isinstance(currency, str) or _CURRENCY_RE.fullmatch(currency) is None:
        raise ValueError("the currency is an ISO 4217 code such as CAD")


def _uuid(value: str | None) -> str:
    """Ids go into signed paths as they are: only a canonical UUID is accepted."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError("a payment id is a UUID") from None
