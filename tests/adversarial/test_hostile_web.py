"""Hostile operators and web visitors.

The operator console and the shopper's privacy pages against what a visitor, or an operator
stepping outside their role, could try: SQL injection in every input, markup in every field
shown, forged forms, fixed, copied, forged and expired session cookies, every URL with every
role, password guessing and floods, and guessing, replaying or enumerating with the one-time
code. Never a 5xx, nothing changed that should not change, and the audit chain verifies. On
SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import re
import uuid
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from flask.json.tag import TaggedJSONSerializer
from flask.testing import FlaskClient
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, select, update

from server.audit import service as audit
from server.audit.models import AuditRecord
from server.consent import service as consent
from server.db import Base, transaction, utcnow
from server.kiosks import service as kiosks
from server.kiosks.models import Kiosk
from server.operators import service as operators
from server.operators.models import Operator
from server.privacy.models import OneTimeCode
from server.privacy.service import delete_shopper, finish_deletions
from server.shoppers.models import Shopper
from server.web import CONTENT_SECURITY_POLICY
from tests.adversarial.conftest import LONG, Tally
from tests.support.kiosk import SigningKiosk, register_kiosk
from tests.support.payments import SyntheticFace
from tests.unit.server.test_console import (
    ADMIN,
    AUDITOR,
    OFFICER,
    PASSWORD,
    ROLE_OF,
    enroll_named,
    events,
    login,
    quick_hashing,
    signed_in,
    staff,
    text,
)
from tests.unit.server.test_payments import pay
from tests.unit.server.test_shopper_web import ask, error_code, other_code, outbox, read_mail

# Fixtures of the console's unit tests, used here: operators of each role, cheap argon2id.
__all__ = ["quick_hashing", "staff"]

ALL_ROLES = frozenset(ROLE_OF)
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
NO_FORM_LIMIT = pytest.mark.settings(form_rate_limit="")

# ---------------------------------------------------------------- helpers


def csrf_of(client: FlaskClient) -> str:
    """The CSRF token of this browser's session (console or shopper pages: the same one)."""
    page = client.get("/privacy/request")
    found = CSRF_FIELD.search(text(page))
    assert found, text(page)
    return found.group(1)


def send(client: FlaskClient, path: str, data: dict[str, str], csrf: str | None, **kw: Any) -> Any:
    """A form post with this token (None: none at all). Buffered: the response is closed at
    once, which sends a one-time code's mail."""
    fields = dict(data) if csrf is None else {**data, "csrf_token": csrf}
    return client.post(path, data=fields, buffered=True, **kw)


def rows(app: Any, *skip: str) -> dict[str, list[str]]:
    """Every table's rows, as sorted text, but the tables in `skip`."""
    with app.extensions["facepay"].sessions() as session:
        return {
            table.name: sorted(repr(tuple(row)) for row in session.execute(select(table)))
            for table in Base.metadata.sorted_tables
            if table.name not in skip
        }


def counts(app: Any) -> dict[str, int]:
    with app.extensions["facepay"].sessions() as session:
        return {
            table.name: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in Base.metadata.sorted_tables
        }


def audit_head(app: Any) -> int:
    with app.extensions["facepay"].sessions() as session:
        return int(session.scalar(select(func.max(AuditRecord.seq))) or 0)


def audit_since(app: Any, seq: int) -> list[dict[str, Any]]:
    """The audit records after `seq`, in order."""
    with app.extensions["facepay"].sessions() as session:
        found = session.scalars(
            select(AuditRecord.record).where(AuditRecord.seq > seq).order_by(AuditRecord.seq)
        )
        return [json.loads(record) for record in found]


def chain_ok(app: Any) -> bool:
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        return audit.verify(session, svc.keys.audit_key).ok


def shopper_status(app: Any, shopper_id: str) -> str | None:
    with app.extensions["facepay"].sessions() as session:
        found = session.get(Shopper, shopper_id)
        return found.status if found else None


def operator_row(app: Any, name: str) -> Operator | None:
    with app.extensions["facepay"].sessions() as session:
        return operators.by_name(session, name)


def roles(app: Any) -> dict[str, tuple[str, bool]]:
    """Each operator's role, and whether they are disabled."""
    with app.extensions["facepay"].sessions() as session:
        return {
            row.name: (row.role, row.disabled_at is not None)
            for row in operators.list_operators(session)
        }


def code_rows(app: Any) -> list[OneTimeCode]:
    with app.extensions["facepay"].sessions() as session:
        return list(session.scalars(select(OneTimeCode).order_by(OneTimeCode.created_at)))


def enroll_people(
    client: FlaskClient, kiosk: SigningKiosk, people: list[tuple[str, str]], seed: int
) -> list[tuple[str, SyntheticFace]]:
    """Enroll (name, email) pairs, each with a face of its own: (shopper id, face)."""
    rng = np.random.default_rng(seed)
    enrolled = []
    for name, address in people:
        face = SyntheticFace(rng)
        enrolled.append((enroll_named(client, kiosk, face, name, address), face))
    return enrolled


def new_operator(app: Any, name: str, role: str) -> None:
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        operators.create(
            session, svc.keys.audit_key, name=name, role=role, password=PASSWORD, actor="test"
        )


def redirected_to_login(response: Any) -> bool:
    return response.status_code == 302 and response.headers["Location"] == "/console/login"


def signed_out(client: FlaskClient) -> bool:
    return redirected_to_login(client.get("/console/"))


def decoded(app: Any, value: str) -> dict[str, Any]:
    """What a session cookie says (it is signed, not encrypted)."""
    loaded: dict[str, Any] = app.session_interface.get_signing_serializer(app).loads(value)
    return loaded


def cookie_data(app: Any, client: FlaskClient) -> dict[str, Any]:
    cookie = client.get_cookie("session")
    return decoded(app, cookie.value) if cookie is not None else {}


def flask_serializer(secret: str) -> URLSafeTimedSerializer:
    """Flask's cookie serializer, with a secret of one's choosing (a forger's)."""
    return URLSafeTimedSerializer(
        secret,
        salt="cookie-session",
        serializer=TaggedJSONSerializer(),
        signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha1},
    )


def standalone(number: str, haystack: str) -> bool:
    """`number` appears in `haystack` on its own (not inside a longer run of digits or hex)."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(number)}(?![0-9A-Za-z])", haystack) is not None


class Clock:
    """Moves the clock of the console's sessions, the sign-in lockout and the one-time codes."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def now(self) -> dt.datetime:
        return utcnow() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    moved = Clock()
    for module in ("server.console.auth", "server.operators.service", "server.shopper_web.service"):
        monkeypatch.setattr(f"{module}.utcnow", moved.now)
    return moved


# Elements the console and shopper templates use: anything else on a page was injected.
PAGE_TAGS = frozenset(
    [
        "html",
        "head",
        "meta",
        "title",
        "link",
        "body",
        "header",
        "span",
        "nav",
        "a",
        "form",
        "input",
        "button",
        "main",
        "p",
        "h1",
        "h2",
        "ul",
        "li",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "label",
        "select",
        "option",
        "strong",
        "code",
        "fieldset",
        "legend",
        "br",
        "div",
    ]
)


