"""The customer screen: (a) every route through Flask's test client, over a runner turned by
hand; (b) the page itself in Debian's headless Chromium (Selenium), over a running runner fed
by a simulated camera, with a screenshot of each state at 1024x600 and 1920x1080 saved under
tests/artifacts/screen/ (FACEPAY_TEST_ARTIFACTS moves it).

Both use the real flow and face engine with the shared face photos, and a scripted server
(test_flow.ScriptedServer). The browser tests fail, not skip, when CI=true and Chromium,
chromedriver or Selenium is missing."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from kiosk.camera import CameraSource, open_source
from kiosk.errors import ServerError
from kiosk.flow import STEP_UP_PROMPTS, Flow, FlowSettings, Result, Screen
from kiosk.money import parse_amount
from kiosk.runner import AnnouncingServer, Problem, Runner, View
from kiosk.ui import TOKEN_HEADER, UiServer, create_ui
from kiosk.ui.state import state_document
from kiosk.ui.texts import money
from models.engine import FaceEngine
from models.images import load_image
from server.consent.service import Policy, default_texts
from tests.conftest import REPO
from tests.support.browser import browser_or_skip, headless_chromium
from tests.unit.kiosk.test_flow import APPROVED, ScriptedServer
from tests.unit.kiosk.test_runner import P01, wait_for

TOKEN = "test-token-0123456789"
STEP_UP = {"status": "step_up_required", "payment_id": "p-2", "tries_left": 3}
DECLINED = {"status": "declined", "payment_id": "p-3", "decline_code": "insufficient_funds"}


class NoticeServer(ScriptedServer):
    """The scripted server with the real consent notice (both languages), as the API gives it."""

    def policy(self) -> dict[str, Any]:
        effective = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        return Policy(3, "payment", 365, effective, default_texts()).as_dict()


@dataclass
class HeldLiveness:
    """A liveness check that decides when the test says so (`release`), then passes."""

    released: threading.Event = field(default_factory=threading.Event)
    name: str = "active-challenge"

    def start(self, now: float) -> str:
        return "turn_left"

    def observe(
        self, *, timestamp: float, landmarks: Any, box: Any, same_person: bool, image: Any = None
    ) -> Any:
        return self.finish(timestamp) if self.released.is_set() else None

    def finish(self, now: float) -> Any:
        passed = self.released.is_set()
        reason = "passed" if passed else "timed_out"
        return _Outcome(passed, self.name, reason, reason)


@dataclass(frozen=True)
class _Outcome:
    passed: bool
    check: str
    reason: str
    explanation: str


# ================================================================ (a) the routes


@pytest.fixture
def p01_folder(faces_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "p01"
    folder.mkdir()
    for name in P01:
        (folder / name).symlink_to(faces_dir / "images" / name)
    return folder


@pytest.fixture
def server() -> NoticeServer:
    return NoticeServer()


@pytest.fixture
def runner(engine: FaceEngine, server: NoticeServer, p01_folder: Path) -> Iterator[Runner]:
    """A runner over one person's photos, turned by hand (`step()`), not started."""
    announcing = AnnouncingServer(server)
    flow = Flow(
        engine=engine,
        server=announcing,
        liveness=None,
        clock=time.monotonic,
        settings=FlowSettings(enroll_spacing_s=0.0, result_shown_s=600.0),
    )
    spec = str(p01_folder)
    made = Runner(
        flow,
        open_source(spec),
        reopen=lambda: open_source(spec),
        pace=False,
        server=announcing,
        tick_interval=0.0,
    )
    yield made
    made.stop()


@pytest.fixture
def app(runner: Runner) -> Flask:
    return create_ui(runner, token=TOKEN)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def act(client: FlaskClient, path: str, payload: Any = None, **headers: str) -> Any:
    sent = {TOKEN_HEADER: TOKEN, **headers}
    return client.post(path, json=payload if payload is not None else {}, headers=sent)


def until(runner: Runner, state: str, limit: int = 50) -> None:
    for _ in range(limit):
        if runner.view.screen.state == state:
            return
        runner.step()
    raise AssertionError(f"the flow is {runner.view.screen.state}, not {state}")


