"""The operator console on SQLite and PostgreSQL: sign-in and lockout, every page for every
role, CSRF on every form, deletion and export by a privacy officer, kiosks and operators by an
admin, the audit log's verification status, escaping of hostile names, cookie flags, the CLI;
and the audit chain verifies after each."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from flask.testing import FlaskClient
from markupsafe import escape
from sqlalchemy import func, select, update

from server.audit import service as audit
from server.audit.models import AuditRecord
from server.db import transaction
from server.kiosks.models import Kiosk
from server.operators import service as operators
from server.operators.models import Operator
from server.shoppers.models import Shopper
from tests.support.kiosk import SigningKiosk, enrollment_payload, register_kiosk
from tests.support.payments import SyntheticFace
from tests.unit.server.test_payments import assert_declined, enroll, pay, signed

PASSWORD = "correct horse battery staple"
AUDITOR, OFFICER, ADMIN = "audrey", "oscar", "ada"
ROLE_OF = {AUDITOR: "auditor", OFFICER: "privacy_officer", ADMIN: "admin"}
XSS = "<script>alert(1)</script>"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def quick_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id at its cheapest: the tests sign in a few hundred times (the browser test and
    test_password_hashes_are_upgraded_at_sign_in use the real parameters)."""
    monkeypatch.setattr(
        operators, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )


@pytest.fixture
def staff(app: Any) -> dict[str, str]:
    """One operator of each role; name -> id."""
    svc = app.extensions["facepay"]
    ids = {}
    with transaction(svc.sessions) as session:
        for name, role in ROLE_OF.items():
            made = operators.create(
                session, svc.keys.audit_key, name=name, role=role, password=PASSWORD, actor="test"
            )
            ids[name] = made.id
    return ids


def token(client: FlaskClient) -> str:
    """The CSRF token of this client's session, from a form the console rendered."""
    page = client.get("/console/")
    if page.status_code == 302:
        page = client.get("/console/login")
    found = CSRF_FIELD.search(page.get_data(as_text=True))
    assert found, page.get_data(as_text=True)
    return found.group(1)


def login(client: FlaskClient, name: str, password: str = PASSWORD) -> Any:
    return client.post(
        "/console/login", data={"name": name, "password": password, "csrf_token": token(client)}
    )


def signed_in(app: Any, name: str) -> FlaskClient:
    client = app.test_client()
    response = login(client, name)
    assert response.status_code == 302 and response.headers["Location"] == "/console/", (
        response.get_data(as_text=True)
    )
    return client


def post(client: FlaskClient, path: str, data: dict[str, str] | None = None) -> Any:
    return client.post(path, data={**(data or {}), "csrf_token": token(client)})


def text(response: Any) -> str:
    return str(response.get_data(as_text=True))


def events(app: Any, kind: str | None = None) -> list[dict[str, Any]]:
    with app.extensions["facepay"].sessions() as session:
        rows = [json.loads(r) for r in session.scalars(select(AuditRecord.record))]
    return [r for r in rows if kind is None or r["kind"] == kind]


def assert_chain_ok(app: Any) -> None:
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        result = audit.verify(session, svc.keys.audit_key)
    assert result.ok, result.detail


def operator_row(app: Any, name: str) -> Operator:
    with app.extensions["facepay"].sessions() as session:
        found = operators.by_name(session, name)
        assert found is not None
        return found


def enroll_named(
    client: FlaskClient, kiosk: SigningKiosk, face: SyntheticFace, name: str, email: str
) -> str:
    policy = client.get("/v1/policy").get_json()
    payload = enrollment_payload(kiosk, policy, face.templates(), name=name, email=email)
    response = signed(client, kiosk, "POST", "/v1/enrollments", payload)
    assert response.status_code == 201, response.get_json()
    shopper_id: str = response.get_json()["shopper_id"]
    return shopper_id


# ---------------------------------------------------------------- sign-in


