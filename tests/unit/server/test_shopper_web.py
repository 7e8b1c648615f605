"""The shopper's privacy pages on SQLite and PostgreSQL: the policy page in English and French,
deletion and export with a one-time code read from the development outbox (or sent through
SMTP), and the attacks: expired, guessed, reused codes, forged forms, user enumeration, XSS."""

from __future__ import annotations

import datetime as dt
import email
import json
import logging
import re
import smtplib
import stat
import zlib
from dataclasses import replace
from email import policy as email_policy
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from server.audit import service as audit
from server.consent.service import DEFAULT_PURPOSE
from server.crypto import KeyNotFoundError
from server.db import utcnow
from server.privacy.models import Deletion, OneTimeCode
from server.shoppers.models import Shopper
from tests.support.kiosk import SigningKiosk, enrollment_payload
from tests.support.payments import SyntheticFace
from tests.unit.server.test_payments import assert_declined, pay, signed

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
XSS = "<script>alert(1)</script>"


@pytest.fixture
def app_config(app_config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("settings")
    return {**app_config, **(marker.kwargs if marker else {})}


def enroll_as(
    client: FlaskClient,
    kiosk: SigningKiosk,
    face: SyntheticFace,
    *,
    name: str = "Marie Tremblay",
    email_address: str = "marie@example.com",
) -> str:
    """Enroll a synthetic shopper; each name gets a phone number of its own."""
    policy = client.get("/v1/policy").get_json()
    phone = f"+1 514 555 {zlib.crc32(name.encode()) % 10_000:04d}"
    payload = enrollment_payload(
        kiosk, policy, face.templates(), name=name, email=email_address, phone=phone
    )
    response = signed(client, kiosk, "POST", "/v1/enrollments", payload)
    assert response.status_code == 201, response.get_json()
    shopper_id: str = response.get_json()["shopper_id"]
    return shopper_id


def token(client: FlaskClient, page: str = "/privacy/request") -> str:
    found = CSRF.search(client.get(page).get_data(as_text=True))
    assert found, f"no CSRF token on {page}"
    return found.group(1)


def post(client: FlaskClient, path: str, data: dict[str, str], *, csrf: bool = True) -> Any:
    form = {**data, "csrf_token": token(client)} if csrf else data
    # Buffered: the response is closed at once, which sends the code's mail (call_on_close).
    return client.post(path, data=form, buffered=True)


def ask(client: FlaskClient, address: str, purpose: str) -> Any:
    response = post(client, "/privacy/request", {"email": address, "purpose": purpose})
    assert response.status_code == 303, response.get_data(as_text=True)
    assert response.headers["Location"].endswith("/privacy/confirm")
    return response


def outbox(app: Any) -> list[Path]:
    folder = app.extensions["facepay"].settings.instance / "outbox"
    return sorted(folder.glob("*.eml")) if folder.is_dir() else []


def read_mail(path: Path) -> tuple[str, str]:
    """(recipient, code) of a development mail."""
    message = email.message_from_bytes(path.read_bytes(), policy=email_policy.default)
    body = message.get_body(("plain",))
    assert body is not None
    found = re.search(r"Your facepay code: (\d{6})", body.get_content())
    assert found
    return str(message["To"]), found.group(1)


def error_code(response: Any) -> str | None:
    found = re.search(r'data-code="([a-z_]+)"', response.get_data(as_text=True))
    return found.group(1) if found else None


def status_of(app: Any, shopper_id: str) -> str:
    with app.extensions["facepay"].sessions() as session:
        shopper = session.get(Shopper, shopper_id)
        assert shopper is not None
        return shopper.status


def codes(app: Any) -> list[OneTimeCode]:
    with app.extensions["facepay"].sessions() as session:
        return list(session.scalars(select(OneTimeCode).order_by(OneTimeCode.created_at)))


def audit_records(app: Any) -> list[dict[str, Any]]:
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        assert audit.verify(session, svc.keys.audit_key).ok
        rows = session.scalars(select(audit.AuditRecord.record).order_by(audit.AuditRecord.seq))
        return [json.loads(row) for row in rows]


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


def test_policy_page_in_english_and_french(client: FlaskClient) -> None:
    english = client.get("/privacy")
    assert english.status_code == 200 and english.mimetype == "text/html"
    assert "default-src 'none'" in english.headers["Content-Security-Policy"]
    page = english.get_data(as_text=True)
    assert DEFAULT_PURPOSE in page
    assert "365 days" in page and "pay another way" in page
    assert "privacy officer" in page and "at a kiosk" in page and "export" in page
    assert 'href="/privacy/request?purpose=delete"' in page
    assert "Consent to pay by face" in page  # the notice itself
    assert re.search(r'id="effective">\d{4}-\d{2}-\d{2}<', page)

    french = client.get("/privacy?lang=fr").get_data(as_text=True)
    assert '<html lang="fr">' in french
    assert "Finalité" in french and DEFAULT_PURPOSE in french
    assert "365 jours" in french and "payer autrement" in french
    assert "Consentement au paiement par reconnaissance faciale" in french
    assert "responsable de la protection" in french

    assert '<html lang="en">' in client.get("/privacy?lang=xx").get_data(as_text=True)
    spec = client.get("/openapi.json").get_json()
    assert "/v1/policy" in spec["paths"] and not any("/privacy" in p for p in spec["paths"])


def test_deletion_on_the_web_shreds_every_shopper_with_the_address(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(31)
    marie, marie_again, paul = SyntheticFace(rng), SyntheticFace(rng), SyntheticFace(rng)
    marie_id = enroll_as(client, kiosk, marie)
    # Two accounts with one address (enrolled before enrollment refused a claimed address):
    # the same code covers both.
    second_id = enroll_as(
        client, kiosk, marie_again, name="Marie T", email_address="m2@example.com"
    )
    with app.extensions["facepay"].sessions() as session:
        session.execute(
            update(Shopper).where(Shopper.id == second_id).values(email="marie@example.com")
        )
        session.commit()
    paul_id = enroll_as(client, kiosk, paul, name="Paul Roy", email_address="paul@example.com")
    assert pay(client, kiosk, marie, 1_000).get_json()["status"] == "approved"

    ask(client, "  Marie@Example.com ", "delete")
    confirm = client.get("/privacy/confirm").get_data(as_text=True)
    assert "marie@example.com" in confirm and 'name="code"' in confirm
    [mail] = outbox(app)
    assert stat.S_IMODE(mail.stat().st_mode) == 0o600
    assert stat.S_IMODE(mail.parent.stat().st_mode) == 0o700
    recipient, code = read_mail(mail)
    assert recipient == "marie@example.com"
    assert "http" not in mail.read_text(encoding="utf-8")  # no Host-header link to phish with

    answer = post(client, "/privacy/confirm", {"code": code})
    assert answer.status_code == 303, answer.get_data(as_text=True)
    final = client.get("/privacy/confirm").get_data(as_text=True)
    assert 'name="understand"' in final
    unticked = post(client, "/privacy/confirm/delete", {})
    assert unticked.status_code == 400 and error_code(unticked) == "confirm_required"
    assert status_of(app, marie_id) == "active"

    done = post(client, "/privacy/confirm/delete", {"understand": "yes"})
    assert done.status_code == 200, done.get_data(as_text=True)
    receipt_page = done.get_data(as_text=True)
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        receipts = session.scalars(select(Deletion).order_by(Deletion.done_at)).all()
        assert {r.shopper_id for r in receipts} == {marie_id, second_id}
        assert {r.via for r in receipts} == {"web"}
        for receipt in receipts:
            assert receipt.id in receipt_page
            assert receipt.done_at.isoformat() in receipt_page
        [used] = session.scalars(select(OneTimeCode)).all()
        assert used.used_at is not None
    assert marie_id not in receipt_page and "marie@example.com" not in receipt_page

    for shopper_id in (marie_id, second_id):
        assert status_of(app, shopper_id) == "deleted"
        with pytest.raises(KeyNotFoundError):
            svc.keys.key_store.get(shopper_id)
    after = pay(client, kiosk, marie, 500).get_json()
    assert_declined(app, after, "no_match")
    assert status_of(app, paul_id) == "active"
    assert pay(client, kiosk, paul, 500).get_json()["status"] == "approved"

    records = audit_records(app)
    kinds = [r["kind"] for r in records]
    assert "privacy.code_requested" in kinds and "privacy.code_confirmed" in kinds
    assert kinds.count("shopper.deleted") == 2
    [confirmed] = [r for r in records if r["kind"] == "privacy.deletion_confirmed"]
    assert sorted(confirmed["data"]["deletion_ids"]) == sorted(r.id for r in receipts)
    dumped = json.dumps(records)
    assert code not in dumped and "marie@example.com" not in dumped
    assert code not in caplog.text and "marie@example.com" not in caplog.text
    # The browser's session cookie never shows the address either.
    assert "marie" not in (client.get_cookie("session").value or "")  # type: ignore[union-attr]


def test_export_holds_everything_about_the_shopper_and_nothing_else(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    rng = np.random.default_rng(32)
    marie, paul = SyntheticFace(rng), SyntheticFace(rng)
    marie_id = enroll_as(client, kiosk, marie)
    paul_id = enroll_as(client, kiosk, paul, name="Paul Roy", email_address="paul@example.com")
    payment = pay(client, kiosk, marie, 1_500).get_json()
    assert pay(client, kiosk, paul, 700).get_json()["status"] == "approved"

    ask(client, "marie@example.com", "export")
    [mail] = outbox(app)
    _, code = read_mail(mail)
    replay = client.get_cookie("session")
    assert replay is not None
    answer = post(client, "/privacy/confirm", {"code": code})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.mimetype == "application/json"
    assert answer.headers["Content-Disposition"] == "attachment; filename=facepay-export.json"
    text = answer.get_data(as_text=True)
    [exported] = json.loads(text)["shoppers"]
    assert exported["shopper"]["id"] == marie_id
    assert exported["shopper"]["email"] == "marie@example.com"
    [consent] = exported["consents"]
    assert consent["notice_text"].startswith("Consent to pay by face")
    assert consent["purpose"] == DEFAULT_PURPOSE
    [enrollment] = exported["enrollments"]
    assert enrollment["template_count"] == 3
    assert set(enrollment) == {
        "id",
        "consent_id",
        "kiosk_id",
        "pack",
        "template_count",
        "created_at",
    }
    assert exported["templates_held"] == 3
    assert [p["id"] for p in exported["payments"]] == [payment["payment_id"]]
    kinds = {event["kind"] for event in exported["audit_events"]}
    assert {"shopper.enrolled", "match.attempt"} <= kinds
    paid = [e["data"] for e in exported["audit_events"] if e["kind"] == "match.attempt"]
    assert [d["payment_id"] for d in paid if d["purpose"] == "pay"] == [payment["payment_id"]]
    assert all(event["subject"] == marie_id for event in exported["audit_events"])
    for foreign in (paul_id, "Paul Roy", "paul@example.com"):
        assert foreign not in text
    assert "ciphertext" not in text and "vector" not in text and "score" not in text

    # The same code, from a replayed cookie, works no more.
    client.set_cookie("session", replay.value)
    again = post(client, "/privacy/confirm", {"code": code})
    assert again.status_code == 400 and error_code(again) == "code_used"
    assert "application/json" not in again.content_type

    records = audit_records(app)
    exports = [r for r in records if r["kind"] == "shopper.exported"]
    assert [r["subject"] for r in exports] == [marie_id]
    assert "code_used" in {r["data"].get("reason") for r in records}


def test_expired_code_is_refused(app: Any, client: FlaskClient, kiosk: SigningKiosk) -> None:
    marie_id = enroll_as(client, kiosk, SyntheticFace(np.random.default_rng(33)))
    ask(client, "marie@example.com", "delete")
    _, code = read_mail(outbox(app)[0])
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        session.execute(update(OneTimeCode).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
        session.commit()
    answer = post(client, "/privacy/confirm", {"code": code})
    assert answer.status_code == 400 and error_code(answer) == "code_expired"
    # The request is over in this browser.
    assert error_code(client.get("/privacy/confirm")) == "no_request"
    assert status_of(app, marie_id) == "active"


def test_expiry_between_the_code_and_the_final_confirmation(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    marie_id = enroll_as(client, kiosk, SyntheticFace(np.random.default_rng(34)))
    ask(client, "marie@example.com", "delete")
    _, code = read_mail(outbox(app)[0])
    assert post(client, "/privacy/confirm", {"code": code}).status_code == 303
    with app.extensions["facepay"].sessions() as session:
        session.execute(update(OneTimeCode).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
        session.commit()
    late = post(client, "/privacy/confirm/delete", {"understand": "yes"})
    assert late.status_code == 400 and error_code(late) == "code_expired"
    assert status_of(app, marie_id) == "active"


@pytest.mark.settings(code_tries=3)
def test_too_many_wrong_codes_kill_the_code(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    marie_id = enroll_as(client, kiosk, SyntheticFace(np.random.default_rng(35)))
    ask(client, "marie@example.com", "delete")
    _, code = read_mail(outbox(app)[0])
    cookie = client.get_cookie("session")
    assert cookie is not None
    for left in (2, 1):
        wrong = post(client, "/privacy/confirm", {"code": other_code(code)})
        assert wrong.status_code == 400 and error_code(wrong) == "wrong_code"
        assert f"{left} tr" in wrong.get_data(as_text=True)
    last = post(client, "/privacy/confirm", {"code": "not a code"})
    assert last.status_code == 400 and error_code(last) == "code_exhausted"
    # Even the right code, from a browser still holding the request, is refused now.
    client.set_cookie("session", cookie.value)
    right = post(client, "/privacy/confirm", {"code": code})
    assert right.status_code == 400 and error_code(right) == "code_exhausted"
    [row] = codes(app)
    assert row.attempts == 3 and row.used_at is None
    assert status_of(app, marie_id) == "active"
    failed = [r for r in audit_records(app) if r["kind"] == "privacy.code_failed"]
    assert [r["data"]["reason"] for r in failed] == [
        "wrong_code",
        "wrong_code",
        "code_exhausted",
        "code_exhausted",
    ]


def test_an_unknown_address_gets_the_same_answer_and_no_mail(app: Any, kiosk: SigningKiosk) -> None:
    known, unknown = app.test_client(), app.test_client()
    enroll_as(known, kiosk, SyntheticFace(np.random.default_rng(36)))

    def strip(page: str, address: str) -> str:
        return CSRF.sub("csrf", page).replace(address, "ADDRESS")

    def pending_shape(client: FlaskClient) -> dict[str, Any]:
        # The cookie is compressed and holds random tokens: compare what it says, not its bytes.
        cookie = client.get_cookie("session")
        assert cookie is not None
        saved = app.session_interface.get_signing_serializer(app).loads(cookie.value)
        return {name: (type(v), len(str(v))) for name, v in saved["privacy_request"].items()}

    seen = []
    for client, address in ((known, "marie@example.com"), (unknown, "mario@example.com")):
        asked = ask(client, address, "delete")
        page = client.get("/privacy/confirm")
        wrong = post(client, "/privacy/confirm", {"code": "000000"})
        seen.append(
            (
                asked.status_code,
                asked.headers["Location"],
                asked.get_data(),
                pending_shape(client),
                page.status_code,
                strip(page.get_data(as_text=True), address),
                wrong.status_code,
                strip(wrong.get_data(as_text=True), address),
            )
        )
    assert seen[0] == seen[1]
    [mail] = outbox(app)
    assert read_mail(mail)[0] == "marie@example.com"
    assert len(codes(app)) == 2  # the same work either way


def test_codes_per_address_are_limited_without_saying_so(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    enroll_as(client, kiosk, SyntheticFace(np.random.default_rng(37)))
    for _ in range(5):
        ask(client, "marie@example.com", "export")
        ask(client, "nobody@example.com", "export")
    assert len(outbox(app)) == 5 and len(codes(app)) == 10
    ask(client, "marie@example.com", "export")  # the same answer…
    assert len(outbox(app)) == 5 and len(codes(app)) == 10  # …but no code and no mail
    refused = post(client, "/privacy/confirm", {"code": read_mail(outbox(app)[-1])[1]})
    assert refused.status_code == 400 and error_code(refused) == "no_request"
    kinds = [r["kind"] for r in audit_records(app)]
    assert kinds.count("privacy.code_refused") == 1


def test_wrong_guesses_at_one_address_are_capped_per_day(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    enroll_as(client, kiosk, SyntheticFace(np.random.default_rng(42)))
    for _ in range(2):  # two codes, each guessed wrong until it dies: ten wrong guesses
        ask(client, "marie@example.com", "export")
        _, code = read_mail(outbox(app)[-1])
        for _ in range(5):
            post(client, "/privacy/confirm", {"code": other_code(code)})
    ask(client, "marie@example.com", "export")  # the same answer, but no code and no mail
    assert len(outbox(app)) == 2 and len(codes(app)) == 2
    refusals = [r["data"] for r in audit_records(app) if r["kind"] == "privacy.code_refused"]
    assert refusals == [{"purpose": "export", "reason": "too_many_guesses"}]


def test_forms_without_a_csrf_token_are_refused_and_change_nothing(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    marie_id = enroll_as(client, kiosk, SyntheticFace(np.random.default_rng(38)))
    form = {"email": "marie@example.com", "purpose": "delete"}
    for data in (form, {**form, "csrf_token": "forged"}):
        refused = post(client, "/privacy/request", data, csrf=False)
        assert refused.status_code == 400 and refused.mimetype == "text/html"
        assert error_code(refused) == "csrf_failed"
    assert codes(app) == [] and outbox(app) == []

    ask(client, "marie@example.com", "delete")
    _, code = read_mail(outbox(app)[0])
    refused = post(client, "/privacy/confirm", {"code": code}, csrf=False)
    assert refused.status_code == 400 and error_code(refused) == "csrf_failed"
    assert codes(app)[0].attempts == 0
    assert post(client, "/privacy/confirm", {"code": code}).status_code == 303
    refused = post(client, "/privacy/confirm/delete", {"understand": "yes"}, csrf=False)
    assert refused.status_code == 400 and error_code(refused) == "csrf_failed"
    assert status_of(app, marie_id) == "active" and codes(app)[0].used_at is None


def test_markup_in_displayed_fields_is_escaped(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    bad = post(client, "/privacy/request", {"email": XSS, "purpose": "delete"})
    assert bad.status_code == 400 and error_code(bad) == "invalid_email"
    assert XSS not in bad.get_data(as_text=True)
    assert "&lt;script&gt;" in bad.get_data(as_text=True)
    bad = post(client, "/privacy/request", {"email": "a@b.io", "purpose": XSS})
    assert bad.status_code == 400 and error_code(bad) == "invalid_purpose"
    assert XSS not in bad.get_data(as_text=True)
    injected = {"email": "a@b.io\r\nBcc: x@y.io", "purpose": "delete"}
    assert error_code(post(client, "/privacy/request", injected)) == "invalid_email"

    address = f'"{XSS}"@x.io'
    shopper_id = enroll_as(
        client, kiosk, SyntheticFace(np.random.default_rng(39)), name=XSS, email_address=address
    )
    ask(client, address, "delete")
    page = client.get("/privacy/confirm").get_data(as_text=True)
    assert XSS not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    recipient, code = read_mail(outbox(app)[0])
    assert recipient == address.lower()
    assert post(client, "/privacy/confirm", {"code": code}).status_code == 303
    final = client.get("/privacy/confirm").get_data(as_text=True)
    assert XSS not in final
    done = post(client, "/privacy/confirm/delete", {"understand": "yes"})
    assert done.status_code == 200 and XSS not in done.get_data(as_text=True)
    assert status_of(app, shopper_id) == "deleted"


def test_a_right_code_with_no_shopper_left_finds_nothing(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    from server.db import transaction
    from server.privacy.service import delete_shopper, finish_deletions

    marie_id = enroll_as(client, kiosk, SyntheticFace(np.random.default_rng(40)))
    ask(client, "marie@example.com", "export")
    _, code = read_mail(outbox(app)[0])
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:  # deleted meanwhile, e.g. at a kiosk
        delete_shopper(session, shopper_id=marie_id, keys=svc.keys, via="kiosk", actor="test")
    finish_deletions(svc, [marie_id])
    answer = post(client, "/privacy/confirm", {"code": code})
    assert answer.status_code == 200 and answer.mimetype == "text/html"
    assert error_code(answer) == "nothing_found"
    assert codes(app)[0].used_at is not None
    assert audit_records(app)


class FakeSMTP:
    """Stands in for smtplib.SMTP / SMTP_SSL: records what the mail code asks of it."""

    sent: ClassVar[list[tuple[str, Any]]] = []

    def __init__(self, host: str, port: int, timeout: float = 0, **options: Any) -> None:
        self.sent.append(("connect", (host, port, timeout > 0, "context" in options)))

    def __enter__(self) -> FakeSMTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sent.append(("quit", None))

    def starttls(self, **options: Any) -> None:
        self.sent.append(("starttls", "context" in options))

    def login(self, user: str, password: str) -> None:
        self.sent.append(("login", (user, password)))

    def send_message(self, message: Any) -> None:
        self.sent.append(("send", message))


@pytest.fixture
def fake_smtp(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    FakeSMTP.sent = []
    monkeypatch.setattr(smtplib, "SMTP", FakeSMTP)
    monkeypatch.setattr(smtplib, "SMTP_SSL", FakeSMTP)
    return FakeSMTP.sent


@pytest.mark.settings(smtp_url="smtp://relay%40shop:p%40ss@mail.example:2525")
def test_codes_go_through_smtp_when_configured(
    app: Any,
    client: FlaskClient,
    kiosk: SigningKiosk,
    fake_smtp: list[tuple[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    enroll_as(client, kiosk, SyntheticFace(np.random.default_rng(41)))
    ask(client, "nobody@example.com", "export")
    assert fake_smtp == []
    ask(client, "marie@example.com", "export")
    steps = [step for step, _ in fake_smtp]
    assert steps == ["connect", "starttls", "login", "send", "quit"]
    assert fake_smtp[0][1] == ("mail.example", 2525, True, False)
    assert fake_smtp[1][1] is True and fake_smtp[2][1] == ("relay@shop", "p@ss")
    message = fake_smtp[3][1]
    assert message["To"] == "marie@example.com" and message["From"].endswith("<privacy@localhost>")
    code = re.search(r"code: (\d{6})", message.get_content())
    assert code is not None
    assert outbox(app) == []
    exported = post(client, "/privacy/confirm", {"code": code.group(1)})
    assert exported.status_code == 200 and exported.mimetype == "application/json"

    # A relay that refuses: the shopper sees the same page; the log names neither address
    # nor code.
    class Refusing(FakeSMTP):
        def send_message(self, message: Any) -> None:
            raise smtplib.SMTPRecipientsRefused({"marie@example.com": (550, b"no")})

    monkeypatch.setattr(smtplib, "SMTP", Refusing)
    with caplog.at_level(logging.INFO):
        ask(client, "marie@example.com", "delete")
    assert "could not be mailed" in caplog.text and "marie@example.com" not in caplog.text


def test_send_mail_over_smtps_and_its_failures(
    tmp_path: Path, fake_smtp: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.config import load_settings
    from server.mail import MailError, send_mail

    settings = load_settings({"instance": str(tmp_path), "smtp_url": "smtps://mail.example"})
    assert send_mail(settings, "a@b.io", "Subject", "Body") is None
    assert [step for step, _ in fake_smtp] == ["connect", "send", "quit"]  # no login, no STARTTLS
    assert fake_smtp[0][1] == ("mail.example", 465, True, True)
    assert not (tmp_path / "outbox").exists()
    for url in ("http://mail.example", "smtp://", "smtp://mail.example:port"):
        with pytest.raises(MailError):
            send_mail(replace(settings, smtp_url=url), "a@b.io", "Subject", "Body")

    class Down(FakeSMTP):
        def __init__(self, host: str, port: int, timeout: float = 0, **options: Any) -> None:
            raise ConnectionRefusedError(f"cannot reach {host} for a@b.io")

    monkeypatch.setattr(smtplib, "SMTP_SSL", Down)
    with pytest.raises(MailError) as failed:
        send_mail(settings, "a@b.io", "Subject", "Body")
    assert "a@b.io" not in str(failed.value) and "ConnectionRefusedError" in str(failed.value)


def test_development_mail_goes_to_a_private_outbox_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from server.config import load_settings
    from server.mail import send_mail

    settings = load_settings({"instance": str(tmp_path)})
    with caplog.at_level(logging.INFO):
        written = send_mail(settings, "élise@example.com", "Votre code", "Code : 424242\n")
    assert written is not None and written.parent == tmp_path / "outbox"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    message = email.message_from_bytes(written.read_bytes(), policy=email_policy.default)
    assert message["To"] == "élise@example.com" and message["Subject"] == "Votre code"
    assert message["Message-ID"] and message["Date"]
    body = message.get_body(("plain",))
    assert body is not None and body.get_content().splitlines() == ["Code : 424242"]
    assert written.read_bytes().count(b"\r\n") > 5  # RFC 5322 line ends
    assert "424242" not in caplog.text and "élise" not in caplog.text
    assert written.name in caplog.text