def test_the_page_carries_its_token_and_locks_itself_down(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert f'<meta name="facepay-token" content="{TOKEN}">' in page
    assert 'data-state="idle"' in page and "Welcome" in page and "Bienvenue" in page
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    for asset in ("/static/screen.js", "/static/screen.css"):
        with client.get(asset) as static:
            assert static.status_code == 200


def test_state_when_idle(client: FlaskClient) -> None:
    state = client.get("/state").get_json()
    assert state["state"] == "idle" and state["session"] is False
    assert state["prompt"] == {"key": "welcome", "text": {"en": "Welcome", "fr": "Bienvenue"}}
    assert state["amount"] is None and state["result"] is None and state["problem"] is None
    assert [way["key"] for way in state["other_ways"]] == ["card", "cash"]
    assert state["other_ways"][1]["text"] == {"en": "Cash", "fr": "Comptant"}


def test_a_payment_from_the_till_then_the_face(
    client: FlaskClient, runner: Runner, server: NoticeServer
) -> None:
    response = act(client, "/actions/pay", {"amount": "12.50", "currency": "cad"})
    assert response.status_code == 200
    state = response.get_json()["state"]
    assert (state["state"], state["mode"], state["session"]) == ("looking", "pay", True)
    assert state["prompt"]["text"]["en"] == "Look at the camera"
    assert state["amount"] == {
        "minor": 1250,
        "currency": "CAD",
        "text": {"en": "$12.50", "fr": "12,50\u00a0$"},
    }
    runner.step()
    state = client.get("/state").get_json()
    assert state["face_box"] is not None and state["frame"]["seq"] >= 1
    left, top, right, bottom = state["face_box"]
    assert 0 <= left < right <= state["frame"]["width"]
    assert 0 <= top < bottom <= state["frame"]["height"]

    server.answers.append(APPROVED)
    until(runner, "done")
    result = client.get("/state").get_json()["result"]
    assert result["outcome"] == "approved" and result["ok"] is True
    assert result["title"] == {"en": "Payment approved", "fr": "Paiement approuvé"}
    assert result["label"] == "Marie T." and result["balance"]["text"]["en"] == "$87.50"
    assert [amount for amount, *_ in server.payments] == [1250]


def test_the_preview_only_while_looking_and_only_to_this_machine(
    client: FlaskClient, runner: Runner
) -> None:
    missing = client.get("/preview.jpg")
    assert missing.status_code == 404 and missing.get_json()["code"] == "no_preview"
    act(client, "/actions/pay", {"amount_minor": 500, "currency": "CAD"})
    runner.step()
    response = client.get("/preview.jpg")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert response.headers["Cache-Control"] == "no-store"
    picture = cv2.imdecode(np.frombuffer(response.data, np.uint8), cv2.IMREAD_COLOR)
    preview = runner.preview()
    assert picture is not None and preview is not None
    assert picture.shape[1] == min(960, preview.image.shape[1])
    remote = client.get("/preview.jpg", environ_base={"REMOTE_ADDR": "192.168.1.20"})
    assert remote.status_code == 403 and remote.get_json()["code"] == "not_local"
    ipv6 = client.get("/preview.jpg", environ_base={"REMOTE_ADDR": "::1"})
    assert ipv6.status_code == 200


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"amount": "-1"}, "bad_amount"),
        ({"amount": "abc"}, "bad_amount"),
        ({"amount": "12.345"}, "bad_amount"),
        ({"amount": 12.5}, "bad_amount"),
        ({"amount_minor": 0}, "bad_amount"),
        ({"amount_minor": True}, "bad_amount"),
        ({}, "bad_amount"),
        ({"amount": "12.50", "currency": "dollars"}, "bad_currency"),
        ({"amount": "100", "currency": "JPY"}, None),
        ({"amount": "100.5", "currency": "JPY"}, "bad_amount"),
    ],
)
def test_bad_amounts_are_refused(
    client: FlaskClient, payload: dict[str, Any], code: str | None
) -> None:
    response = act(client, "/actions/pay", payload)
    if code is None:
        assert response.status_code == 200
        assert response.get_json()["state"]["amount"]["text"]["en"] == "100 JPY"
        return
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["code"] == code and problem["status"] == 422 and problem["detail"]
    assert client.get("/state").get_json()["state"] == "idle"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({TOKEN_HEADER: "wrong"}, "bad_token"),
        ({TOKEN_HEADER: ""}, "bad_token"),
        ({"Origin": "http://evil.example"}, "bad_origin"),
        ({"Origin": "http://localhost:9999"}, "bad_origin"),
        ({"Origin": "null"}, "bad_origin"),
        ({"Sec-Fetch-Site": "cross-site"}, "bad_origin"),
        ({"Host": "evil.example"}, "bad_host"),
        ({"Host": "127.0.0.1.evil.example:8080"}, "bad_host"),
    ],
)
def test_actions_from_anywhere_else_are_refused(
    client: FlaskClient, headers: dict[str, str], code: str
) -> None:
    response = act(client, "/actions/pay", {"amount": "5"}, **headers)
    assert response.status_code == 403 and response.get_json()["code"] == code
    assert client.get("/state").get_json()["state"] == "idle"