class Page(HTMLParser):
    """A page as a browser reads it: its elements, and the texts and values it shows."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.texts: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))
        self.texts.extend(value for _, value in attrs if value)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    def injected(self) -> list[str]:
        """Markup a payload could have added: an element the templates do not use, an event
        handler or style, or a link that does not stay on this site."""
        found = []
        for tag, attrs in self.elements:
            if tag not in PAGE_TAGS:
                found.append(f"<{tag}>")
            for name, value in attrs:
                if name.startswith("on") or name in ("style", "srcdoc", "formaction"):
                    found.append(f"<{tag} {name}=>")
                link = (value or "").strip()
                if name in ("href", "src", "action") and (
                    not link.startswith("/") or link.startswith("//")
                ):
                    found.append(f"<{tag} {name}={link[:40]!r}>")
        return found

    def shows(self, payload: str) -> bool:
        """The payload is on the page as text (or a form value), exactly as typed."""
        return any(payload in piece for piece in self.texts)


def html_pages_are_safe(tally: Tally, label: str, response: Any, *shown: str) -> None:
    """One page: no injected markup, the payloads shown as text, the security headers on."""
    assert response.status_code < 500, (label, response.status_code)
    body = text(response)
    page = Page(body)
    injected = page.injected()
    tally.case(not injected, f"{label}: injected {injected[:3]}")
    tally.case("<script" not in body.lower(), f"{label}: a raw <script")
    for payload in shown:
        # Shown exactly as typed: escaped where it had to be, and "{{7*7}}" is not "49".
        tally.case(page.shows(payload), f"{label}: {payload!r} not shown as text")
    if response.mimetype == "text/html":
        headers = response.headers
        tally.case(
            headers.get("Content-Security-Policy") == CONTENT_SECURITY_POLICY
            and headers.get("X-Content-Type-Options") == "nosniff",
            f"{label}: no Content-Security-Policy",
        )


# ---------------------------------------------------------------- 1. SQL injection

SQL_PAYLOADS = [
    "' OR '1'='1",
    "' OR 1=1 --",
    "admin' --",
    "'; DROP TABLE shoppers; --",
    '"; DROP TABLE operators; --',
    "' UNION SELECT id, email, full_name FROM shoppers --",
    "1 UNION SELECT NULL, NULL, NULL --",
    "*/ OR /**/ 1=1 /*",
    "%' OR email LIKE '%",
    "\\' OR 1=1 --",
    "' || (SELECT pg_sleep(0)) || '",
    "\x00",
    "a\x00' OR '1'='1",
    "\u2019 OR \u20181\u2019=\u20181",  # typographic quotes
    "\u02bc OR 1=1 --",  # modifier-letter apostrophe
    "\uff07 OR 1=1 --",  # fullwidth apostrophe
    "'" * 300,
    "x" * 5000,
]
if LONG:
    SQL_PAYLOADS += [
        "' AND 1=(SELECT COUNT(*) FROM operators) --",
        "'; UPDATE operators SET role='admin'; --",
        "1; SELECT * FROM audit_records",
        "' OR ''='",
        "') OR ('1'='1",
        "\\x27 OR 1=1",
        "%00' OR 1=1 --",
        "' OR 1=1#",
        "\r\n' OR 1=1 --",
        "é" * 3000,
    ]


@NO_FORM_LIMIT
def test_sql_injection(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, staff: dict[str, str], tally: Tally
) -> None:
    """SQL injection in every console and shopper-page input."""
    people = [("Marie Tremblay", "marie@example.com"), ("Paul Roy", "paul@example.com")]
    ids = [shopper_id for shopper_id, _ in enroll_people(client, kiosk, people, seed=51)]
    officer, admin, auditor = (signed_in(app, name) for name in (OFFICER, ADMIN, AUDITOR))
    tokens = {id(browser): csrf_of(browser) for browser in (officer, admin, auditor)}
    before_counts = counts(app)
    before_shoppers = rows(app)["shoppers"]
    before_roles = roles(app)
    outbox_before = len(outbox(app))
    kiosks_added: list[str] = []

    def no_5xx(response: Any, what: str) -> bool:
        return tally.case(response.status_code < 500, f"{what}: {response.status_code}")

    def lists_no_shopper(response: Any) -> bool:
        """No shopper listed or opened (the search box may echo what was typed)."""
        body = text(response)
        return 'id="found"' not in body and not any(
            f"/console/shoppers/{shopper_id}" in body or f"<td>{name}</td>" in body
            for shopper_id, name in zip(ids, ("Marie Tremblay", "Paul Roy"), strict=True)
        )

    for payload in SQL_PAYLOADS:
        short = repr(payload[:30])
        # Sign-in: the name, then the password (of a real operator).
        for name, password in ((payload, PASSWORD), (AUDITOR, payload), (payload, payload)):
            visitor = app.test_client()
            answer = send(
                visitor, "/console/login", {"name": name, "password": password}, csrf_of(visitor)
            )
            tally.case(
                answer.status_code == 401 and signed_out(visitor),
                f"sign-in {short}: {answer.status_code}",
            )
        # The privacy officer's search, by email and by id, and the shopper pages by id.
        for query in (
            payload,
            f"{payload}@example.com",
            f"marie@example.com{payload}",
            f"{ids[0]}{payload}",
        ):
            found = officer.get("/console/shoppers", query_string={"q": query})
            tally.case(
                found.status_code == 200 and lists_no_shopper(found),
                f"search {query[:40]!r}: {found.status_code}",
            )
        segment = quote(payload, safe="")
        for method, path in (
            ("GET", f"/console/shoppers/{segment}"),
            ("GET", f"/console/shoppers/{segment}/delete"),
            ("POST", f"/console/shoppers/{segment}/delete"),
            ("POST", f"/console/shoppers/{segment}/export"),
            ("GET", f"/console/deletions/{segment}"),
        ):
            answer = officer.open(
                path, method=method, data={"confirm": "yes", "csrf_token": tokens[id(officer)]}
            )
            tally.case(
                answer.status_code == 404 and lists_no_shopper(answer),
                f"{method} {path[:60]}: {answer.status_code}",
            )
        # The administrator's forms and paths.
        added = send(
            admin, "/console/kiosks", {"name": payload, "store": payload}, tokens[id(admin)]
        )
        if added.status_code == 200:
            kiosks_added.append(payload.strip())
        no_5xx(added, f"kiosk add {short}")
        for path in (
            f"/console/kiosks/{segment}/revoke",
            f"/console/operators/{segment}/disable",
            f"/console/operators/{segment}/unlock",
        ):
            answer = send(admin, path, {}, tokens[id(admin)])
            tally.case(answer.status_code == 404, f"POST {path[:60]}: {answer.status_code}")
        for fields in (
            {"name": payload, "role": "auditor"},
            {"name": f"sql{len(kiosks_added)}", "role": payload},
        ):
            answer = send(
                admin,
                "/console/operators",
                {**fields, "password": PASSWORD, "confirm": PASSWORD},
                tokens[id(admin)],
            )
            tally.case(answer.status_code == 302, f"operator add {fields}: {answer.status_code}")
        # Query strings.
        for path in ("/console/audit", "/console/consents", "/console/payments"):
            answer = auditor.get(path, query_string={"page": payload})
            tally.case(answer.status_code == 200, f"{path}?page={short}: {answer.status_code}")
        # The shopper's pages: the address, the purpose, the code, the language.
        visitor = app.test_client()
        visitor_token = csrf_of(visitor)
        for fields in (
            {"email": payload, "purpose": "delete"},
            {"email": f"{payload}@example.com", "purpose": "export"},
            {"email": "marie@example.com", "purpose": payload},
        ):
            answer = send(visitor, "/privacy/request", fields, visitor_token)
            tally.case(answer.status_code in (303, 400), f"request {fields}: {answer.status_code}")
        ask(visitor, "nobody@example.com", "export")
        guess = send(visitor, "/privacy/confirm", {"code": payload}, visitor_token)
        tally.case(guess.status_code == 400, f"code {short}: {guess.status_code}")
        for path, query in (
            ("/privacy", {"lang": payload}),
            ("/privacy/request", {"purpose": payload}),
        ):
            no_5xx(visitor.get(path, query_string=query), f"GET {path} {short}")

    after_counts = counts(app)
    changed = {
        name: (before_counts[name], after_counts[name])
        for name in after_counts
        if after_counts[name] != before_counts[name]
        and name not in ("audit_log", "kiosks", "one_time_codes")
    }
    tally.case(not changed, f"tables changed: {changed}")
    tally.case(
        after_counts["kiosks"] == before_counts["kiosks"] + len(kiosks_added),
        "kiosks added other than those accepted",
    )
    with app.extensions["facepay"].sessions() as session:
        stored = set(session.scalars(select(Kiosk.name)))
    tally.case(all(name in stored for name in kiosks_added), "a kiosk name was not kept verbatim")
    tally.case(rows(app)["shoppers"] == before_shoppers, "a shopper row changed")
    tally.case(roles(app) == before_roles, "an operator's role or status changed")
    tally.case(len(outbox(app)) == outbox_before, "a code was mailed to a hostile address")
    found = officer.get("/console/shoppers", query_string={"q": "marie@example.com"})
    tally.case(
        ids[0] in text(found) and ids[1] not in text(found), "the search stopped working right"
    )
    tally.case(chain_ok(app), "the audit chain does not verify")


# ---------------------------------------------------------------- 2. XSS

XSS_PAYLOADS = [
    "<script>alert(1)</script>",
    '"><img/src=x/onerror=alert(1)>',
    "javascript:alert(1)",
    "'/onfocus='alert(1)",
    "</textarea><svg/onload=alert(1)>",
    "{{7*7}}",
    "${7*7}",
]
# Names only: an email address cannot hold spaces.
XSS_NAMES = [
    '" autofocus onfocus="alert(1)',
    '<a href="javascript:alert(1)">click</a>',
    "{{ config.SECRET_KEY }}",
]
if LONG:
    XSS_PAYLOADS += ["<iframe/src=javascript:alert(1)>", "<body/onload=alert(1)>", "&lt;b&gt;x"]
    XSS_NAMES += ["<img src=x onerror=alert(document.cookie)>", "{% print 7*7 %}", "<!--"]


def quoted_address(payload: str) -> str:
    escaped = payload.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"@x.io'


@NO_FORM_LIMIT
def test_markup_in_every_displayed_field(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, staff: dict[str, str], tally: Tally
) -> None:
    """XSS: markup and template syntax in every displayed field."""
    people = [(payload, quoted_address(payload)) for payload in XSS_PAYLOADS]
    people += [(name, f"xss{n}@example.com") for n, name in enumerate(XSS_NAMES)]
    enrolled = enroll_people(client, kiosk, people, seed=52)
    admin, officer, auditor = (signed_in(app, name) for name in (ADMIN, OFFICER, AUDITOR))
    by_role = {ADMIN: admin, OFFICER: officer, AUDITOR: auditor}

    # Kiosk names and stores, through the admin's form; one of them pairs and takes a payment.
    pairing = None
    for payload in XSS_PAYLOADS:
        added = send(admin, "/console/kiosks", {"name": payload, "store": payload}, csrf_of(admin))
        html_pages_are_safe(tally, f"kiosk added {payload!r}", added, payload)
        found = re.search(r'id="pairing-code">([A-Z0-9-]{14})<', text(added))
        pairing = pairing or (found.group(1) if found else None)
    assert pairing is not None
    hostile_till = register_kiosk(client, pairing)
    paid = pay(client, hostile_till, enrolled[0][1], 700)
    assert paid.status_code == 201, paid.get_json()
    # Operator names cannot hold markup: the form refuses them.
    for payload in XSS_PAYLOADS + XSS_NAMES:
        fields = {"name": payload, "role": "auditor", "password": PASSWORD, "confirm": PASSWORD}
        refused = send(admin, "/console/operators", fields, csrf_of(admin))
        tally.case(
            refused.status_code == 302 and operator_row(app, payload) is None,
            f"operator named {payload!r} was added",
        )
    # Echoed input: the sign-in name, the search box.
    for payload in XSS_PAYLOADS + XSS_NAMES:
        visitor = app.test_client()
        answer = send(
            visitor, "/console/login", {"name": payload, "password": "x"}, csrf_of(visitor)
        )
        html_pages_are_safe(tally, f"sign-in as {payload!r}", answer, payload)
        searched = officer.get("/console/shoppers", query_string={"q": payload})
        html_pages_are_safe(tally, f"search {payload!r}", searched, payload)
    # Every shopper's record, found by email, opened, offered for deletion.
    for (shopper_id, _face), (name, address) in zip(enrolled, people, strict=True):
        stored = address.lower()
        found = officer.get("/console/shoppers", query_string={"q": stored})
        html_pages_are_safe(tally, f"found {name!r}", found, name, stored)
        for path in (f"/console/shoppers/{shopper_id}", f"/console/shoppers/{shopper_id}/delete"):
            html_pages_are_safe(tally, f"{path} of {name!r}", officer.get(path), name, stored)
    # Every console page for every role, listing the names, stores and audit data.
    names = [name for name, _ in people]
    shown_on = {
        "/console/consents": names,
        "/console/kiosks": XSS_PAYLOADS,
        "/console/payments": [XSS_PAYLOADS[0]],
    }
    pages = ["/console/", "/console/audit", "/console/consents", "/console/payments"]
    pages += ["/console/kiosks", "/console/operators", "/console/shoppers"]
    for role, browser in by_role.items():
        for path in pages:
            answer = browser.get(path)
            shown = shown_on.get(path, []) if answer.status_code == 200 else []
            html_pages_are_safe(tally, f"{path} as {role}", answer, *shown)
    audit_text = ""
    for number in range(1, 6):
        answer = auditor.get("/console/audit", query_string={"page": number})
        html_pages_are_safe(tally, f"audit page {number}", answer)
        audit_text += "\n".join(Page(text(answer)).texts)
    for payload in XSS_PAYLOADS:  # the kiosk.added records hold the stores, as JSON
        tally.case(json.dumps(payload)[1:-1] in audit_text, f"audit data {payload!r} not shown")
    # A deletion receipt.
    deleted = send(
        officer, f"/console/shoppers/{enrolled[-1][0]}/delete", {"confirm": "yes"}, csrf_of(officer)
    )
    html_pages_are_safe(tally, "deletion receipt", officer.get(deleted.headers["Location"]))

    # The shopper's pages: the address echoed, a request in progress, the receipt.
    visitor = app.test_client()
    for payload in XSS_PAYLOADS + XSS_NAMES:
        fields = {"email": payload, "purpose": "delete"}
        answer = send(visitor, "/privacy/request", fields, csrf_of(visitor))
        html_pages_are_safe(tally, f"request for {payload!r}", answer, payload)
        fields = {"email": "a@b.io", "purpose": payload}
        html_pages_are_safe(
            tally,
            f"purpose {payload!r}",
            send(visitor, "/privacy/request", fields, csrf_of(visitor)),
        )
        html_pages_are_safe(
            tally,
            f"GET purpose {payload!r}",
            visitor.get("/privacy/request", query_string={"purpose": payload}),
        )
    for index in (1, 2):  # a shopper's hostile address, all the way to the receipt
        address = people[index][1].lower()
        mails = len(outbox(app))
        ask(visitor, address, "delete")
        html_pages_are_safe(tally, f"confirm {address!r}", visitor.get("/privacy/confirm"), address)
        wrong = send(visitor, "/privacy/confirm", {"code": "abcdef"}, csrf_of(visitor))
        html_pages_are_safe(tally, f"wrong code {address!r}", wrong, address)
        _, code = read_mail(outbox(app)[mails])
        right = send(visitor, "/privacy/confirm", {"code": code}, csrf_of(visitor))
        assert right.status_code == 303, text(right)
        final = visitor.get("/privacy/confirm")
        html_pages_are_safe(tally, f"final confirmation {address!r}", final, address)
        done = send(visitor, "/privacy/confirm/delete", {"understand": "yes"}, csrf_of(visitor))
        html_pages_are_safe(tally, f"receipt {address!r}", done)
        tally.case(not Page(text(done)).shows(address), "the receipt shows the address")
    # A notice published with markup in it (by whoever runs the CLI).
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        texts = {"en": "\n\n".join(XSS_PAYLOADS), "fr": "\n\n".join(XSS_NAMES)}
        consent.publish(session, texts, purpose=XSS_PAYLOADS[1])
    english = visitor.get("/privacy")
    html_pages_are_safe(tally, "policy (en)", english, XSS_PAYLOADS[1], *XSS_PAYLOADS)
    html_pages_are_safe(tally, "policy (fr)", visitor.get("/privacy?lang=fr"), *XSS_NAMES)
    # Error pages.
    for path in ("/console/shoppers/%3Cscript%3E", f"/console/deletions/{uuid.uuid4()}"):
        html_pages_are_safe(tally, f"error page {path}", officer.get(path))
    html_pages_are_safe(tally, "403 page", auditor.get("/console/operators"))
    tally.case(chain_ok(app), "the audit chain does not verify")


# ---------------------------------------------------------------- 3. CSRF


@NO_FORM_LIMIT
def test_forged_forms(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, staff: dict[str, str], tally: Tally
) -> None:
    """CSRF: every form without a token, with a forged one, with another session's."""
    [(marie, _face)] = enroll_people(client, kiosk, [("Marie Tremblay", "marie@example.com")], 53)
    new_operator(app, "ursula", "auditor")
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        session.execute(
            update(Operator)
            .where(Operator.name == "ursula")
            .values(failed_logins=9, locked_until=utcnow() + dt.timedelta(hours=1))
        )
        session.commit()
    admin = app.test_client()
    admin_before_sign_in = csrf_of(admin)
    assert login(admin, ADMIN).status_code == 302
    officer = app.test_client()
    officer_before_sign_in = csrf_of(officer)
    assert login(officer, OFFICER).status_code == 302
    stranger = csrf_of(signed_in(app, AUDITOR))  # another operator's session
    anonymous = csrf_of(app.test_client())  # another browser's, signed in or not
    # The shopper is one step from the end of a deletion.
    visitor = app.test_client()
    ask(visitor, "marie@example.com", "delete")
    _, code = read_mail(outbox(app)[-1])
    assert send(visitor, "/privacy/confirm", {"code": code}, csrf_of(visitor)).status_code == 303
    sign_in_page = app.test_client()
    forms = {
        "console.login": (sign_in_page, "/console/login", {"name": ADMIN, "password": PASSWORD}),
        "console.logout": (officer, "/console/logout", {}),
        "console.kiosk_add": (admin, "/console/kiosks", {"name": "till-9", "store": "Laval 02"}),
        "console.kiosk_revoke": (admin, f"/console/kiosks/{kiosk.kiosk_id}/revoke", {}),
        "console.operator_add": (
            admin,
            "/console/operators",
            {"name": "eve", "role": "admin", "password": PASSWORD, "confirm": PASSWORD},
        ),
        "console.operator_disable": (admin, f"/console/operators/{AUDITOR}/disable", {}),
        "console.operator_unlock": (admin, "/console/operators/ursula/unlock", {}),
        "console.shopper_export": (officer, f"/console/shoppers/{marie}/export", {}),
        "console.shopper_delete": (
            officer,
            f"/console/shoppers/{marie}/delete",
            {"confirm": "yes"},
        ),
        "shopper_web.request_code": (
            visitor,
            "/privacy/request",
            {"email": "marie@example.com", "purpose": "delete"},
        ),
        "shopper_web.confirm": (visitor, "/privacy/confirm", {"code": code}),
        "shopper_web.confirm_deletion": (visitor, "/privacy/confirm/delete", {"understand": "yes"}),
    }
    posted = {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if "POST" in (rule.methods or ())
        and rule.endpoint.split(".")[0] in ("console", "shopper_web")
    }
    tally.case(posted == set(forms), f"forms not tried: {posted ^ set(forms)}")

    before = rows(app)
    mails = len(outbox(app))
    for endpoint, (browser, path, data) in forms.items():
        own = csrf_of(browser)
        # A character inside the signature (the last one may only hold padding bits).
        flipped = own[:-6] + ("A" if own[-6] != "A" else "B") + own[-5:]
        forgeries: list[tuple[str, dict[str, str] | None, dict[str, Any]]] = [
            ("no token", None, {}),
            ("empty token", {"csrf_token": ""}, {}),
            ("made-up token", {"csrf_token": "forged"}, {}),
            ("own token, signature changed", {"csrf_token": flipped}, {}),
            ("another operator's token", {"csrf_token": stranger}, {}),
            ("another browser's token", {"csrf_token": anonymous}, {}),
            (
                "another session's token in X-CSRFToken",
                None,
                {"headers": {"X-CSRFToken": stranger}},
            ),
            (
                "own token, over HTTPS from another site",
                {"csrf_token": own},
                {
                    "base_url": "https://localhost",
                    "headers": {"Referer": "https://evil.example/form"},
                },
            ),
            (
                "own token, over HTTPS without a Referer",
                {"csrf_token": own},
                {"base_url": "https://localhost"},
            ),
        ]
        if browser is admin:
            forgeries.append(
                ("the token from before sign-in", {"csrf_token": admin_before_sign_in}, {})
            )
        if browser is officer:
            forgeries.append(
                ("the token from before sign-in", {"csrf_token": officer_before_sign_in}, {})
            )
        for label, token_field, options in forgeries:
            answer = browser.post(
                path, data={**data, **(token_field or {})}, buffered=True, **options
            )
            tally.case(
                answer.status_code == 400 and "csrf_failed" in text(answer),
                f"{endpoint}, {label}: {answer.status_code}",
            )
        tally.case(rows(app) == before, f"{endpoint}: a forged form changed something")
    tally.case(len(outbox(app)) == mails, "a forged form sent a mail")
    tally.case(not signed_out(officer), "a forged sign-out signed the officer out")

    # State changes answer POST only; a cross-site GET (a link, an image) does nothing.
    adapter = app.url_map.bind("localhost")

    def methods_of(path: str) -> set[str]:
        return set(adapter.allowed_methods(path))

    for browser, path, data in forms.values():
        before = rows(app)
        for method in ("GET", "HEAD"):
            # The fields in the query and in a body: neither GET nor HEAD may do the work.
            answer = browser.open(path, method=method, query_string=data, data=data)
            expected = (200, 302) if "GET" in methods_of(path) else (405,)
            tally.case(answer.status_code in expected, f"{method} {path}: {answer.status_code}")
        tally.case(rows(app) == before, f"GET or HEAD {path}: changed something")
    tally.case(len(outbox(app)) == mails, "a GET sent a mail")
    # The forms work with their own token: it was the token that was refused.
    made = send(admin, "/console/kiosks", {"name": "till-9", "store": "Laval 02"}, csrf_of(admin))
    tally.case(made.status_code == 200, f"a real form was refused: {made.status_code}")
    done = send(visitor, "/privacy/confirm/delete", {"understand": "yes"}, csrf_of(visitor))
    tally.case(
        done.status_code == 200 and shopper_status(app, marie) == "deleted",
        f"the shopper's real form was refused: {done.status_code}",
    )
    tally.case(chain_ok(app), "the audit chain does not verify")