def test_sign_in_and_out(app: Any, client: FlaskClient, staff: dict[str, str]) -> None:
    assert client.get("/console/").headers["Location"] == "/console/login"
    before = token(client)
    answer = login(client, AUDITOR)
    assert answer.status_code == 302
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    # Session fixation: nothing of the session from before sign-in survives, CSRF token included.
    assert token(client) != before
    home = client.get("/console/")
    assert home.status_code == 200
    assert "Audit log" in text(home) and "Operators" not in text(home)
    assert home.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert home.headers["Cache-Control"] == "no-store"
    assert client.get("/console/login").headers["Location"] == "/console/"

    assert client.get("/console/logout").status_code == 405  # signing out is a form
    out = post(client, "/console/logout")
    assert out.status_code == 302 and out.headers["Location"] == "/console/login"
    assert client.get("/console/").headers["Location"] == "/console/login"
    assert [e["actor"] for e in events(app, "operator.login")] == [AUDITOR]
    assert [e["subject"] for e in events(app, "operator.logout")] == [staff[AUDITOR]]
    assert operator_row(app, AUDITOR).last_login_at is not None
    assert_chain_ok(app)


def test_signing_in_again_ends_the_earlier_session(app: Any, staff: dict[str, str]) -> None:
    first = signed_in(app, OFFICER)
    second = signed_in(app, OFFICER)
    assert second.get("/console/shoppers").status_code == 200
    assert first.get("/console/shoppers").headers["Location"] == "/console/login"


def test_signing_out_ends_every_copy_of_the_session(app: Any, staff: dict[str, str]) -> None:
    """Flask keeps the session in a signed cookie: a copy taken before signing out must not
    outlive it."""
    first = signed_in(app, OFFICER)
    stolen = first.get_cookie("session")
    assert stolen is not None
    thief = app.test_client()
    thief.set_cookie("session", stolen.value)
    assert thief.get("/console/shoppers").status_code == 200  # the copy works while signed in
    assert post(first, "/console/logout").status_code == 302
    assert thief.get("/console/shoppers").headers["Location"] == "/console/login"
    assert operator_row(app, OFFICER).session_token_hash is None


def test_a_session_ends_with_its_hours_and_follows_role_changes(
    app: Any, staff: dict[str, str]
) -> None:
    auditor = signed_in(app, AUDITOR)
    assert auditor.get("/console/audit").status_code == 200
    with app.extensions["facepay"].sessions() as session:
        session.execute(
            update(Operator).where(Operator.name == AUDITOR).values(role="privacy_officer")
        )
        session.commit()
    assert auditor.get("/console/audit").status_code == 403  # read again on every request
    assert auditor.get("/console/shoppers").status_code == 200

    hours = app.extensions["facepay"].settings.session_hours
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours, minutes=1)
    with app.extensions["facepay"].sessions() as session:
        session.execute(
            update(Operator).where(Operator.name == AUDITOR).values(last_login_at=long_ago)
        )
        session.commit()
    assert auditor.get("/console/shoppers").headers["Location"] == "/console/login"