def test_what_the_page_itself_sends_is_accepted(client: FlaskClient) -> None:
    same = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    assert act(client, "/actions/pay", {"amount": "5"}, **same).status_code == 200
    assert act(client, "/actions/cancel", None, Origin="http://localhost").status_code == 200
    rebound = client.get("/state", headers={"Host": "attacker.example"})
    assert rebound.status_code == 403 and rebound.get_json()["code"] == "bad_host"
    assert client.get("/state", headers={"Host": "[::1]:8080"}).status_code == 200


def test_an_action_body_is_json(client: FlaskClient) -> None:
    form = client.post("/actions/pay", data={"amount": "5"}, headers={TOKEN_HEADER: TOKEN})
    assert form.status_code == 415 and form.get_json()["code"] == "not_json"
    broken = client.post(
        "/actions/pay",
        data="[1, 2",
        content_type="application/json",
        headers={TOKEN_HEADER: TOKEN},
    )
    assert broken.status_code == 400 and broken.get_json()["code"] == "bad_request"
    listed = act(client, "/actions/pay", [1, 2])
    assert listed.status_code == 400
    empty = client.post("/actions/cancel", headers={TOKEN_HEADER: TOKEN})
    assert empty.status_code == 200
    get = client.get("/actions/pay")
    assert get.status_code == 405 and get.get_json()["code"] == "method_not_allowed"


def test_the_flow_refusals_keep_their_codes(client: FlaskClient) -> None:
    nothing = act(client, "/actions/agree", {"name": "Marie Tremblay"})
    assert nothing.status_code == 409 and nothing.get_json()["code"] == "no_consent_pending"
    no_digits = act(client, "/actions/digits", {"digits": "0142"})
    assert no_digits.status_code == 409 and no_digits.get_json()["code"] == "no_step_up_pending"
    assert act(client, "/actions/pay", {"amount": "5"}).status_code == 200
    busy = act(client, "/actions/pay", {"amount": "6"})
    assert busy.status_code == 409 and busy.get_json()["code"] == "kiosk_busy"
    assert busy.get_json()["text"]["en"]  # words the screen can show


def test_enrollment_shows_the_notice_in_full_until_agreed(
    client: FlaskClient, runner: Runner
) -> None:
    for payload, code in [
        ({"email": "not-an-email", "phone": "5145550142"}, "bad_email"),
        ({"email": "m@example.com", "phone": "call me"}, "bad_phone"),
        ({"email": "m@example.com", "phone": "5145550142", "wallet": "-5"}, "bad_amount"),
        ({"phone": "5145550142"}, "bad_email"),
    ]:
        response = act(client, "/actions/enroll", payload)
        assert (response.status_code, response.get_json()["code"]) == (422, code)
    started = act(
        client,
        "/actions/enroll",
        {"email": "m@example.com", "phone": "+1 514 555 0142", "wallet": "50.00"},
    )
    state = started.get_json()["state"]
    assert (state["state"], state["prompt"]["key"], state["session"]) == (
        "consent",
        "read_notice",
        True,
    )
    notice = state["notice"]
    assert notice["locale"] == "en" and notice["version"] == 3
    assert notice["text"] == default_texts()["en"]  # in full, the words that will be signed
    unsigned = act(client, "/actions/agree", {"name": " "})
    problem = unsigned.get_json()
    assert (unsigned.status_code, problem["code"]) == (422, "name_required")
    assert problem["text"] == {
        "en": "Type your full name to sign.",
        "fr": "Tapez votre nom complet.",
    }
    agreed = act(client, "/actions/agree", {"name": "Marie Tremblay"})
    state = agreed.get_json()["state"]
    assert state["state"] == "looking" and state["notice"] is None