# ---------------------------------------------------------------- 4. sessions


@NO_FORM_LIMIT
def test_session_fixation_and_forged_cookies(
    app: Any, staff: dict[str, str], clock: Clock, tally: Tally
) -> None:
    """Session fixation, and copied, forged, tampered and expired session cookies."""
    # Fixation: a cookie set before sign-in (say, planted by someone) is not the one after.
    victim = app.test_client()
    csrf_of(victim)
    planted = victim.get_cookie("session")
    assert planted is not None
    answer = login(victim, AUDITOR)
    after = victim.get_cookie("session")
    tally.case(
        answer.status_code == 302 and after is not None and after.value != planted.value,
        "the session cookie did not change at sign-in",
    )
    planted_token = decoded(app, planted.value).get("csrf_token")
    csrf_of(victim)
    tally.case(
        cookie_data(app, victim).get("csrf_token") not in (None, planted_token),
        "the CSRF token survived sign-in",
    )
    planter = app.test_client()
    planter.set_cookie("session", planted.value)
    tally.case(signed_out(planter), "the planted cookie was signed in along with the victim")
    set_cookie = answer.headers.get("Set-Cookie", "")
    tally.case(
        "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie,
        f"cookie flags: {set_cookie}",
    )
    hours = app.extensions["facepay"].settings.session_hours
    expires = re.search(r"Expires=([^;]+)", set_cookie)
    tally.case(
        expires is not None
        and dt.datetime.strptime(expires.group(1), "%a, %d %b %Y %H:%M:%S GMT").replace(
            tzinfo=dt.UTC
        )
        <= utcnow() + dt.timedelta(hours=hours, minutes=1),
        "the cookie outlives the session",
    )
    # No open redirect after sign-in.
    for target in ("https://evil.example/", "//evil.example", "/\\evil.example"):
        browser = app.test_client()
        moved = browser.post(
            "/console/login",
            query_string={"next": target},
            data={"name": OFFICER, "password": PASSWORD, "csrf_token": csrf_of(browser)},
        )
        tally.case(
            moved.status_code == 302 and moved.headers["Location"] == "/console/",
            f"sign-in sent to {moved.headers.get('Location')}",
        )

    # Copies of a cookie stop working at sign-out, and when the operator signs in elsewhere.
    for name, page in ((AUDITOR, "/console/audit"), (OFFICER, "/console/shoppers")):
        first = signed_in(app, name)
        copy = app.test_client()
        stolen = first.get_cookie("session")
        assert stolen is not None
        copy.set_cookie("session", stolen.value)
        tally.case(copy.get(page).status_code == 200, "a copy did not work while signed in")
        send(first, "/console/logout", {}, csrf_of(first))
        tally.case(signed_out(copy), f"{name}: a copy outlived sign-out")
        tally.case(signed_out(first), f"{name}: sign-out did not sign out")
        again = signed_in(app, name)
        copy.set_cookie("session", stolen.value)
        tally.case(signed_out(copy), f"{name}: an old copy works again after a new sign-in")
        newer = signed_in(app, name)
        tally.case(signed_out(again), f"{name}: an earlier session outlived a newer one")
        tally.case(newer.get(page).status_code == 200, f"{name}: the newest session fails")

    # Forged and tampered cookies.
    auditor = signed_in(app, AUDITOR)
    good = cookie_data(app, auditor)
    real = auditor.get_cookie("session")
    assert real is not None
    payload, _, signature = real.value.rpartition(".")
    forged: dict[str, str] = {
        "unsigned": base64.urlsafe_b64encode(json.dumps(good).encode()).decode().rstrip("="),
        "signed with another secret": flask_serializer("not the secret").dumps(good),
        "admin's id, another secret": flask_serializer("x").dumps(
            {**good, "operator_id": staff[ADMIN]}
        ),
        "payload changed, signature kept": payload[:-2]
        + ("AA" if payload[-2:] != "AA" else "BB")
        + "."
        + signature,
        "signature cut off": payload,
        "empty": "",
        "garbage": "x" * 4000,
    }
    for label, value in forged.items():
        browser = app.test_client()
        browser.set_cookie("session", value)
        tally.case(signed_out(browser), f"forged cookie ({label}) was accepted")
        answer = browser.get("/console/audit")
        tally.case(redirected_to_login(answer), f"forged cookie ({label}): {answer.status_code}")
    # With the real secret key (say, leaked), but no open session of the operator named.
    edits: dict[str, dict[str, Any]] = {
        "admin's id, auditor's token": {"operator_id": staff[ADMIN]},
        "officer's id, auditor's token": {"operator_id": staff[OFFICER]},
        "unknown id": {"operator_id": str(uuid.uuid4())},
        "id as a number": {"operator_id": 1},
        "token made up": {"session_token": "A" * 43},
        "token removed": {"session_token": None},
        "token as a list": {"session_token": [good["session_token"]]},
    }
    for label, edit in edits.items():
        browser = app.test_client()
        browser.set_cookie("session", real.value)
        with browser.session_transaction() as cookie:
            for key, value in edit.items():
                if value is None:
                    cookie.pop(key, None)
                else:
                    cookie[key] = value
        tally.case(signed_out(browser), f"cookie edited ({label}) was accepted")
    for label, extra in (("role added", {"role": "admin"}), ("is_admin added", {"is_admin": True})):
        browser = app.test_client()
        browser.set_cookie("session", real.value)
        with browser.session_transaction() as cookie:
            cookie.update(extra)
        answer = browser.get("/console/operators")
        tally.case(answer.status_code == 403, f"{label}: /console/operators {answer.status_code}")
    tally.case(auditor.get("/console/audit").status_code == 200, "the real session was ended")

    # A session ends after FACEPAY_SESSION_HOURS, whatever the cookie says.
    with auditor.session_transaction() as cookie:
        cookie["login_at"] = (utcnow() + dt.timedelta(days=3650)).isoformat()
    clock.offset = dt.timedelta(hours=hours) - dt.timedelta(minutes=1)
    tally.case(auditor.get("/console/audit").status_code == 200, "a session ended too early")
    clock.offset = dt.timedelta(hours=hours, minutes=1)
    tally.case(signed_out(auditor), "a session outlived FACEPAY_SESSION_HOURS")
    clock.offset = dt.timedelta(0)
    tally.case(signed_out(auditor), "an expired session came back")
    tally.case(chain_ok(app), "the audit chain does not verify")


