"""The kiosk flow driven frame by frame: real photos through the real face engine, a clock the
test moves, and a scripted server standing in for the HTTP client (the client itself is tested
against the real server in test_client.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiosk.errors import KioskError, ServerError, ServerUnavailable
from kiosk.flow import Flow, FlowSettings, QualityGate
from models.engine import Embedding, FaceEngine
from models.images import load_image


@dataclass(frozen=True)
class Photo:
    image: np.ndarray
    timestamp: float


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class ScriptedServer:
    """Answers in order, and records what the flow sent (embeddings stay in memory)."""

    answers: list[Any] = field(default_factory=list)
    payments: list[tuple[int, str, Embedding, str]] = field(default_factory=list)
    enrollments: list[dict[str, Any]] = field(default_factory=list)
    # Each phone answer as sent: {"phone_last4": "0142"} or {"phone": "+1 514 555 0142"}.
    phones: list[dict[str, str]] = field(default_factory=list)

    def policy(self) -> dict[str, Any]:
        return {"version": 3, "texts": {"en": {"text": "We keep…", "sha256": "a" * 64}}}

    def enroll(self, **fields: Any) -> Any:
        self.enrollments.append(fields)
        return self._next()

    def pay(self, amount_minor: int, currency: str, embedding: Embedding, liveness: str) -> Any:
        self.payments.append((amount_minor, currency, embedding, liveness))
        return self._next()

    def step_up(
        self, answer: Any, *, phone_last4: str | None = None, phone: str | None = None
    ) -> Any:
        self.phones.append(_given(phone_last4=phone_last4, phone=phone))
        return self._next()

    def delete_me(
        self,
        embedding: Embedding,
        liveness: str,
        *,
        phone_last4: str | None = None,
        phone: str | None = None,
    ) -> Any:
        self.phones.append(_given(phone_last4=phone_last4, phone=phone))
        self.payments.append((0, "", embedding, liveness))
        return self._next()

    def _next(self) -> Any:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _given(**answers: str | None) -> dict[str, str]:
    return {name: value for name, value in answers.items() if value is not None}


@dataclass
class ScriptedLiveness:
    """Passes or fails after a number of observed frames, like a real check would."""

    frames_needed: int
    passes: bool
    name: str = "active-challenge"
    seen: list[bool] = field(default_factory=list)

    def start(self, now: float) -> str:
        return "turn_left"

    def observe(
        self, *, timestamp: float, landmarks: Any, box: Any, same_person: bool, image: Any = None
    ) -> Any:
        self.seen.append(same_person)
        if len(self.seen) < self.frames_needed:
            return None
        return self.finish(timestamp)

    def finish(self, now: float) -> Any:
        if len(self.seen) < self.frames_needed:  # forced before it could decide
            return _Outcome(False, self.name, "timed_out", "timed_out")
        reason = "passed" if self.passes else "flat_motion"
        return _Outcome(self.passes, self.name, reason, reason)


@dataclass(frozen=True)
class _Outcome:
    passed: bool
    check: str
    reason: str
    explanation: str


@pytest.fixture(scope="module")
def photos(faces_dir: Path) -> dict[str, list[np.ndarray]]:
    wanted = {
        "p01": ["img1.jpg", "img2.jpg", "img4.jpg", "img5.jpg"],
        "p02": ["img3.jpg", "img12.jpg"],
        "couple": ["couple.jpg"],
    }
    return {
        who: [load_image(faces_dir / "images" / name) for name in names]
        for who, names in wanted.items()
    }


def make_flow(
    engine: FaceEngine,
    server: ScriptedServer,
    clock: Clock,
    liveness: ScriptedLiveness | None = None,
    **settings: Any,
) -> Flow:
    return Flow(
        engine=engine,
        server=server,
        liveness=(lambda: liveness) if liveness is not None else None,
        clock=clock,
        settings=FlowSettings(**settings),
    )


def feed(flow: Flow, images: Sequence[np.ndarray], clock: Clock, step: float = 0.1) -> None:
    for image in images:
        clock.now += step
        flow.on_frame(Photo(image, clock.now))


APPROVED = {
    "status": "approved",
    "payment_id": "p-1",
    "shopper_label": "Marie T.",
    "wallet_balance": 8_750,
}


def test_payment_sends_the_best_frame_and_shows_the_answer(
    engine: FaceEngine, photos: dict[str, list[np.ndarray]]
) -> None:
    server, clock = ScriptedServer([APPROVED]), Clock()
    flow = make_flow(engine, server, clock)
    flow.start_payment(1_250, "CAD")
    assert (flow.state, flow.screen.prompt, flow.screen.amount) == (
        "looking",
        "look_at_camera",
        1_250,
    )
    feed(flow, photos["p01"][:3], clock)
    assert flow.state == "done" and flow.result is not None
    assert (flow.result.outcome, flow.result.shopper_label, flow.result.wallet_balance) == (
        "approved",
        "Marie T.",
        8_750,
    )
    [(amount, currency, embedding, liveness)] = server.payments
    assert (amount, currency, liveness) == (1_250, "CAD", "none")
    reference = engine.embed(photos["p01"][3], engine.analyse(photos["p01"][3])[0])
    assert embedding.similarity(reference) > 0.9  # the same person's template was sent
    clock.now += flow.settings.result_shown_s
    flow.tick()
    assert flow.state == "idle" and flow.screen.prompt == "welcome"


def test_the_quality_gate_says_what_to_fix(
    engine: FaceEngine, photos: dict[str, list[np.ndarray]]
) -> None:
    server, clock = ScriptedServer(), Clock()
    flow = make_flow(engine, server, clock)
    flow.start_payment(500, "CAD")
    feed(flow, [np.full((480, 640, 3), 128, np.uint8)], clock)
    assert flow.screen.prompt == "look_at_camera"
    feed(flow, photos["couple"], clock)
    assert flow.screen.prompt == "one_person" and flow.state == "looking"
    strict = make_flow(engine, server, clock, gate=QualityGate(min_face_px=5_000))
    strict.start_payment(500, "CAD")
    feed(strict, photos["p01"][:1], clock)
    assert strict.screen.prompt == "move_closer" and strict.state == "looking"
    assert server.payments == []


def test_someone_else_stepping_in_is_not_mixed_with_the_shopper(
    engine: FaceEngine, photos: dict[str, list[np.ndarray]]
) -> None:
    server, clock = ScriptedServer([APPROVED]), Clock()
    flow = make_flow(engine, server, clock, payment_frames=3, payment_window_s=10)
    flow.start_payment(500, "CAD")
    feed(flow, [photos["p01"][0], photos["p02"][0]], clock)
    assert flow.screen.prompt == "one_person" and flow.state == "looking"
    feed(flow, photos["p01"][1:3], clock)
    [(_, _, embedding, _)] = server.payments
    reference = engine.embed(photos["p01"][3], engine.analyse(photos["p01"][3])[0])
    assert embedding.similarity(reference) > 0.9


def test_enrollment_needs_the_notice_agreed_and_sends_spread_frames(
    engine: FaceEngine, photos: dict[str, list[np.ndarray]]
) -> None:
    answer = {"masked_label": "Marie T.", "wallet_balance": 5_000}
    server, clock = ScriptedServer([answer]), Clock()
    flow = make_flow(engine, server, clock, enroll_spacing_s=0.0)
    flow.start_enrollment(email="m@example.com", phone="+1 514 555 0142", wallet_amount=5_000)
    assert flow.state == "consent" and flow.screen.notice is not None
    feed(flow, photos["p01"][:2], clock)  # frames before "I agree" are ignored
    assert flow.state == "consent"
    with pytest.raises(Exception, match="full name"):
        flow.agree(" ")
    flow.agree("Marie Tremblay")
    feed(flow, photos["p01"][:3], clock)
    assert flow.state == "looking"  # three is enough, five is better: wait for the source
    flow.end_of_source()
    assert flow.result is not None and flow.result.outcome == "enrolled"
    [sent] = server.enrollments
    assert sent["text_sha256"] == "a" * 64 and sent["policy_version"] == 3
    assert sent["signature_name"] == "Marie Tremblay" and len(sent["embeddings"]) == 3
    assert isinstance(sent["signed_at"], dt.datetime)


def test_enrollment_frames_are_spread_in_time(
    engine: FaceEngine, photos: dict[str, list[np.ndarray]]
) -> None:
    server, clock = ScriptedServer([{"masked_label": "M."}]), Clock()
    flow = make_flow(engine, server, clock, enroll_spacing_s=0.5)
    flow.start_enrollment(email="m@example.com", phone="5145550142")
    flow.agree("Marie Tremblay")
    feed(flow, photos["p01"][:4], clock, step=0.2)  # 0.2 s apart: only every third counts
    flow.end_of_source()
    assert flow.result is not None and flow.result.code == "no_good_frames"
    assert server.enrollments == []


def test_step_up_asks_for_the_digits_then_approves(
    engine: FaceEngine, photos: dict[str, list[np.ndarray]]
) -> None:
    challenge = {"status": "step_up_required", "payment_id": "p-2", "tries_left": 3}
    server, clock = ScriptedServer([challenge, APPROVED]), Clock()
    flow = make_flow(engine, server, clock)
    flow.start_payment(25_000, "CAD")
    feed(flow, photos["p01"][:3], clock)
    assert (flow.state, flow.screen.prompt, flow.screen.tries_left) == (
        "step_up",
        "enter_phone_digits",
        3,
    )
    with pytest.raises(Exception, match="four digits"):
        flow.enter_digits("12a4")
    flow.enter_digits("0142")
    assert server.phones == [{"phone_last4": "0142"}] and flow.result is not None
    assert flow.result.outcome == "approved"


def test_declines_and_server_trouble_end_the_session(
    engine: FaceEngine, photos: dict[str, list[np.ndarray]]
) -> None:
    declined = {"status": "declined", "payment_id": "p-3", "decline_code": "insufficient_funds"}
    server, clock = ScriptedServer([declined, ServerUnavailable("no answer")]), Clock()
    flow = make_flow(engine, server, clock)
    for expected in (
        ("declined", "insufficient_funds"),
        ("server_unavailable", "server_unavailable"),
    ):
        flow.start_payment(500, "CAD")
        feed(flow, photos["p01"][:3], clock)
        assert flow.result is not None
        assert (flow.result.outcome, flow.result.code) == expected
        assert not flow.result.ok


def test_liveness_runs_before_the_server_call(
    engine: FaceEngine, photos: dict[str, list[np.ndarray]]
) -> None:
    server, clock = ScriptedServer([APPROVED]), Clock()
    check = ScriptedLiveness(frames_needed=2, passes=True)
    flow = make_flow(engine, server, clock, liveness=check)
    flow.start_payment(500, "CAD")
    feed(flow, photos["p01"][:3], clock)
    assert flow.state == "liveness" and flow.screen.prompt == "turn_left"
    feed(flow, [photos["p02"][0], photos["p01"][3]], clock)
    assert check.seen == [False, True]  # the other person was flagged to the check
    assert flow.result is not None and flow.result.outcome == "approved"
    assert server.payments[0][3] == "active-challenge"

    failing = make_flow(engine, ScriptedServer(), clock, liveness=ScriptedLiveness(1, False))
    failing.start_payment(500, "CAD")
    feed(failing, photos["p01"][:4], clock)
    assert failing.result is not None
    assert (failing.result.outcome, failing.result.code) == ("liveness_failed", "flat_motion")


@pytest.mark.parametrize("where", ["consent", "looking", "liveness", "step_up"])
@pytest.mark.parametrize("how", ["cancel", "pay_another_way", "time"])
def test_every_step_can_be_left(
    engine: FaceEngine, photos: dict[str, list[np.ndarray]], where: str, how: str
) -> None:
    challenge = {"status": "step_up_required", "payment_id": "p-2", "tries_left": 3}
    server, clock = ScriptedServer([challenge]), Clock()
    check = ScriptedLiveness(frames_needed=99, passes=True) if where == "liveness" else None
    flow = make_flow(engine, server, clock, liveness=check)
    if where == "consent":
        flow.start_enrollment(email="m@example.com", phone="5145550142")
    else:
        flow.start_payment(500 if where != "step_up" else 25_000, "CAD")
        if where != "looking":
            feed(flow, photos["p01"][:3], clock)
    assert flow.state == where
    if how == "time":
        clock.now += 1_000
        flow.tick()
    else:
        getattr(flow, how)()
    assert flow.state == "done" and flow.result is not None
    expected = {"cancel": "cancelled", "pay_another_way": "other_way"}.get(how)
    if expected:
        assert flow.result.outcome == expected
    else:
        assert flow.result.outcome in ("timed_out", "declined", "liveness_failed")
    assert flow.screen.other_ways  # paying another way is always on offer


def test_delete_me_sends_the_face_with_the_digits(
    engine: FaceEngine, photos: dict[str, list[np.ndarray]]
) -> None:
    receipt = {"status": "deleted", "request_id": "r-1", "done_at": "2026-11-26T23:00:00+00:00"}
    server, clock = ScriptedServer([receipt, {"status": "not_found"}]), Clock()
    flow = make_flow(engine, server, clock)
    with pytest.raises(Exception, match="four digits"):
        flow.start_deletion("014")
    flow.start_deletion("0142")
    feed(flow, photos["p01"][:3], clock)
    assert flow.result is not None and (flow.result.outcome, flow.result.ok) == ("deleted", True)
    assert "r-1" in flow.result.explanation and server.phones == [{"phone_last4": "0142"}]
    flow.start_deletion("0142")
    feed(flow, photos["p01"][:3], clock)
    assert flow.result is not None and flow.result.outcome == "not_found"


# ---------------------------------------------------------------- what the server asks for

FULL_PHONE = "+1 (514) 555-0142"


@pytest.mark.parametrize(
    ("asked", "prompt", "wrong", "wrong_code", "right", "sent"),
    [
        ("phone", "enter_phone_number", "0142", "bad_phone_number", FULL_PHONE, "phone"),
        ("phone_last4", "enter_phone_digits", FULL_PHONE, "bad_digits", "0142", "phone_last4"),
        (None, "enter_phone_digits", FULL_PHONE, "bad_digits", "0142", "phone_last4"),
    ],
)
def test_step_up_takes_only_the_kind_the_server_asks_for(
    engine: FaceEngine,
    photos: dict[str, list[np.ndarray]],
    asked: str | None,
    prompt: str,
    wrong: str,
    wrong_code: str,
    right: str,
    sent: str,
) -> None:
    """The server says what it asks (an older one says nothing: four digits); the other kind
    is refused on the kiosk with nothing sent, and the one asked is sent alone."""
    challenge: dict[str, Any] = {"status": "step_up_required", "payment_id": "p-2", "tries_left": 3}
    if asked is not None:
        challenge["step_up_ask"] = asked
    server, clock = ScriptedServer([challenge, APPROVED]), Clock()
    flow = make_flow(engine, server, clock)
    flow.start_payment(25_000, "CAD")
    feed(flow, photos["p01"][:3], clock)
    assert (flow.state, flow.screen.prompt) == ("step_up", prompt)
    assert flow.screen.step_up_ask == (asked or "phone_last4")
    with pytest.raises(KioskError) as refused:
        flow.enter_digits(wrong)
    assert refused.value.code == wrong_code
    assert wrong not in str(refused.value)  # a phone number is not repeated in an error
    assert server.phones == [] and flow.state == "step_up"
    flow.enter_digits(f" {right} ")  # what the keypad or the till adds around it is trimmed
    assert server.phones == [{sent: right}]
    assert flow.result is not None and flow.result.outcome == "approved"
    assert flow.screen.step_up_ask is None  # asked only while in step_up


@pytest.mark.parametrize(
    ("typed", "accepted"),
    [
        ("5145550142", True),
        ("+1 514 555 0142", True),
        ("(514) 555-0142", True),
        ("514.555.0142", True),
        ("5550142", True),  # 7 digits
        ("123456789012345", True),  # 15 digits
        ("555014", False),  # 6 digits
        ("1234567890123456", False),  # 16 digits
        ("+1 (514) 555 - 0142 - 00 00", False),  # more than 24 characters
        ("514 555 0142 ext 9", False),
        ("1+514 555 0142", False),  # a + only in front
        ("", False),
    ],
)
def test_a_full_phone_number_is_checked_before_it_is_sent(
    engine: FaceEngine, photos: dict[str, list[np.ndarray]], typed: str, accepted: bool
) -> None:
    challenge = {"status": "step_up_required", "payment_id": "p-2", "step_up_ask": "phone"}
    server, clock = ScriptedServer([challenge, APPROVED]), Clock()
    flow = make_flow(engine, server, clock)
    flow.start_payment(25_000, "CAD")
    feed(flow, photos["p01"][:3], clock)
    if accepted:
        flow.enter_digits(typed)
        assert server.phones == [{"phone": typed}]
    else:
        with pytest.raises(KioskError, match="full phone number") as refused:
            flow.enter_digits(typed)
        assert refused.value.code == "bad_phone_number" and server.phones == []


def test_a_step_up_asking_for_something_unknown_ends_the_session(
    engine: FaceEngine, photos: dict[str, list[np.ndarray]]
) -> None:
    challenge = {"status": "step_up_required", "payment_id": "p-2", "step_up_ask": "email"}
    server, clock = ScriptedServer([challenge]), Clock()
    flow = make_flow(engine, server, clock)
    flow.start_payment(25_000, "CAD")
    feed(flow, photos["p01"][:3], clock)
    assert flow.result is not None
    assert (flow.result.outcome, flow.result.code) == ("error", "step_up_ask_unknown")
    assert "email" in flow.result.explanation and server.phones == []


def test_delete_me_with_the_full_number_or_told_to_give_it(
    engine: FaceEngine, photos: dict[str, list[np.ndarray]]
) -> None:
    needs_full = ServerError("four digits are not enough", code="full_phone_required", status=422)
    receipt = {"status": "deleted", "request_id": "r-2", "done_at": "2026-11-26T23:00:00+00:00"}
    server, clock = ScriptedServer([needs_full, receipt]), Clock()
    flow = make_flow(engine, server, clock)
    flow.start_deletion("0142")
    feed(flow, photos["p01"][:3], clock)
    assert flow.result is not None and not flow.result.ok
    assert (flow.result.outcome, flow.result.code) == ("full_phone_required", "full_phone_required")
    assert "full phone number" in flow.result.explanation
    with pytest.raises(KioskError) as refused:
        flow.start_deletion(phone="0142")  # four digits are not a full number
    assert refused.value.code == "bad_phone_number"
    for both_or_neither in ({}, {"phone_last4": "0142", "phone": FULL_PHONE}):
        with pytest.raises(ValueError, match="exactly one"):
            flow.start_deletion(**both_or_neither)
    flow.start_deletion(phone=FULL_PHONE)
    feed(flow, photos["p01"][:3], clock)
    assert flow.result is not None and flow.result.outcome == "deleted"
    assert server.phones == [{"phone_last4": "0142"}, {"phone": FULL_PHONE}]


def test_a_single_photo_is_not_enough_to_enroll_and_the_result_says_why(
    engine: FaceEngine, photos: dict[str, list[np.ndarray]]
) -> None:
    server, clock = ScriptedServer(), Clock()
    flow = make_flow(engine, server, clock, enroll_spacing_s=0.0)
    flow.start_enrollment(email="m@example.com", phone="5145550142")
    flow.agree("Marie Tremblay")
    feed(flow, photos["p01"][:1], clock)
    flow.end_of_source()
    assert flow.result is not None
    assert (flow.result.outcome, flow.result.code) == ("no_face", "no_good_frames")
    why = flow.result.explanation
    assert "at least 3 good frames" in why and "1 was found" in why
    assert "several views of the face make the enrolled record reliable" in why
    assert "single photo is refused" in why
    assert server.enrollments == []

    paying = make_flow(engine, server, clock)
    paying.start_payment(500, "CAD")
    feed(paying, [np.full((480, 640, 3), 128, np.uint8)], clock)
    paying.end_of_source()
    assert paying.result is not None and paying.result.code == "no_good_frames"
    assert "no frame showed one face clearly" in paying.result.explanation
