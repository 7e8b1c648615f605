"""The operator console in Debian's headless Chromium (Selenium), against a real server process
on SQLite and on PostgreSQL: an auditor signs in and reads the audit log and its verification
status; a privacy officer finds an enrolled shopper by email and deletes them, with the
confirmation step, and sees the receipt; the kiosk then declines the face. Screenshots go to
tests/artifacts/console/ (FACEPAY_TEST_ARTIFACTS moves it).

The test fails, not skips, when CI=true and Chromium, chromedriver or Selenium is missing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.audit import service as audit
from server.db import transaction
from server.operators import service as operators
from server.shoppers.models import Shopper
from tests.conftest import REPO
from tests.support.browser import headless_chromium
from tests.support.kiosk import enrollment_payload
from tests.support.payments import SyntheticFace, new_key, payment_payload
from tests.support.processes import (
    base_env,
    free_port,
    http,
    register_kiosk_http,
    server_process,
    signed_call,
)

ARTIFACTS = Path(os.environ.get("FACEPAY_TEST_ARTIFACTS", REPO / "tests" / "artifacts")) / "console"
PASSWORD = "correct horse battery staple"
EMAIL = "marie@example.com"


@pytest.fixture
def browser() -> Iterator[Any]:
    chrome = headless_chromium(1280, 900)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture
def shots(database_url: str) -> Path:
    """Where this run's screenshots go: ARTIFACTS/<database>-<step>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    prefix = database_url.split(":", 1)[0].split("+", 1)[0]
    for old in ARTIFACTS.glob(f"{prefix}-*.png"):
        old.unlink()
    return ARTIFACTS / prefix


class Console:
    """The pages as an operator uses them: through the browser only."""

    def __init__(self, browser: Any, base: str, shots: Path) -> None:
        self.browser, self.base, self.shots = browser, base, shots

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.browser, 15).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)),
            message=f"waiting for {css}",
        )

    def link(self, words: str) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.browser, 15).until(
            expected_conditions.element_to_be_clickable((By.LINK_TEXT, words)),
            message=f"waiting for a link {words!r}",
        )

    def text(self) -> str:
        return str(self.find("body").text)

    def shot(self, name: str) -> None:
        assert self.browser.save_screenshot(f"{self.shots}-{name}.png")

    def sign_in(self, name: str) -> None:
        self.browser.get(f"{self.base}/console/login")
        self.find("#name").send_keys(name)
        self.find("#password").send_keys(PASSWORD)
        self.find("#sign-in").click()
        assert name in self.find("#whoami").text

    def sign_out(self) -> None:
        self.find("#logout").click()
        self.find("#sign-in")
        assert "Signed out" in self.text()


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[tuple[str, dict[str, str], Any]]:
    """A real server process; and this process's own app on the same instance and database,
    to create operators with the service and check the audit chain."""
    from server import create_app

    instance = tmp_path / "instance"
    env = base_env(instance, database_url)
    with server_process(env, free_port(), tmp_path / "server.log") as base:
        app = create_app({"instance": str(instance), "database_url": database_url})
        try:
            yield base, env, app
        finally:
            app.extensions["facepay"].engine.dispose()


def test_auditor_reads_the_log_and_an_officer_deletes_a_shopper(
    served: tuple[str, dict[str, str], Any], browser: Any, shots: Path
) -> None:
    base, env, app = served
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        for name, role in (("audrey", "auditor"), ("oscar", "privacy_officer")):
            operators.create(
                session, svc.keys.audit_key, name=name, role=role, password=PASSWORD, actor="test"
            )
    kiosk = register_kiosk_http(env, base)
    face = SyntheticFace(np.random.default_rng(41))
    _, policy = http("GET", f"{base}/v1/policy")
    payload = enrollment_payload(kiosk, policy, face.templates(), email=EMAIL)
    status, enrolled = signed_call(kiosk, base, "POST", "/v1/enrollments", payload)
    assert status == 201, enrolled
    shopper_id = enrolled["shopper_id"]

    console = Console(browser, base, shots)
    console.sign_in("audrey")
    console.link("Audit log").click()
    status_line = console.find("#chain-status").text
    assert status_line.startswith("Chain verified"), status_line
    log = console.text()
    assert "shopper.enrolled" in log and "operator.login" in log and "kiosk.registered" in log
    console.shot("01-auditor-audit-log")
    console.sign_out()

    console.sign_in("oscar")
    console.link("Find a shopper").click()
    console.find("#q").send_keys(EMAIL)
    console.find("#find").click()
    console.find("#found")
    console.link(shopper_id).click()
    assert console.find("#status").text == "active" and EMAIL in console.text()
    console.shot("02-officer-shopper-record")
    console.find("#delete").click()
    confirm = console.find("#confirm")  # only on the confirmation page
    assert "This cannot be undone" in console.text()
    confirm.click()
    console.shot("03-officer-confirm-deletion")
    console.find("#delete-now").click()
    assert console.find("#templates-deleted").text == "3"
    assert "Deletion receipt" in console.text() and shopper_id in console.text()
    console.shot("04-officer-deletion-receipt")
    console.sign_out()

    # The kiosk no longer knows the face; the chain verifies after all of it.
    status, answer = signed_call(
        kiosk,
        base,
        "POST",
        "/v1/payments",
        payment_payload(kiosk, face.sample(), 500),
        idempotency_key=new_key(),
    )
    assert (answer["status"], answer["decline_code"]) == ("declined", "not_approved"), answer
    with svc.sessions() as session:
        shopper = session.get(Shopper, shopper_id)
        assert shopper is not None and shopper.status == "deleted"
        assert audit.verify(session, svc.keys.audit_key).ok
        kinds = [event["kind"] for event in audit.events_about(session, shopper_id)]
    assert "shopper.deleted" in kinds and "console.shopper_viewed" in kinds
    assert sorted(path.name for path in ARTIFACTS.glob(f"{shots.name}-*.png")) == [
        f"{shots.name}-{step}.png"
        for step in (
            "01-auditor-audit-log",
            "02-officer-shopper-record",
            "03-officer-confirm-deletion",
            "04-officer-deletion-receipt",
        )
    ]