# ---------------------------------------------------------------- 5. roles

# Every console URL and method: who may use it (None: anyone, signed in or not).
ROUTES: dict[tuple[str, str], tuple[str, frozenset[str] | None]] = {
    ("console.login", "GET"): ("/console/login", None),
    ("console.login", "POST"): ("/console/login", None),
    ("console.logout", "POST"): ("/console/logout", None),
    ("console.home", "GET"): ("/console/", ALL_ROLES),
    ("console.audit_log", "GET"): ("/console/audit?page=2", frozenset({AUDITOR})),
    ("console.consents", "GET"): ("/console/consents", frozenset({AUDITOR})),
    ("console.payments", "GET"): ("/console/payments", frozenset({AUDITOR})),
    ("console.kiosks", "GET"): ("/console/kiosks", frozenset({AUDITOR, ADMIN})),
    ("console.kiosk_add", "POST"): ("/console/kiosks", frozenset({ADMIN})),
    ("console.kiosk_revoke", "POST"): ("/console/kiosks/{kiosk}/revoke", frozenset({ADMIN})),
    ("console.operators", "GET"): ("/console/operators", frozenset({ADMIN})),
    ("console.operator_add", "POST"): ("/console/operators", frozenset({ADMIN})),
    ("console.operator_disable", "POST"): (
        "/console/operators/{victim}/disable",
        frozenset({ADMIN}),
    ),
    ("console.operator_unlock", "POST"): ("/console/operators/{locked}/unlock", frozenset({ADMIN})),
    ("console.shoppers", "GET"): ("/console/shoppers?q={email}", frozenset({OFFICER})),
    ("console.shopper", "GET"): ("/console/shoppers/{shopper}", frozenset({OFFICER})),
    ("console.shopper_export", "POST"): (
        "/console/shoppers/{shopper}/export",
        frozenset({OFFICER}),
    ),
    ("console.shopper_delete", "GET"): ("/console/shoppers/{shopper}/delete", frozenset({OFFICER})),
    ("console.shopper_delete", "POST"): ("/console/shoppers/{doomed}/delete", frozenset({OFFICER})),
    ("console.deletion", "GET"): ("/console/deletions/{deletion}", frozenset({OFFICER})),
}
FORM_DATA = {
    "console.kiosk_add": {"name": "till-9", "store": "Laval 02"},
    "console.operator_add": {
        "name": "mallory",
        "role": "admin",
        "password": PASSWORD,
        "confirm": PASSWORD,
    },
    "console.shopper_delete": {"confirm": "yes"},
}