def test_step_up_digits_then_the_result(
    client: FlaskClient, runner: Runner, server: NoticeServer
) -> None:
    server.answers.extend([STEP_UP, APPROVED])
    act(client, "/actions/pay", {"amount": "250.00"})
    until(runner, "step_up")
    state = client.get("/state").get_json()
    assert (state["prompt"]["key"], state["tries_left"], state["face_box"]) == (
        "enter_phone_digits",
        3,
        None,
    )
    assert state["keypad"] == {"ask": "phone_last4", "min_digits": 4, "max_digits": 4}
    wrong = act(client, "/actions/digits", {"digits": "12a4"})
    assert (wrong.status_code, wrong.get_json()["code"]) == (422, "bad_digits")
    right = act(client, "/actions/digits", {"digits": "0142"})
    assert right.get_json()["state"]["result"]["outcome"] == "approved"
    assert server.phones == [{"phone_last4": "0142"}]


def test_step_up_asking_for_the_full_number(
    client: FlaskClient, runner: Runner, server: NoticeServer
) -> None:
    server.answers.extend([{**STEP_UP, "step_up_ask": "phone"}, APPROVED])
    act(client, "/actions/pay", {"amount": "250.00"})
    until(runner, "step_up")
    state = client.get("/state").get_json()
    assert state["prompt"]["key"] == "enter_phone_number"
    assert state["prompt"]["text"]["en"] == "Type your full phone number"
    assert state["keypad"] == {"ask": "phone", "min_digits": 7, "max_digits": 15}
    four = act(client, "/actions/digits", {"digits": "0142"})
    problem = four.get_json()
    assert (four.status_code, problem["code"]) == (422, "bad_phone_number")
    assert problem["text"]["en"] == "Type your full phone number: 7 to 15 digits."
    assert server.phones == []
    right = act(client, "/actions/digits", {"digits": "15145550142"})
    assert right.get_json()["state"]["result"]["outcome"] == "approved"
    assert right.get_json()["state"]["keypad"] is None
    assert server.phones == [{"phone": "15145550142"}]


def test_delete_my_face_data_by_either_kind_of_phone_answer(
    client: FlaskClient, runner: Runner, server: NoticeServer
) -> None:
    for payload, code in [
        ({}, "bad_request"),
        ({"phone_last4": "0142", "phone": "+1 514 555 0142"}, "bad_request"),
        ({"phone": "0142"}, "bad_phone_number"),
        ({"phone_last4": "+1 514 555 0142"}, "bad_digits"),
        ({"phone": 5145550142}, "bad_phone"),
    ]:
        refused = act(client, "/actions/delete", payload)
        assert refused.get_json()["code"] == code, payload
        assert refused.status_code in (400, 422)
    assert client.get("/state").get_json()["state"] == "idle"

    needs_full = ServerError("four digits are not enough", code="full_phone_required", status=422)
    server.answers.append(needs_full)
    started = act(client, "/actions/delete", {"phone_last4": "0142"})
    assert started.get_json()["state"]["mode"] == "delete"
    until(runner, "done")
    result = client.get("/state").get_json()["result"]
    assert (result["outcome"], result["ok"]) == ("full_phone_required", False)
    assert result["title"]["en"] == "Your full phone number is needed"
    assert "full phone number" in result["reason"]["en"]

    server.answers.append({"status": "deleted", "request_id": "r-1", "done_at": "2026-11-26"})
    act(client, "/actions/delete", {"phone": "+1 514 555 0142"})
    until(runner, "done")
    assert client.get("/state").get_json()["result"]["outcome"] == "deleted"
    assert server.phones == [{"phone_last4": "0142"}, {"phone": "+1 514 555 0142"}]


def test_a_declined_payment_says_why_and_offers_the_other_ways(
    client: FlaskClient, runner: Runner, server: NoticeServer
) -> None:
    server.answers.append(DECLINED)
    act(client, "/actions/pay", {"amount": "5"})
    until(runner, "done")
    state = client.get("/state").get_json()
    result = state["result"]
    assert (result["outcome"], result["code"], result["ok"]) == (
        "declined",
        "insufficient_funds",
        False,
    )
    assert result["reason"]["en"] == "Not enough money in your wallet."
    assert state["prompt"]["text"]["fr"] == "Paiement refusé" and state["session"] is False