def test_every_refusal_looks_the_same(app: Any, client: FlaskClient, staff: dict[str, str]) -> None:
    wrong = login(client, AUDITOR, "not the password at all")
    unknown = login(client, "nobody", PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    message = "Sign-in failed: the name or password is wrong"
    assert message in text(wrong) and message in text(unknown)
    assert PASSWORD not in text(unknown) and "not the password" not in text(wrong)
    assert client.get("/console/").headers["Location"] == "/console/login"
    failed = events(app, "operator.login_failed")
    assert [e["data"]["reason"] for e in failed] == ["wrong_password", "unknown_operator"]
    assert failed[0]["subject"] == staff[AUDITOR] and failed[1]["subject"] is None
    # What someone typed as a name is not kept (it may be their password).
    assert "nobody" not in json.dumps(events(app))
    assert operator_row(app, AUDITOR).failed_logins == 1
    assert_chain_ok(app)


def test_lockout_after_repeated_failures(
    app: Any,
    app_config: dict[str, Any],
    client: FlaskClient,
    staff: dict[str, str],
    monkeypatch: Any,
) -> None:
    tries = app.extensions["facepay"].settings.login_tries
    for _ in range(tries):
        assert login(client, ADMIN, "guessing wrongly again").status_code == 401
    locked = operator_row(app, ADMIN)
    assert locked.locked_until is not None and locked.locked_until > dt.datetime.now(dt.UTC)
    assert len(events(app, "operator.locked")) == 1
    refused = login(client, ADMIN)  # the right password, while locked
    assert refused.status_code == 401 and "Sign-in failed" in text(refused)
    assert events(app, "operator.login_failed")[-1]["data"]["reason"] == "locked"

    # The lockout runs out: the right password works, and the count starts again.
    with app.extensions["facepay"].sessions() as session:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        session.execute(update(Operator).where(Operator.name == ADMIN).values(locked_until=past))
        session.commit()
    assert login(client, ADMIN).status_code == 302
    assert operator_row(app, ADMIN).failed_logins == 0
    post(client, "/console/logout")

    # Locked again; the CLI lifts it.
    for _ in range(tries):
        login(client, ADMIN, "guessing wrongly again")
    assert login(client, ADMIN).status_code == 401
    monkeypatch.setenv("FACEPAY_INSTANCE", app_config["instance"])
    monkeypatch.setenv("FACEPAY_DATABASE_URL", app_config["database_url"])
    from server.cli import server_group

    result = CliRunner().invoke(server_group, ["operator", "unlock", ADMIN])
    assert result.exit_code == 0, result.output
    assert login(client, ADMIN).status_code == 302
    assert_chain_ok(app)


# ---------------------------------------------------------------- the role matrix

# GET pages: who may open each (everyone else: 403; nobody signed in: the sign-in page).
PAGES = {
    "/console/": {AUDITOR, OFFICER, ADMIN},
    "/console/audit": {AUDITOR},
    "/console/audit?page=2": {AUDITOR},
    "/console/consents": {AUDITOR},
    "/console/payments": {AUDITOR},
    "/console/kiosks": {AUDITOR, ADMIN},
    "/console/operators": {ADMIN},
    "/console/shoppers": {OFFICER},
    "/console/shoppers?q={email}": {OFFICER},
    "/console/shoppers/{shopper}": {OFFICER},
    "/console/shoppers/{shopper}/delete": {OFFICER},
    "/console/deletions/{deletion}": {OFFICER},
}
# POST actions: the one role that may (the tests below do each); the others get 403.
ACTIONS = {
    "/console/kiosks": (ADMIN, {"name": "till-9", "store": "Laval 02"}),
    "/console/kiosks/{kiosk}/revoke": (ADMIN, {}),
    "/console/operators": (
        ADMIN,
        {"name": "mallory", "role": "admin", "password": PASSWORD, "confirm": PASSWORD},
    ),
    "/console/operators/{operator}/disable": (ADMIN, {}),
    "/console/operators/{operator}/unlock": (ADMIN, {}),
    "/console/shoppers/{shopper}/export": (OFFICER, {}),
    "/console/shoppers/{shopper}/delete": (OFFICER, {"confirm": "yes"}),
}


def test_each_role_opens_its_pages_and_gets_403_for_the_rest(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, staff: dict[str, str]
) -> None:
    rng = np.random.default_rng(31)
    shopper = enroll(client, kiosk, SyntheticFace(rng))
    gone = enroll(client, kiosk, SyntheticFace(rng), name="Paul Roy", phone="+1 514 555 9876")
    officer = signed_in(app, OFFICER)
    deleted = post(officer, f"/console/shoppers/{gone}/delete", {"confirm": "yes"})
    deletion = deleted.headers["Location"].rsplit("/", 1)[-1]
    ids = {
        "email": "marie@example.com",
        "shopper": shopper,
        "deletion": deletion,
        "kiosk": kiosk.kiosk_id,
        "operator": AUDITOR,
    }
    clients = {name: signed_in(app, name) for name in ROLE_OF}
    seen: dict[tuple[str, str], int] = {}
    for path, allowed in PAGES.items():
        url = path.format(**ids)
        for name, browser in clients.items():
            status = browser.get(url).status_code
            seen[(url, name)] = status
            assert status == (200 if name in allowed else 403), (url, name, status)
        anonymous = app.test_client().get(url)
        assert anonymous.status_code == 302, url
        assert anonymous.headers["Location"] == "/console/login"
    forbidden = clients[AUDITOR].get("/console/operators")
    assert "forbidden" in text(forbidden) and forbidden.mimetype == "text/html"

    before = events(app)
    for path, (allowed, data) in ACTIONS.items():
        url = path.format(**ids)
        for name, browser in clients.items():
            if name != allowed:
                assert post(browser, url, data).status_code == 403, (url, name)
        anonymous = app.test_client()
        answer = post(anonymous, url, data)
        assert answer.status_code == 302 and answer.headers["Location"] == "/console/login", url
    # Refused actions changed nothing; each was recorded as refused.
    refused = [e for e in events(app) if e not in before]
    assert {e["kind"] for e in refused} == {"console.forbidden"}
    assert len(refused) == sum(len(ROLE_OF) - 1 for _ in ACTIONS)
    assert {"method": "POST", "endpoint": "console.shopper_delete"} in [
        e["data"] for e in refused if e["actor"] == ADMIN
    ]
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        assert session.get(Kiosk, kiosk.kiosk_id).status == "active"  # type: ignore[union-attr]
        assert session.get(Shopper, shopper).status == "active"  # type: ignore[union-attr]
        assert session.scalar(select(func.count()).select_from(Kiosk)) == 1
        assert operators.by_name(session, "mallory") is None
        assert operators.by_name(session, AUDITOR).disabled_at is None  # type: ignore[union-attr]
    assert_chain_ok(app)


def test_a_form_without_its_csrf_token_is_refused(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, staff: dict[str, str]
) -> None:
    shopper = enroll(client, kiosk, SyntheticFace(np.random.default_rng(32)))
    admin, officer = signed_in(app, ADMIN), signed_in(app, OFFICER)
    other_session_token = token(signed_in(app, AUDITOR))
    before = events(app)
    attempts = [
        (admin, "/console/kiosks", {"name": "till-9", "store": "Laval 02"}),
        (admin, f"/console/kiosks/{kiosk.kiosk_id}/revoke", {}),
        (admin, "/console/operators", {"name": "eve", "role": "admin", "password": PASSWORD}),
        (admin, f"/console/operators/{AUDITOR}/disable", {}),
        (officer, f"/console/shoppers/{shopper}/delete", {"confirm": "yes"}),
        (officer, f"/console/shoppers/{shopper}/export", {}),
        (officer, "/console/logout", {}),
        (app.test_client(), "/console/login", {"name": ADMIN, "password": PASSWORD}),
    ]
    for browser, url, data in attempts:
        for forged in ({}, {"csrf_token": "forged"}, {"csrf_token": other_session_token}):
            answer = browser.post(url, data={**data, **forged})
            assert answer.status_code == 400, (url, forged, answer.status_code)
            assert "csrf_failed" in text(answer), url
    assert events(app) == before
    with app.extensions["facepay"].sessions() as session:
        assert session.get(Shopper, shopper).status == "active"  # type: ignore[union-attr]
        assert session.get(Kiosk, kiosk.kiosk_id).status == "active"  # type: ignore[union-attr]
        assert session.scalar(select(func.count()).select_from(Kiosk)) == 1
        assert session.scalar(select(func.count()).select_from(Operator)) == 3
    assert officer.get("/console/shoppers").status_code == 200  # still signed in
    assert_chain_ok(app)


# ---------------------------------------------------------------- privacy officer


def test_officer_finds_exports_and_deletes_a_shopper(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, staff: dict[str, str]
) -> None:
    rng = np.random.default_rng(33)
    marie, paul = SyntheticFace(rng), SyntheticFace(rng)
    marie_id = enroll(client, kiosk, marie)
    paul_id = enroll(client, kiosk, paul, name="Paul Roy", phone="+1 514 555 9876")
    assert pay(client, kiosk, marie, 1_000).get_json()["status"] == "approved"
    officer = signed_in(app, OFFICER)

    by_email = text(officer.get("/console/shoppers?q=MARIE@example.com"))
    assert marie_id in by_email and paul_id not in by_email and "Marie Tremblay" in by_email
    by_id = text(officer.get(f"/console/shoppers?q={marie_id}"))
    assert marie_id in by_id and paul_id not in by_id
    assert "No shopper" in text(officer.get("/console/shoppers?q=nobody@example.com"))
    assert "exact email" in text(officer.get("/console/shoppers?q=Marie"))
    record = text(officer.get(f"/console/shoppers/{marie_id}"))
    assert "marie@example.com" in record and "0142" in record and "514 555" not in record
    assert officer.get(f"/console/shoppers/{uuid.uuid4()}").status_code == 404

    exported = post(officer, f"/console/shoppers/{marie_id}/export")
    assert exported.status_code == 200 and exported.mimetype == "application/json"
    assert "attachment" in exported.headers["Content-Disposition"]
    document = json.loads(exported.get_data())
    assert document["shopper"]["id"] == marie_id
    assert document["shopper"]["email"] == "marie@example.com"
    assert len(document["payments"]) == 1 and document["templates_held"] == 3
    raw = exported.get_data(as_text=True)
    assert paul_id not in raw and "Paul" not in raw and "9876" not in raw
    assert "sealed" not in raw and "ciphertext" not in raw

    confirm = officer.get(f"/console/shoppers/{marie_id}/delete")
    assert confirm.status_code == 200 and 'name="confirm"' in text(confirm)
    unconfirmed = post(officer, f"/console/shoppers/{marie_id}/delete")
    assert unconfirmed.status_code == 302
    with app.extensions["facepay"].sessions() as session:
        assert session.get(Shopper, marie_id).status == "active"  # type: ignore[union-attr]
    done = post(officer, f"/console/shoppers/{marie_id}/delete", {"confirm": "yes"})
    assert done.status_code == 302 and "/console/deletions/" in done.headers["Location"]
    receipt = text(officer.get(done.headers["Location"]))
    assert "Deletion receipt" in receipt and marie_id in receipt and OFFICER in receipt
    again = post(officer, f"/console/shoppers/{marie_id}/delete", {"confirm": "yes"})
    assert again.status_code == 404 and "shopper_not_found" in text(again)

    after = pay(client, kiosk, marie, 500).get_json()
    assert_declined(app, after, "no_match")
    assert pay(client, kiosk, paul, 500).get_json()["status"] == "approved"
    with app.extensions["facepay"].sessions() as session:
        shopper = session.get(Shopper, marie_id)
        assert shopper is not None and shopper.status == "deleted" and shopper.email == ""
    deleted = events(app, "shopper.deleted")
    assert [(e["subject"], e["actor"], e["data"]["via"]) for e in deleted] == [
        (marie_id, OFFICER, "officer")
    ]
    assert [e["subject"] for e in events(app, "console.export")] == [marie_id]
    assert [e["subject"] for e in events(app, "console.shopper_viewed")] == [marie_id]
    searches = events(app, "console.shopper_search")
    assert "marie@example.com" not in json.dumps(searches)
    assert searches[0]["data"] == {"by": "email", "found": [marie_id]}
    assert_chain_ok(app)


# ---------------------------------------------------------------- admin


def test_admin_adds_and_revokes_kiosks(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, staff: dict[str, str]
) -> None:
    admin = signed_in(app, ADMIN)
    added = post(admin, "/console/kiosks", {"name": "till-2", "store": "Laval 02"})
    assert added.status_code == 200
    code = re.search(r'id="pairing-code">([A-Z0-9-]{14})<', text(added))
    assert code, text(added)
    assert code.group(1) not in text(admin.get("/console/kiosks"))  # shown once only
    paired = register_kiosk(client, code.group(1))  # the code works at a kiosk
    assert post(admin, "/console/kiosks", {"name": " ", "store": "x"}).status_code == 302

    revoked = post(admin, f"/console/kiosks/{paired.kiosk_id}/revoke")
    assert revoked.status_code == 302
    response = pay(client, paired, SyntheticFace(np.random.default_rng(36)), 100)
    assert response.status_code == 403 and response.get_json()["code"] == "kiosk_revoked"
    assert post(admin, f"/console/kiosks/{uuid.uuid4()}/revoke").status_code == 404
    listing = text(signed_in(app, AUDITOR).get("/console/kiosks"))
    assert (
        "revoked" in listing and "Revoke</button>" not in listing and "Add a kiosk" not in listing
    )
    assert [e["actor"] for e in events(app, "kiosk.added")][-1] == ADMIN
    assert [e["subject"] for e in events(app, "kiosk.revoked")] == [paired.kiosk_id]
    assert_chain_ok(app)


def test_admin_adds_disables_and_unlocks_operators(app: Any, staff: dict[str, str]) -> None:
    admin = signed_in(app, ADMIN)
    fields = {"name": "olivia", "role": "privacy_officer", "password": PASSWORD}
    assert post(admin, "/console/operators", {**fields, "confirm": PASSWORD}).status_code == 302
    olivia = signed_in(app, "olivia")
    assert olivia.get("/console/shoppers").status_code == 200
    assert olivia.get("/console/operators").status_code == 403

    # Refused: a short password, two passwords that differ, a name taken, a role made up.
    for bad in (
        {**fields, "name": "p", "password": "short", "confirm": "short"},
        {**fields, "name": "q", "confirm": "something else entirely"},
        {**fields, "confirm": PASSWORD},
        {**fields, "name": "r", "role": "superuser", "confirm": PASSWORD},
        {**fields, "name": "<b>x</b>", "confirm": PASSWORD},
    ):
        page = admin.get(post(admin, "/console/operators", bad).headers["Location"])
        assert 'class="flash error"' in text(page)
    with app.extensions["facepay"].sessions() as session:
        assert session.scalar(select(func.count()).select_from(Operator)) == 4

    assert post(admin, "/console/operators/olivia/disable").status_code == 302
    assert olivia.get("/console/shoppers").headers["Location"] == "/console/login"
    assert login(app.test_client(), "olivia").status_code == 401
    post(admin, f"/console/operators/{ADMIN}/disable")
    assert operator_row(app, ADMIN).disabled_at is None  # not oneself
    assert post(admin, "/console/operators/nobody/disable").status_code == 404

    with app.extensions["facepay"].sessions() as session:
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        session.execute(update(Operator).where(Operator.name == AUDITOR).values(locked_until=later))
        session.commit()
    assert "locked" in text(admin.get("/console/operators"))
    assert post(admin, f"/console/operators/{AUDITOR}/unlock").status_code == 302
    assert login(app.test_client(), AUDITOR).status_code == 302
    kinds = [e["kind"] for e in events(app) if e["actor"] == ADMIN]
    assert {"operator.added", "operator.disabled", "operator.unlocked"} <= set(kinds)
    added = events(app, "operator.added")[-1]
    assert added["data"] == {"name": "olivia", "role": "privacy_officer"}
    assert PASSWORD not in json.dumps(events(app))
    with app.extensions["facepay"].sessions() as session:
        stored = operators.by_name(session, "olivia")
        assert stored is not None and stored.password_hash.startswith("$argon2id$")
    assert_chain_ok(app)


# ---------------------------------------------------------------- auditor


def test_auditor_reads_the_log_consents_and_charges(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, staff: dict[str, str]
) -> None:
    face = SyntheticFace(np.random.default_rng(34))
    shopper = enroll(client, kiosk, face)
    payment = pay(client, kiosk, face, 1_250).get_json()
    auditor = signed_in(app, AUDITOR)

    log = auditor.get("/console/audit")
    assert log.status_code == 200
    assert "Chain verified" in text(log) and "NOT VERIFIED" not in text(log)
    assert "shopper.enrolled" in text(log)
    assert "operator.login" in text(log)
    consents = text(auditor.get("/console/consents"))
    assert shopper in consents and "Marie Tremblay" in consents
    charges = text(auditor.get("/console/payments"))
    assert payment["payment_id"] in charges and "1250 CAD" in charges
    for page in (text(log), consents, charges):
        assert "score" not in page.lower() and "sealed" not in page
    assert_chain_ok(app)

    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        seq = session.scalar(select(func.min(AuditRecord.seq)).where(AuditRecord.seq > 1))
        row = session.get(AuditRecord, seq)
        assert row is not None
        row.record = row.record.replace('"kind":', '"kind" :', 1)
        session.commit()
    tampered = text(auditor.get("/console/audit"))
    assert "NOT VERIFIED" in tampered and f"breaks at record {seq}" in tampered


def test_paging_of_the_audit_log(app: Any, staff: dict[str, str]) -> None:
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        for number in range(150):
            audit.record_event(session, svc.keys.audit_key, "test.filler", data={"n": number})
    auditor = signed_in(app, AUDITOR)
    first, second = text(auditor.get("/console/audit")), text(auditor.get("/console/audit?page=2"))
    assert "page 1 of 2" in first and "page 2 of 2" in second
    assert "operator.login" in first  # newest first
    newest, oldest = (str(escape(json.dumps({"n": n}))) for n in (149, 0))
    assert newest in first and oldest in second and oldest not in first
    assert "page 2 of 2" in text(auditor.get("/console/audit?page=99"))
    assert "page 1 of 2" in text(auditor.get("/console/audit?page=x"))


# ---------------------------------------------------------------- hostile input


def test_names_are_escaped_on_every_page(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, staff: dict[str, str]
) -> None:
    shopper = enroll_named(
        client, kiosk, SyntheticFace(np.random.default_rng(35)), XSS, "xss@example.com"
    )
    admin = signed_in(app, ADMIN)
    hostile = '"><img src=x onerror=alert(2)>'
    post(admin, "/console/kiosks", {"name": hostile, "store": XSS})
    officer, auditor = signed_in(app, OFFICER), signed_in(app, AUDITOR)
    pages = [
        officer.get("/console/shoppers?q=xss@example.com"),
        officer.get(f"/console/shoppers?q={XSS}"),
        officer.get(f"/console/shoppers/{shopper}"),
        officer.get(f"/console/shoppers/{shopper}/delete"),
        auditor.get("/console/consents"),
        auditor.get("/console/audit"),
        auditor.get("/console/kiosks"),
        admin.get("/console/kiosks"),
        login(app.test_client(), XSS),
    ]
    for page in pages:
        body = text(page)
        assert "<script>" not in body and "<img" not in body, body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text(pages[0])
    assert "&lt;img src=x onerror=alert(2)&gt;" in text(pages[6])
    assert_chain_ok(app)


def test_operator_names_cannot_carry_markup_or_sql(app: Any, staff: dict[str, str]) -> None:
    for name in ("<script>", "x' OR '1'='1", "a b", ""):
        with pytest.raises(operators.OperatorError):
            operators.check_name(name)
    answer = login(app.test_client(), "' OR '1'='1' --", "' OR '1'='1' --")
    assert answer.status_code == 401


# ---------------------------------------------------------------- cookies in production


def test_production_session_cookie_is_secure(
    app: Any, app_config: dict[str, Any], staff: dict[str, str]
) -> None:
    from server import create_app

    keys = Path(app_config["instance"]) / "keys"
    production = create_app(
        {
            **app_config,
            "mode": "production",
            "secret_key": "s" * 48,
            "master_key_file": str(keys / "master.key"),
            "audit_key_file": str(keys / "audit.key"),
            "phone_key_file": str(keys / "phone.key"),
            "sealing_key_file": str(keys / "sealing.key"),
        }
    )
    try:
        browser = production.test_client()
        origin = {
            "base_url": "https://console.example",
            "headers": {"Referer": "https://console.example/console/login"},
        }
        page = browser.get("/console/login", **origin)
        found = CSRF_FIELD.search(text(page))
        assert found
        answer = browser.post(
            "/console/login",
            data={"name": ADMIN, "password": PASSWORD, "csrf_token": found.group(1)},
            **origin,
        )
        assert answer.status_code == 302, text(answer)
        cookie = answer.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    finally:
        production.extensions["facepay"].engine.dispose()


# ---------------------------------------------------------------- the CLI


def test_operator_cli(app: Any, app_config: dict[str, Any], monkeypatch: Any) -> None:
    from server.cli import server_group

    monkeypatch.setenv("FACEPAY_INSTANCE", app_config["instance"])
    monkeypatch.setenv("FACEPAY_DATABASE_URL", app_config["database_url"])
    runner = CliRunner()
    typed = f"{PASSWORD}\n{PASSWORD}\n"
    added = runner.invoke(server_group, ["operator", "add", "root", "--role", "admin"], input=typed)
    assert added.exit_code == 0, added.output
    assert PASSWORD not in added.output
    piped = runner.invoke(
        server_group,
        ["operator", "add", "ivy", "--role", "auditor", "--password-stdin", "--json"],
        input=PASSWORD + "\n",
    )
    assert piped.exit_code == 0, piped.output
    assert json.loads(piped.output)["role"] == "auditor"
    short = runner.invoke(
        server_group,
        ["operator", "add", "kim", "--role", "auditor", "--password-stdin"],
        input="too short\n",
    )
    assert short.exit_code == 1 and "12 characters" in short.output
    twice = runner.invoke(server_group, ["operator", "add", "root", "--role", "admin"], input=typed)
    assert twice.exit_code == 1 and "already" in twice.output
    bad_role = runner.invoke(server_group, ["operator", "add", "z", "--role", "root"], input=typed)
    assert bad_role.exit_code == 2

    assert signed_in(app, "root").get("/console/operators").status_code == 200
    disabled = runner.invoke(server_group, ["operator", "disable", "ivy"])
    assert disabled.exit_code == 0 and "disabled" in disabled.output
    listed = json.loads(runner.invoke(server_group, ["operator", "list", "--json"]).output)
    assert {(row["name"], row["role"], row["status"]) for row in listed} == {
        ("root", "admin", "active"),
        ("ivy", "auditor", "disabled"),
    }
    assert runner.invoke(server_group, ["operator", "unlock", "nobody"]).exit_code == 1
    assert [e["actor"] for e in events(app, "operator.added")] == ["cli", "cli"]
    assert_chain_ok(app)


def test_password_hashes_are_upgraded_at_sign_in(
    app: Any, staff: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    weak = operator_row(app, AUDITOR).password_hash
    assert "m=8," in weak
    monkeypatch.setattr(operators, "_hasher", PasswordHasher())  # today's defaults
    signed_in(app, AUDITOR)
    upgraded = operator_row(app, AUDITOR).password_hash
    assert upgraded != weak and upgraded.startswith("$argon2id$") and "m=8," not in upgraded
    signed_in(app, AUDITOR)
    assert operator_row(app, AUDITOR).password_hash == upgraded