@NO_FORM_LIMIT
def test_privilege_escalation_between_roles(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, staff: dict[str, str], tally: Tally
) -> None:
    """Privilege escalation between roles: every console URL and method, for every role."""
    people = [
        ("Marie Tremblay", "marie@example.com"),
        ("Paul Roy", "paul@example.com"),
        ("Zoe Roy", "zoe@example.com"),
    ]
    (shopper, _), (gone, _), (doomed, _) = enroll_people(client, kiosk, people, seed=54)
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        spare = kiosks.add_kiosk(session, svc.keys.audit_key, name="till-8", store="Laval 02")
    new_operator(app, "victor", "auditor")
    new_operator(app, "ursula", "auditor")
    with svc.sessions() as session:
        locked_until = utcnow() + dt.timedelta(hours=1)
        session.execute(
            update(Operator)
            .where(Operator.name == "ursula")
            .values(failed_logins=9, locked_until=locked_until)
        )
        session.commit()
    officer = signed_in(app, OFFICER)
    removed = send(
        officer, f"/console/shoppers/{gone}/delete", {"confirm": "yes"}, csrf_of(officer)
    )
    ids = {
        "email": "marie@example.com",
        "shopper": shopper,
        "doomed": doomed,
        "deletion": removed.headers["Location"].rsplit("/", 1)[-1],
        "kiosk": spare.kiosk_id,
        "victim": "victor",
        "locked": "ursula",
    }
    victor = signed_in(app, "victor")  # an open session, for when the account is disabled
    browsers = {name: signed_in(app, name) for name in ROLE_OF}
    officer = browsers[OFFICER]
    tokens = {name: csrf_of(browser) for name, browser in browsers.items()}
    anonymous = app.test_client()
    anonymous_token = csrf_of(anonymous)

    found = {
        (rule.endpoint, method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("console.")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    tally.case(found == set(ROUTES), f"routes missing from the matrix: {found ^ set(ROUTES)}")
    guarded = {key: value for key, value in ROUTES.items() if value[1] is not None}

    # Pages: allowed roles get 200, the others 403, nobody signed in the sign-in page.
    for (_endpoint, method), (template, allowed) in guarded.items():
        if method != "GET":
            continue
        url = template.format(**ids)
        for name, browser in browsers.items():
            status = browser.get(url).status_code
            expected = 200 if allowed and name in allowed else 403
            tally.case(status == expected, f"GET {url} as {name}: {status}")
        answer = app.test_client().get(url)
        tally.case(redirected_to_login(answer), f"GET {url} signed out: {answer.status_code}")

    # Actions, with a valid CSRF token, by every role that may not: 403 and nothing changed.
    before = rows(app, "audit_log")
    head = audit_head(app)
    refused = 0
    for (endpoint, method), (template, allowed) in guarded.items():
        if method != "POST":
            continue
        url = template.format(**ids)
        data = FORM_DATA.get(endpoint, {})
        for name, browser in browsers.items():
            if allowed and name in allowed:
                continue
            answer = send(browser, url, data, tokens[name])
            refused += 1
            tally.case(answer.status_code == 403, f"POST {url} as {name}: {answer.status_code}")
        answer = send(anonymous, url, data, anonymous_token)
        tally.case(redirected_to_login(answer), f"POST {url} signed out: {answer.status_code}")
    tally.case(rows(app, "audit_log") == before, "a refused action changed something")
    new_events = audit_since(app, head)
    tally.case(
        len(new_events) == refused and {e["kind"] for e in new_events} == {"console.forbidden"},
        "refused actions were not each recorded as refused",
    )
    # Other methods.
    for url in sorted({template.format(**ids) for template, _ in ROUTES.values()}):
        for method in ("PUT", "DELETE", "PATCH"):
            for browser in (browsers[ADMIN], app.test_client()):
                status = browser.open(url, method=method).status_code
                tally.case(status == 405, f"{method} {url}: {status}")

    # The roles that may, may: each action does what it says.
    def effect(endpoint: str) -> bool:
        with svc.sessions() as session:
            if endpoint == "console.kiosk_add":
                return session.scalar(select(func.count()).select_from(Kiosk)) == 3
            if endpoint == "console.kiosk_revoke":
                return session.get(Kiosk, spare.kiosk_id).status == "revoked"  # type: ignore[union-attr]
            if endpoint == "console.operator_add":
                made = operators.by_name(session, "mallory")
                return made is not None and made.role == "admin"
            if endpoint == "console.operator_disable":
                return operators.by_name(session, "victor").disabled_at is not None  # type: ignore[union-attr]
            if endpoint == "console.operator_unlock":
                return operators.by_name(session, "ursula").locked_until is None  # type: ignore[union-attr]
            if endpoint == "console.shopper_delete":
                return session.get(Shopper, doomed).status == "deleted"  # type: ignore[union-attr]
        return True

    for (endpoint, method), (template, allowed) in guarded.items():
        if method != "POST" or not allowed:
            continue
        url = template.format(**ids)
        for name in allowed:
            answer = send(browsers[name], url, FORM_DATA.get(endpoint, {}), tokens[name])
            tally.case(
                answer.status_code in (200, 302) and effect(endpoint),
                f"POST {url} as {name}: {answer.status_code}",
            )
    exported = send(officer, f"/console/shoppers/{shopper}/export", {}, tokens[OFFICER])
    tally.case(
        exported.mimetype == "application/json" and shopper in text(exported), "export failed"
    )

    # A disabled operator's open session ends at its next request.
    tally.case(signed_out(victor), "a disabled operator's session still works")
    # A role changed in the database counts from the next request, both ways.
    auditor = browsers[AUDITOR]
    for role, page, expected in (
        ("admin", "/console/operators", 200),
        ("auditor", "/console/operators", 403),
        ("privacy_officer", "/console/shoppers", 200),
        ("privacy_officer", "/console/audit", 403),
        ("auditor", "/console/shoppers", 403),
    ):
        with svc.sessions() as session:
            session.execute(update(Operator).where(Operator.name == AUDITOR).values(role=role))
            session.commit()
        status = auditor.get(page).status_code
        tally.case(status == expected, f"{AUDITOR} as {role}: {page} {status}")
    with svc.sessions() as session:
        session.execute(update(Operator).where(Operator.name == ADMIN).values(role="auditor"))
        session.commit()
    demoted = send(
        browsers[ADMIN],
        "/console/operators",
        {**FORM_DATA["console.operator_add"], "name": "mallory2"},
        tokens[ADMIN],
    )
    tally.case(
        demoted.status_code == 403 and operator_row(app, "mallory2") is None,
        f"a demoted admin still adds operators: {demoted.status_code}",
    )
    with svc.sessions() as session:
        session.execute(update(Operator).where(Operator.name == ADMIN).values(role="admin"))
        session.commit()
    # No made-up role, and not oneself.
    for role in ("superuser", "Admin", "admin ", "admin,auditor", "", "root"):
        fields = {**FORM_DATA["console.operator_add"], "name": "rogue", "role": role}
        answer = send(browsers[ADMIN], "/console/operators", fields, tokens[ADMIN])
        tally.case(
            answer.status_code == 302 and operator_row(app, "rogue") is None,
            f"operator with role {role!r} added",
        )
    send(browsers[ADMIN], f"/console/operators/{ADMIN}/disable", {}, tokens[ADMIN])
    admin_row = operator_row(app, ADMIN)
    tally.case(admin_row is not None and admin_row.disabled_at is None, "an admin disabled self")

    # The public routes: the sign-in page and sign-out.
    for name, browser in browsers.items():
        answer = browser.get("/console/login")
        tally.case(
            answer.status_code == 302 and answer.headers["Location"] == "/console/",
            f"sign-in page as {name}",
        )
    tally.case(anonymous.get("/console/login").status_code == 200, "sign-in page signed out")
    answer = send(anonymous, "/console/logout", {}, anonymous_token)
    tally.case(redirected_to_login(answer), f"sign-out signed out: {answer.status_code}")
    for name, browser in browsers.items():
        answer = send(browser, "/console/logout", {}, tokens[name])
        tally.case(redirected_to_login(answer) and signed_out(browser), f"sign-out as {name}")
        answer = send(
            browser, "/console/login", {"name": name, "password": PASSWORD}, csrf_of(browser)
        )
        tally.case(answer.status_code == 302, f"sign-in as {name}: {answer.status_code}")
    tally.case(chain_ok(app), "the audit chain does not verify")


# ---------------------------------------------------------------- 6. sign-in guessing, floods


@NO_FORM_LIMIT
def test_password_guessing(app: Any, staff: dict[str, str], clock: Clock, tally: Tally) -> None:
    """Brute-force login: password guessing at an account (lockout), one answer for all."""
    settings = app.extensions["facepay"].settings
    tries, lockout = settings.login_tries, settings.lockout_s
    guesser = app.test_client()
    guesser_token = csrf_of(guesser)

    def attempt(name: str, password: str, browser: FlaskClient | None = None) -> Any:
        browser = browser or guesser
        tok = guesser_token if browser is guesser else csrf_of(browser)
        return send(browser, "/console/login", {"name": name, "password": password}, tok)

    guesses = [f"guess number {n}" for n in range(tries)]
    for number, guess in enumerate(guesses[:-1], start=1):
        answer = attempt(ADMIN, guess)
        row = operator_row(app, ADMIN)
        tally.case(
            answer.status_code == 401 and row is not None and operators.status_of(row) == "active",
            f"guess {number}: {answer.status_code}",
        )
    answer = attempt(ADMIN, guesses[-1])
    row = operator_row(app, ADMIN)
    tally.case(
        answer.status_code == 401 and row is not None and operators.status_of(row) == "locked",
        f"not locked after {tries} wrong passwords",
    )
    elsewhere = app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "198.51.100.23"
    for browser in (guesser, elsewhere):
        answer = attempt(ADMIN, PASSWORD, browser)
        tally.case(
            answer.status_code == 401 and signed_out(browser),
            f"the right password while locked: {answer.status_code}",
        )
    clock.offset = dt.timedelta(seconds=lockout - 5)
    tally.case(attempt(ADMIN, PASSWORD).status_code == 401, "the lockout ended early")
    clock.offset = dt.timedelta(seconds=lockout + 1)
    answer = attempt(ADMIN, PASSWORD)
    tally.case(answer.status_code == 302, f"the lockout never ends: {answer.status_code}")
    send(guesser, "/console/logout", {}, csrf_of(guesser))
    clock.offset = dt.timedelta(0)
    guesser_token = csrf_of(guesser)
    # Near misses of the right password.
    for near in (
        PASSWORD.upper(),
        PASSWORD + " ",
        " " + PASSWORD,
        PASSWORD[:-1],
        PASSWORD + "\x00",
        PASSWORD.replace(" ", ""),
    ):
        answer = attempt(OFFICER, near)
        tally.case(answer.status_code == 401, f"near miss {near!r}: {answer.status_code}")

    # One answer for every refusal: unknown name, wrong password, locked, disabled.
    svc = app.extensions["facepay"]
    new_operator(app, "dora", "auditor")
    new_operator(app, "wanda", "auditor")
    with transaction(svc.sessions) as session:
        operators.disable(session, svc.keys.audit_key, "dora", actor="test")
    for _ in range(tries):
        attempt(AUDITOR, "wrong again and again")
    refusals = {
        "unknown name": ("nobody", PASSWORD),
        "malformed name": ("' OR 1=1 --", PASSWORD),
        "wrong password": ("wanda", "not the password"),
        "locked, right password": (AUDITOR, PASSWORD),
        "locked, wrong password": (AUDITOR, "not the password"),
        "disabled, right password": ("dora", PASSWORD),
        "disabled, wrong password": ("dora", "not the password"),
    }
    seen: dict[str, tuple[int, str, bool]] = {}
    for label, (name, password) in refusals.items():
        browser = app.test_client()
        answer = attempt(name, password, browser)
        body = CSRF_FIELD.sub("csrf", text(answer))
        body = re.sub(r'id="name" value="[^"]*"', 'id="name" value="NAME"', body)
        seen[label] = (answer.status_code, body, "Set-Cookie" in answer.headers)
    first = next(iter(seen.values()))
    for label, shape in seen.items():
        tally.case(shape == first and shape[0] == 401, f"{label} answers differently")
    history = json.dumps(events(app))
    tally.case(
        not any(guess in history for guess in [*guesses, "not the password", PASSWORD]),
        "a password reached the audit log",
    )
    tally.case("nobody" not in history, "an unknown name reached the audit log")
    tally.case(chain_ok(app), "the audit chain does not verify")


@pytest.mark.parametrize(
    "proxies",
    [
        pytest.param(1, marks=pytest.mark.settings(trusted_proxies=1), id="behind-proxy"),
        pytest.param(0, marks=pytest.mark.settings(trusted_proxies=0), id="direct"),
    ],
)
def test_floods_from_one_address(
    app: Any,
    client: FlaskClient,
    kiosk: SigningKiosk,
    staff: dict[str, str],
    tally: Tally,
    proxies: int,
) -> None:
    """Brute-force login: floods of sign-ins, code requests and code guesses from one address."""
    limit = app.extensions["facepay"].settings.form_rate_limit
    assert limit.startswith("20/minute"), limit
    per_minute = 20
    flood = 250 if LONG else 40
    enroll_people(client, kiosk, [("Marie Tremblay", "marie@example.com")], seed=55)

    def from_address(address: str) -> tuple[FlaskClient, dict[str, str]]:
        """A browser at `address`: told by the proxy (X-Forwarded-For), or its own."""
        browser = app.test_client()
        if proxies:
            return browser, {"X-Forwarded-For": address}
        browser.environ_base["REMOTE_ADDR"] = address
        return browser, {}

    def spoofed(headers: dict[str, str], number: int) -> dict[str, str]:
        """What the flooder adds to look like many addresses: in front of the proxy's value
        (behind a proxy), or the whole header (direct)."""
        fake = f"192.0.2.{number % 250 + 1}"
        if proxies:
            return {"X-Forwarded-For": f"{fake}, {headers['X-Forwarded-For']}"}
        return {"X-Forwarded-For": fake}

    def limited(answer: Any, what: str) -> bool:
        ok = (
            answer.status_code == 429
            and int(answer.headers.get("Retry-After", "0")) >= 1
            and answer.headers.get("Content-Security-Policy") == CONTENT_SECURITY_POLICY
        )
        return tally.case(ok, f"{what}: {answer.status_code} {dict(answer.headers)}")

    # Sign-in attempts from one address.
    flooder, headers = from_address("203.0.113.7")
    tok = csrf_of(flooder)
    codes_before = len(code_rows(app))
    for number in range(flood):
        fields = {"name": f"guess{number}", "password": "not it"}
        answer = send(flooder, "/console/login", fields, tok, headers=spoofed(headers, number))
        if number < per_minute:
            tally.case(answer.status_code == 401, f"sign-in {number}: {answer.status_code}")
        else:
            limited(answer, f"sign-in {number}")
    answer = send(
        flooder, "/console/login", {"name": ADMIN, "password": PASSWORD}, tok, headers=headers
    )
    limited(answer, "the right password from the flooding address")
    tally.case(signed_out(flooder), "the flooder signed in")
    other, other_headers = from_address("198.51.100.9")
    answer = send(
        other,
        "/console/login",
        {"name": OFFICER, "password": PASSWORD},
        csrf_of(other),
        headers=other_headers,
    )
    tally.case(answer.status_code == 302, f"another address was limited: {answer.status_code}")

    # Code requests from one address, for many addresses.
    asker, headers = from_address("203.0.113.8")
    tok = csrf_of(asker)
    for number in range(flood):
        fields = {"email": f"someone{number}@example.com", "purpose": "export"}
        answer = send(asker, "/privacy/request", fields, tok, headers=spoofed(headers, number))
        if number < per_minute:
            tally.case(answer.status_code == 303, f"code request {number}: {answer.status_code}")
        else:
            limited(answer, f"code request {number}")
    tally.case(len(code_rows(app)) == codes_before + per_minute, "a limited request made a code")
    # Code guesses from one address.
    guesser, headers = from_address("203.0.113.9")
    tok = csrf_of(guesser)
    fields = {"email": "marie@example.com", "purpose": "export"}
    asked = send(guesser, "/privacy/request", fields, tok, headers=headers)
    assert asked.status_code == 303, text(asked)
    for number in range(flood):
        answer = send(
            guesser,
            "/privacy/confirm",
            {"code": f"x{number}"},
            tok,
            headers=spoofed(headers, number),
        )
        if number < per_minute:  # the allowance is per form: asking used the other one
            tally.case(answer.status_code == 400, f"guess {number}: {answer.status_code}")
        else:
            limited(answer, f"guess {number}")
    shopper, headers = from_address("198.51.100.10")
    answer = send(
        shopper,
        "/privacy/request",
        {"email": "marie@example.com", "purpose": "export"},
        csrf_of(shopper),
        headers=headers,
    )
    tally.case(answer.status_code == 303, f"another address was limited: {answer.status_code}")
    tally.case(client.get("/healthz").status_code == 200, "the server stopped answering")


# ---------------------------------------------------------------- 7. the one-time code


@pytest.mark.settings(form_rate_limit="", code_tries=4)
def test_code_expiry_and_attempts(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, clock: Clock, tally: Tally
) -> None:
    """One-time code: expiry (FACEPAY_CODE_TTL_S) and attempts (FACEPAY_CODE_TRIES)."""
    [(marie, _)] = enroll_people(client, kiosk, [("Marie Tremblay", "marie@example.com")], 56)
    settings = app.extensions["facepay"].settings
    tries, ttl = settings.code_tries, settings.code_ttl_s
    assert tries == 4

    def new_request(purpose: str) -> tuple[FlaskClient, str, str]:
        browser = app.test_client()
        ask(browser, "marie@example.com", purpose)
        _, code = read_mail(outbox(app)[-1])
        return browser, code, csrf_of(browser)

    # Wrong guesses, of every shape, until the code dies; then even the right one fails.
    browser, code, tok = new_request("export")
    kept = browser.get_cookie("session")
    assert kept is not None
    shapes = [other_code(code), "", "abcdef", code[:5], code + "0", " ".join("9" * 6)]
    for number, guess in enumerate(shapes[: tries - 1], start=1):
        answer = send(browser, "/privacy/confirm", {"code": guess}, tok)
        tally.case(
            answer.status_code == 400
            and error_code(answer) == "wrong_code"
            and f"{tries - number} tr" in text(answer),
            f"wrong guess {number}: {error_code(answer)}",
        )
    answer = send(browser, "/privacy/confirm", {"code": shapes[tries - 1]}, tok)
    tally.case(error_code(answer) == "code_exhausted", f"last guess: {error_code(answer)}")
    browser.set_cookie("session", kept.value)
    answer = send(browser, "/privacy/confirm", {"code": code}, tok)
    tally.case(
        answer.status_code == 400 and error_code(answer) == "code_exhausted",
        f"the right code after {tries} wrong: {error_code(answer)}",
    )
    tally.case(code_rows(app)[-1].attempts == tries, "wrong guesses were not all counted")

    # Expiry: a code works until FACEPAY_CODE_TTL_S, not after.
    browser, code, tok = new_request("export")
    clock.offset = dt.timedelta(seconds=ttl + 1)
    answer = send(browser, "/privacy/confirm", {"code": code}, tok)
    tally.case(error_code(answer) == "code_expired", f"an expired code: {error_code(answer)}")
    clock.offset = dt.timedelta(0)
    browser, code, tok = new_request("export")
    clock.offset = dt.timedelta(seconds=ttl - 5)
    answer = send(browser, "/privacy/confirm", {"code": code}, tok)
    tally.case(answer.mimetype == "application/json", f"a code just in time: {answer.status_code}")
    clock.offset = dt.timedelta(0)
    # A deletion whose code expires between the code and the final confirmation.
    browser, code, tok = new_request("delete")
    assert send(browser, "/privacy/confirm", {"code": code}, tok).status_code == 303
    clock.offset = dt.timedelta(seconds=ttl + 1)
    late = send(browser, "/privacy/confirm/delete", {"understand": "yes"}, tok)
    tally.case(
        error_code(late) == "code_expired" and shopper_status(app, marie) == "active",
        f"deleted with an expired code: {error_code(late)}",
    )
    clock.offset = dt.timedelta(0)
    tally.case(chain_ok(app), "the audit chain does not verify")


@NO_FORM_LIMIT
def test_code_used_once(app: Any, client: FlaskClient, kiosk: SigningKiosk, tally: Tally) -> None:
    """One-time code: a code works once (replayed cookies, replayed forms)."""
    [(marie, _)] = enroll_people(client, kiosk, [("Marie Tremblay", "marie@example.com")], 57)
    browser = app.test_client()
    ask(browser, "marie@example.com", "export")
    _, code = read_mail(outbox(app)[-1])
    tok = csrf_of(browser)
    kept = browser.get_cookie("session")
    assert kept is not None
    first = send(browser, "/privacy/confirm", {"code": code}, tok)
    tally.case(first.mimetype == "application/json", f"the code did not work: {first.status_code}")
    for attempt in range(3):
        browser.set_cookie("session", kept.value)
        again = send(browser, "/privacy/confirm", {"code": code}, tok)
        tally.case(
            again.status_code == 400 and error_code(again) == "code_used",
            f"export replay {attempt}: {error_code(again)}",
        )
    # A deletion: the code, the confirmation, then both replayed.
    browser = app.test_client()
    ask(browser, "marie@example.com", "delete")
    _, code = read_mail(outbox(app)[-1])
    tok = csrf_of(browser)
    unverified = browser.get_cookie("session")
    assert send(browser, "/privacy/confirm", {"code": code}, tok).status_code == 303
    verified = browser.get_cookie("session")
    assert unverified is not None and verified is not None
    done = send(browser, "/privacy/confirm/delete", {"understand": "yes"}, tok)
    tally.case(done.status_code == 200 and shopper_status(app, marie) == "deleted", "not deleted")
    receipts = counts(app)["deletions"]
    for label, cookie, path, data in (
        ("the confirmation", verified, "/privacy/confirm/delete", {"understand": "yes"}),
        ("the code", unverified, "/privacy/confirm", {"code": code}),
    ):
        browser.set_cookie("session", cookie.value)
        again = send(browser, path, data, tok)
        tally.case(
            again.status_code == 400 and error_code(again) == "code_used",
            f"{label} replayed: {again.status_code} {error_code(again)}",
        )
    tally.case(counts(app)["deletions"] == receipts, "a replay made another deletion")
    tally.case(chain_ok(app), "the audit chain does not verify")


@NO_FORM_LIMIT
def test_code_user_enumeration(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, tally: Tally
) -> None:
    """One-time code: no user enumeration (a shopper's address or not, the same answers)."""
    people = [("Marie Tremblay", "marie@example.com"), ("Paul Roy", "paul@example.com")]
    (_, _), (paul, _) = enroll_people(client, kiosk, people, seed=58)
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        delete_shopper(session, shopper_id=paul, keys=svc.keys, via="kiosk", actor="test")
    finish_deletions(svc, [paul])
    addresses = {
        "a shopper's": "marie@example.com",
        "nobody's": "mario@example.com",
        "a deleted shopper's": "paul@example.com",
    }

    def shape_of(browser: FlaskClient) -> dict[str, Any]:
        saved = cookie_data(app, browser)
        pending = saved.get("privacy_request", {})
        return {
            "keys": sorted(saved),
            "pending": {name: (type(v).__name__, len(str(v))) for name, v in pending.items()},
        }

    def strip(response: Any, address: str) -> str:
        return CSRF_FIELD.sub("csrf", text(response)).replace(address, "ADDRESS")

    for purpose in ("delete", "export"):
        seen: dict[str, tuple[Any, ...]] = {}
        mails: dict[str, int] = {}
        for label, address in addresses.items():
            before = len(outbox(app))
            browser = app.test_client()
            tok = csrf_of(browser)
            asked = send(browser, "/privacy/request", {"email": address, "purpose": purpose}, tok)
            page = browser.get("/privacy/confirm")
            wrong = send(browser, "/privacy/confirm", {"code": "abcdef"}, tok)
            seen[label] = (
                asked.status_code,
                asked.headers.get("Location"),
                asked.get_data(),
                shape_of(browser),
                page.status_code,
                strip(page, address),
                wrong.status_code,
                strip(wrong, address),
            )
            mails[label] = len(outbox(app)) - before
        reference = seen["a shopper's"]
        for label, shape in seen.items():
            differs = [n for n, (a, b) in enumerate(zip(shape, reference, strict=True)) if a != b]
            tally.case(not differs, f"{purpose}: {label} address answers differently ({differs})")
        tally.case(
            mails == {"a shopper's": 1, "nobody's": 0, "a deleted shopper's": 0},
            f"{purpose}: mails sent {mails}",
        )
    # Over the hourly limit, the answers are the same again, for both.
    over: dict[str, tuple[Any, ...]] = {}
    for label, address in addresses.items():
        browser = app.test_client()
        tok = csrf_of(browser)
        for _ in range(6):
            asked = send(browser, "/privacy/request", {"email": address, "purpose": "export"}, tok)
        wrong = send(browser, "/privacy/confirm", {"code": "abcdef"}, tok)
        over[label] = (
            asked.status_code,
            shape_of(browser),
            wrong.status_code,
            strip(wrong, address),
        )
    for label, shape in over.items():
        tally.case(shape == over["a shopper's"], f"over the limit: {label} answers differently")
    # A badly typed address: the same refusal either way.
    for address in ("marie@example", "mario@example"):
        browser = app.test_client()
        answer = send(
            browser, "/privacy/request", {"email": address, "purpose": "delete"}, csrf_of(browser)
        )
        tally.case(error_code(answer) == "invalid_email", f"{address}: {error_code(answer)}")
    tally.case(chain_ok(app), "the audit chain does not verify")


@NO_FORM_LIMIT
def test_code_limits_per_address(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, clock: Clock, tally: Tally
) -> None:
    """One-time code: the limits per address (codes per hour, wrong guesses per day)."""
    from server.shopper_web.service import CODES_PER_HOUR, WRONG_GUESSES_PER_DAY

    people = [("Marie Tremblay", "marie@example.com"), ("Paul Roy", "paul@example.com")]
    enroll_people(client, kiosk, people, seed=59)
    browser = app.test_client()
    tok = csrf_of(browser)

    def request_code(address: str) -> tuple[int, int]:
        """(new codes, new mails) for one request."""
        codes, mails = len(code_rows(app)), len(outbox(app))
        answer = send(browser, "/privacy/request", {"email": address, "purpose": "export"}, tok)
        assert answer.status_code == 303, text(answer)
        return len(code_rows(app)) - codes, len(outbox(app)) - mails

    # Codes per hour, per address (a shopper's or not), from any number of browsers.
    for address, mailed in (("marie@example.com", 1), ("nobody@example.com", 0)):
        for number in range(CODES_PER_HOUR):
            made = request_code(address)
            tally.case(made == (1, mailed), f"{address} code {number}: {made}")
        for number in range(3):
            made = request_code(address)
            tally.case(made == (0, 0), f"{address} over the hourly limit ({number}): {made}")
        answer = send(browser, "/privacy/confirm", {"code": read_mail(outbox(app)[-1])[1]}, tok)
        tally.case(error_code(answer) == "no_request", f"over the limit: {error_code(answer)}")
    clock.offset = dt.timedelta(minutes=61)
    tally.case(request_code("marie@example.com") == (1, 1), "the hourly limit never ends")
    clock.offset = dt.timedelta(0)

    # Wrong guesses per day, per address: then no more codes, for a day.
    guessed = 0
    while guessed < WRONG_GUESSES_PER_DAY:
        made = request_code("paul@example.com")
        assert made == (1, 1)
        _, code = read_mail(outbox(app)[-1])
        while guessed < WRONG_GUESSES_PER_DAY:
            answer = send(browser, "/privacy/confirm", {"code": other_code(code)}, tok)
            guessed += 1
            if error_code(answer) != "wrong_code":
                break
    for number in range(3):
        made = request_code("paul@example.com")
        tally.case(made == (0, 0), f"a code after {guessed} wrong guesses ({number}): {made}")
    clock.offset = dt.timedelta(hours=2)
    tally.case(request_code("paul@example.com") == (0, 0), "the daily cap ended within hours")
    clock.offset = dt.timedelta(hours=25)
    tally.case(request_code("paul@example.com") == (1, 1), "the daily cap never ends")
    clock.offset = dt.timedelta(0)
    refused = [e["data"]["reason"] for e in events(app, "privacy.code_refused")]
    tally.case(
        refused.count("rate_limited") == 6 and refused.count("too_many_guesses") == 4,
        f"refusals recorded: {refused}",
    )
    tally.case(chain_ok(app), "the audit chain does not verify")


@NO_FORM_LIMIT
def test_code_secrecy_and_binding(
    app: Any,
    client: FlaskClient,
    kiosk: SigningKiosk,
    tally: Tally,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One-time code: never logged or kept, and good only for its own request."""
    caplog.set_level(logging.DEBUG)
    people = [("Marie Tremblay", "marie@example.com"), ("Paul Roy", "paul@example.com")]
    (marie, _), (paul, _) = enroll_people(client, kiosk, people, seed=60)
    codes: dict[str, str] = {}
    browsers: dict[str, FlaskClient] = {}
    for address, purpose in (("marie@example.com", "delete"), ("paul@example.com", "export")):
        while True:  # two different codes (they collide once in a million)
            browser = app.test_client()
            ask(browser, address, purpose)
            _, code = read_mail(outbox(app)[-1])
            if code not in codes.values():
                break
        codes[address], browsers[address] = code, browser
    marie_browser, paul_browser = browsers["marie@example.com"], browsers["paul@example.com"]
    marie_code, paul_code = codes["marie@example.com"], codes["paul@example.com"]
    tokens = {address: csrf_of(browser) for address, browser in browsers.items()}

    # Each other's codes.
    for browser, address, code in (
        (marie_browser, "marie@example.com", paul_code),
        (paul_browser, "paul@example.com", marie_code),
    ):
        answer = send(browser, "/privacy/confirm", {"code": code}, tokens[address])
        tally.case(error_code(answer) == "wrong_code", f"another's code: {error_code(answer)}")
    # Cookies edited with the real secret key (leaked, say): another request's id, another
    # request's sealed address, another purpose, "verified" without the code.
    mine = cookie_data(app, marie_browser)["privacy_request"]
    theirs = cookie_data(app, paul_browser)["privacy_request"]
    edits = {
        "another request's id": {**mine, "id": theirs["id"]},
        "another request's address": {**mine, "email": theirs["email"]},
        "another purpose": {**mine, "purpose": "export"},
        "the other request, re-purposed": {**theirs, "purpose": "delete"},
    }
    forged_proofs = {
        "marked verified": {**mine, "verified": True},
        "marked verified, as text": {**mine, "verified": "yes"},
        "the other request, marked verified": {**theirs, "purpose": "delete", "verified": True},
    }
    for label, pending in {**edits, **forged_proofs}.items():
        browser = app.test_client()
        browser.set_cookie("session", marie_browser.get_cookie("session").value)  # type: ignore[union-attr]
        with browser.session_transaction() as cookie:
            cookie["privacy_request"] = pending
        tok = csrf_of(browser)
        statuses = []
        if label in edits:  # the right code for the request the cookie claims
            code = marie_code if pending["purpose"] == "delete" else paul_code
            confirmed = send(browser, "/privacy/confirm", {"code": code}, tok)
            statuses.append((confirmed.status_code, error_code(confirmed)))
        finished = send(browser, "/privacy/confirm/delete", {"understand": "yes"}, tok)
        statuses.append((finished.status_code, error_code(finished)))
        tally.case(
            all(status == 400 for status, _ in statuses)
            and shopper_status(app, marie) == "active"
            and shopper_status(app, paul) == "active",
            f"{label}: {statuses}",
        )
    # The rightful requests still work.
    right = send(
        marie_browser, "/privacy/confirm", {"code": marie_code}, tokens["marie@example.com"]
    )
    session_text = json.dumps(cookie_data(app, marie_browser))
    done = send(
        marie_browser, "/privacy/confirm/delete", {"understand": "yes"}, tokens["marie@example.com"]
    )
    tally.case(
        right.status_code == 303
        and done.status_code == 200
        and shopper_status(app, marie) == "deleted",
        f"the rightful deletion: {right.status_code} {done.status_code}",
    )
    exported = send(
        paul_browser, "/privacy/confirm", {"code": paul_code}, tokens["paul@example.com"]
    )
    tally.case(exported.mimetype == "application/json", "the rightful export failed")

    # Where the codes and addresses never are.
    records = caplog.records
    for address, code in codes.items():
        logged = [r.getMessage() for r in records if standalone(code, r.getMessage())]
        tally.case(not logged, f"a code was logged: {logged[:1]}")
        tally.case(not any(address in r.getMessage() for r in records), "an address was logged")
        history = json.dumps(events(app))
        tally.case(not standalone(code, history), "a code reached the audit chain")
        tally.case(address not in history, "an address reached the audit chain")
        tally.case(
            not standalone(code, session_text) and address not in session_text,
            "the session cookie shows a code or an address",
        )
        with app.extensions["facepay"].sessions() as session:
            kept = [
                str(value)
                for row in session.execute(select(OneTimeCode.__table__))
                for value in row
                if isinstance(value, str)
            ]
        tally.case(
            not any(standalone(code, v) or address in v for v in kept), "a code was kept in clear"
        )
    tally.case(chain_ok(app), "the audit chain does not verify")