@pytest.mark.parametrize(
    ("path", "outcome"), [("/actions/cancel", "cancelled"), ("/actions/other-way", "other_way")]
)
def test_leaving_a_session(client: FlaskClient, path: str, outcome: str) -> None:
    act(client, "/actions/pay", {"amount": "5"})
    state = act(client, path).get_json()["state"]
    assert state["state"] == "done" and state["result"]["outcome"] == outcome
    assert state["amount"]["minor"] == 500  # still shown with the result


def test_a_french_screen(engine: FaceEngine, server: NoticeServer, p01_folder: Path) -> None:
    flow = Flow(
        engine=engine,
        server=server,
        liveness=None,
        clock=time.monotonic,
        settings=FlowSettings(locale="fr"),
    )
    runner = Runner(flow, open_source(str(p01_folder)), pace=False)
    client = create_ui(runner, token=TOKEN).test_client()
    page = client.get("/").get_data(as_text=True)
    assert '<html lang="fr">' in page and 'data-first="fr"' in page
    state = act(client, "/actions/enroll", {"email": "m@example.com", "phone": "5145550142"})
    notice = state.get_json()["state"]["notice"]
    assert notice["locale"] == "fr" and notice["text"] == default_texts()["fr"]
    runner.stop()


def test_every_prompt_and_outcome_has_words() -> None:
    from kiosk import liveness
    from kiosk.ui import texts

    flow_prompts = {"welcome", "read_notice", "please_wait", *STEP_UP_PROMPTS.values()}
    gate = {"look_at_camera", "one_person", "move_closer", "more_light", "less_light"}
    gate |= {"hold_still", "face_camera"}
    assert flow_prompts | gate | set(liveness.PROMPTS) <= set(texts.PROMPTS)
    outcomes = {"approved", "declined", "enrolled", "deleted", "not_found", "cancelled"}
    outcomes |= {"full_phone_required"}
    outcomes |= {"other_way", "timed_out", "liveness_failed", "no_face", "server_unavailable"}
    assert outcomes | {"error"} <= set(texts.OUTCOMES)
    for table in (texts.PROMPTS, texts.OUTCOMES, texts.REASONS, texts.LABELS, texts.ERRORS):
        assert all(set(words) == set(texts.LOCALES) for words in table.values())


def test_state_document_of_a_lost_camera_and_of_money() -> None:
    view = View(Screen(state="idle", prompt="welcome"), Problem("camera_lost", "gone", 1.0))
    state = state_document(view, None)
    assert state["problem"]["code"] == "camera_lost"
    assert state["problem"]["text"]["en"].startswith("The camera is not working")
    done = View(Screen(state="done", prompt="timed_out", result=Result("timed_out", "x_timed_out")))
    assert state_document(done, None)["result"]["title"]["en"] == "Time is up"
    assert money(123_456_78, "CAD") == {"en": "$123,456.78", "fr": "123\u202f456,78\u00a0$"}
    assert money(1_000, "EUR")["en"] == "€10.00" and money(5, "KWD")["fr"] == "0,005\u00a0KWD"
    assert parse_amount("0.10", "CAD") == 10 and parse_amount("1e3", "CAD") is None
    assert parse_amount("NaN", "CAD") is None and parse_amount("0", "CAD") is None


# ================================================================ (b) the page in Chromium

ARTIFACTS = Path(os.environ.get("FACEPAY_TEST_ARTIFACTS", REPO / "tests" / "artifacts")) / "screen"
SIZES = [(1024, 600), (1920, 1080)]


class Webcam:
    """A USB camera for `CameraSource` (its capture factory): it films whatever scene the test
    puts in front of it, about 20 frames a second, and can be unplugged."""

    def __init__(self) -> None:
        self.scene = np.full((480, 640, 3), 90, np.uint8)  # BGR, as a device gives
        self.plugged = True

    def __call__(self, device: int | str, *args: Any) -> _Capture:
        return _Capture(self)

    def show(self, rgb: np.ndarray) -> None:
        self.scene = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


class _Capture:
    def __init__(self, webcam: Webcam) -> None:
        self.webcam = webcam
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return self.webcam.plugged and not self.released

    def set(self, prop: int, value: float) -> bool:
        return True

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FRAME_WIDTH: 640.0, cv2.CAP_PROP_FRAME_HEIGHT: 480.0}.get(prop, 0.0)

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(0.05)
        if not self.isOpened():
            return False, None
        return True, self.webcam.scene.copy()

    def release(self) -> None:
        self.released = True


def _scene(faces_dir: Path, name: str, *, light: float = 1.0) -> np.ndarray:
    """A shared photo as the camera would frame it: 640 wide, in memory only."""
    image = load_image(faces_dir / "images" / name)
    height, width = image.shape[:2]
    scale = 640 / width
    framed = cv2.resize(image, (640, round(height * scale)), interpolation=cv2.INTER_AREA)
    return np.clip(framed.astype(np.float32) * light, 0, 255).astype(np.uint8)


@dataclass
class Kiosk:
    """The screen at work: the runner on its thread, the UI server, the camera, the server."""

    url: str
    webcam: Webcam
    server: NoticeServer
    liveness: HeldLiveness
    runner: Runner

    def till(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the till sends (no browser: no Origin), with the page's token."""
        request = urllib.request.Request(
            self.url + path.lstrip("/"),
            data=json.dumps(payload or {}).encode(),
            headers={"Content-Type": "application/json", TOKEN_HEADER: TOKEN},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{path}: {error.code} {error.read()!r}") from None
        return answer


@pytest.fixture(scope="module")
def kiosk(engine: FaceEngine) -> Iterator[Kiosk]:
    browser_or_skip()
    webcam = Webcam()
    source = CameraSource(
        0, capture_factory=webcam, stall_limit=0.5, retry_delay=0.05, max_retry_delay=0.2
    )
    server = NoticeServer()
    liveness = HeldLiveness()
    announcing = AnnouncingServer(server)
    long = 600.0  # nothing times out while a screenshot is taken
    flow = Flow(
        engine=engine,
        server=announcing,
        liveness=lambda: liveness,
        clock=time.monotonic,
        settings=FlowSettings(
            consent_timeout_s=long,
            looking_timeout_s=long,
            liveness_timeout_s=long,
            step_up_timeout_s=long,
            result_shown_s=long,
        ),
    )
    runner = Runner(flow, source, server=announcing, tick_interval=0.05)
    screen = UiServer(create_ui(runner, token=TOKEN), port=0)
    with runner, screen:
        yield Kiosk(screen.url, webcam, server, liveness, runner)


@pytest.fixture(scope="module")
def browser(kiosk: Kiosk) -> Iterator[Any]:
    chrome = headless_chromium(1920, 1080)
    try:
        chrome.get(kiosk.url)
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture(scope="module")
def shots() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


class Page:
    def __init__(self, browser: Any, shots: Path) -> None:
        self.browser = browser
        self.shots = shots

    def js(self, script: str, *args: Any) -> Any:
        return self.browser.execute_script(script, *args)

    def wait(self, predicate: Callable[[], Any], what: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.browser, 30, poll_frequency=0.05).until(
            lambda _: predicate(), message=f"waiting for {what}"
        )

    def state(self, state: str, outcome: str | None = None) -> None:
        def shown() -> bool:
            data = self.js("return [document.body.dataset.state, document.body.dataset.outcome]")
            return bool(data[0] == state and (outcome is None or data[1] == outcome))

        self.wait(shown, f"the page to show {state} {outcome or ''}")

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return str(self.browser.find_element(By.TAG_NAME, "body").text)

    def click(self, element_id: str) -> None:
        from selenium.webdriver.common.by import By

        self.browser.find_element(By.ID, element_id).click()

    def type(self, element_id: str, words: str) -> None:
        from selenium.webdriver.common.by import By

        self.browser.find_element(By.ID, element_id).send_keys(words)

    def preview_loaded(self) -> None:
        self.wait(
            lambda: self.js(
                "const i = document.getElementById('preview');"
                "return i.complete && i.naturalWidth > 0 && i.getAttribute('src') !== null;"
            ),
            "the camera preview",
        )

    def shoot(self, name: str, must_see: list[str], fits: list[str]) -> None:
        """A screenshot at each size; the words must be visible and the elements inside the
        viewport (nothing cut off, no scrolling)."""
        for width, height in SIZES:
            self.browser.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
            self.js("return new Promise(r => requestAnimationFrame(() => setTimeout(r, 50)))")
            path = self.shots / f"{name}-{width}x{height}.png"
            assert self.browser.save_screenshot(str(path)), path
            text = self.text()
            for words in must_see:
                assert words in text, f"{name} at {width}x{height}: {words!r} not in {text!r}"
            outside = self.js(
                """
                const out = [];
                const doc = document.documentElement;
                if (doc.scrollWidth > innerWidth || doc.scrollHeight > innerHeight) {
                  out.push('page');
                }
                for (const id of arguments[0]) {
                  const e = document.getElementById(id);
                  const r = e.getBoundingClientRect();
                  if (r.width === 0 || r.height === 0) { out.push(id + ' (not shown)'); continue; }
                  if (r.left < 0 || r.top < 0 || r.right > innerWidth + 0.5 ||
                      r.bottom > innerHeight + 0.5) out.push(id);
                }
                return out;
                """,
                fits,
            )
            assert outside == [], f"{name} at {width}x{height}: cut off: {outside}"
        self.browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


@pytest.fixture(scope="module")
def page(browser: Any, shots: Path) -> Page:
    return Page(browser, shots)


def test_the_screen_in_each_state(kiosk: Kiosk, page: Page, faces_dir: Path) -> None:
    shopper = _scene(faces_dir, "img1.jpg")
    in_the_dark = _scene(faces_dir, "img1.jpg", light=0.25)

    # 1. idle: the welcome
    page.state("idle")
    page.shoot("01-idle", ["Welcome", "Bienvenue"], ["prompt-first", "idle-hint"])

    # 2. consent: the notice in full, the name, "I agree"; signed in the browser
    kiosk.till("/actions/enroll", {"email": "m@example.com", "phone": "5145550142"})
    page.state("consent")
    page.wait(lambda: "Consent to pay by face" in page.text(), "the notice")
    page.shoot(
        "02-consent",
        [
            "Consent to pay by face",
            "What we collect",
            "I agree",
            "Pay another way",
            "Your full name",
        ],
        ["notice", "name", "agree", "other-way", "cancel"],
    )
    scrolls = page.js(
        "const n = document.getElementById('notice'); n.scrollTop = n.scrollHeight;"
        "return [n.scrollHeight > n.clientHeight, n.textContent.includes('I agree')];"
    )
    assert scrolls[1]  # the whole notice is there, down to its last paragraph
    page.type("name", "Marie Tremblay")
    page.click("agree")
    page.state("looking")
    page.click("cancel")
    page.state("done", "cancelled")

    # 3. looking: a prompt, the preview with the face box, the amount due
    kiosk.webcam.show(in_the_dark)
    kiosk.till("/actions/pay", {"amount": "12.50", "currency": "CAD"})
    page.state("looking")
    page.wait(lambda: "Too dark" in page.text(), "the light prompt")
    page.preview_loaded()
    page.shoot(
        "03-looking",
        ["$12.50", "Too dark", "Pay another way"],
        ["amount-value", "prompt-first", "preview", "other-way", "cancel"],
    )

    # 4. liveness: the head-turn prompt, once the face is good
    kiosk.webcam.show(shopper)
    page.state("liveness")
    page.preview_loaded()
    page.shoot(
        "04-liveness",
        ["Turn your head to your left", "$12.50"],
        ["prompt-first", "preview", "other-way"],
    )

    # 5. step-up: the server asks for the phone's last four digits
    kiosk.server.answers.extend([STEP_UP, APPROVED])
    kiosk.liveness.released.set()
    page.state("step_up")
    page.shoot(
        "05-step-up",
        ["last 4 digits", "Tries left", "3", "$12.50"],
        ["prompt-first", "digits", "digits-send", "other-way"],
    )
    page.type("digits", "0142")
    page.click("digits-send")

    # 6. approved
    page.state("done", "approved")
    page.shoot(
        "06-approved",
        ["Payment approved", "Marie T.", "Wallet balance", "$87.50", "Amount paid", "$12.50"],
        ["prompt-first", "result-label", "mark"],
    )
    assert kiosk.server.phones == [{"phone_last4": "0142"}]

    # 7. declined, with the reason and the other ways to pay
    kiosk.server.answers.append(DECLINED)
    kiosk.till("/actions/pay", {"amount": "40.00"})
    page.state("done", "declined")
    page.shoot(
        "07-declined",
        ["Payment declined", "Not enough money", "Card", "Cash", "Amount due", "$40.00"],
        ["prompt-first", "result-reason", "result-ways"],
    )

    # 8. pay another way, chosen on the screen
    kiosk.webcam.show(in_the_dark)  # it keeps looking until the shopper chooses
    kiosk.till("/actions/pay", {"amount": "7.25"})
    page.state("looking")
    page.click("other-way")
    page.state("done", "other_way")
    page.shoot("08-other-way", ["Please pay another way", "$7.25"], ["prompt-first"])

    # 9. the camera is lost: the screen says so, and it comes back
    kiosk.webcam.plugged = False
    page.wait(lambda: not page.js("return document.getElementById('problem').hidden"), "problem")
    page.shoot("09-camera-lost", ["camera is not working"], ["problem"])
    kiosk.webcam.plugged = True
    page.wait(lambda: page.js("return document.getElementById('problem').hidden"), "recovery")

    assert sorted(p.name for p in page.shots.glob("*.png")) == sorted(
        f"{name}-{w}x{h}.png"
        for name in (
            "01-idle",
            "02-consent",
            "03-looking",
            "04-liveness",
            "05-step-up",
            "06-approved",
            "07-declined",
            "08-other-way",
            "09-camera-lost",
        )
        for w, h in SIZES
    )


def test_the_page_shows_refusals_in_both_languages(kiosk: Kiosk, page: Page) -> None:
    kiosk.runner.cancel()
    kiosk.till("/actions/enroll", {"email": "m@example.com", "phone": "5145550142"})
    page.state("consent")
    page.click("agree")  # no name typed: the browser's own check stops the form
    page.js("document.getElementById('name').required = false")
    page.type("name", " ")
    page.click("agree")
    page.wait(lambda: "Type your full name to sign." in page.text(), "the refusal")
    assert "Tapez votre nom complet." in page.text()
    page.click("cancel")
    page.state("done", "cancelled")
    wait_for(lambda: kiosk.runner.view.screen.state == "done", "the runner")


def test_a_full_phone_number_typed_on_the_keypad(kiosk: Kiosk, page: Page, faces_dir: Path) -> None:
    """The server asks for the full number: the keypad takes up to 15 digits, shows them
    grouped, takes one back with its delete key, and sends the digits alone."""
    kiosk.runner.cancel()
    kiosk.liveness.released.set()
    kiosk.webcam.show(_scene(faces_dir, "img1.jpg"))
    kiosk.server.answers.extend([{**STEP_UP, "step_up_ask": "phone"}, APPROVED])
    sent_before = len(kiosk.server.phones)
    kiosk.till("/actions/pay", {"amount": "80.00"})
    page.state("step_up")
    page.wait(lambda: "Type your full phone number" in page.text(), "the full-number prompt")

    def typed() -> str:
        return str(page.js("return document.getElementById('digits').value"))

    def can_send() -> bool:
        return not page.js("return document.getElementById('digits-send').disabled")

    for key in "514555":
        page.click(f"key-{key}")
    assert typed() == "51 4555" and not can_send()  # six digits: not a number yet
    for key in "01429":
        page.click(f"key-{key}")
    page.click("key-delete")  # a slip, taken back
    assert typed() == "514 555 0142" and can_send()
    page.type("digits", "1234567")  # a keyboard works too, up to 15 digits
    assert typed() == "51 455 501 421 2345"
    for _ in range(5):
        page.click("key-delete")
    assert typed() == "514 555 0142"
    page.shoot(
        "10-step-up-phone",
        ["Type your full phone number", "Phone number", "Tries left", "$80.00"],
        ["prompt-first", "digits", "keypad", "key-delete", "digits-send", "other-way"],
    )
    page.click("digits-send")
    page.state("done", "approved")
    assert kiosk.server.phones[sent_before:] == [{"phone": "5145550142"}]
