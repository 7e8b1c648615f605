"""The kiosk flow: a pure state machine driven frame by frame.

States and the moves between them are declared with python-statemachine (`Steps`); what
happens in each state lives in `Flow`, which gets its camera frames, face engine, server
client, liveness check and clock from outside, so tests drive it one frame at a time. Their
protocols, the settings, and the `Result` and `Screen` it gives back are in kiosk.session.

    idle ─► consent (enrollment: the notice in full, "I agree" and the typed name)
         ─► looking (exactly one face that passes the quality gate)
         ─► liveness (a challenge, unless turned off) ─► sending (the server call)
         ─► step_up (when the server asks: the phone's last four digits, or the full
                     number, as its `step_up_ask` says) ─► sending
         ─► done (approved / declined / enrolled / …, shown for a while) ─► idle

Every state has a time limit, `cancel()` and `pay_another_way()` work in every state, and
no frame, template or score ever leaves this module except the sealed template the client
sends.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from statemachine import State, StateMachine

from kiosk.errors import KioskError, ServerError, ServerUnavailable
from kiosk.phone import ASKS, PHONE, PHONE_LAST4, PhoneAsk, is_last4, is_phone_number, phone_answer
from kiosk.session import (
    Engine,
    FlowSettings,
    FrameLike,
    Liveness,
    LivenessOutcome,
    QualityGate,
    Result,
    Screen,
    Server,
)
from models.engine import Embedding, Face

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- states


class Steps(StateMachine):
    idle = State(initial=True)
    consent = State()
    looking = State()
    liveness = State()
    sending = State()
    step_up = State()
    done = State()

    begin_face = idle.to(looking) | done.to(looking)  # a payment or a deletion
    begin_enrollment = idle.to(consent) | done.to(consent)
    agree = consent.to(looking)
    face_ready = looking.to(liveness)
    submit = looking.to(sending) | liveness.to(sending) | step_up.to(sending)
    ask_digits = sending.to(step_up)
    finish = (
        consent.to(done)
        | looking.to(done)
        | liveness.to(done)
        | sending.to(done)
        | step_up.to(done)
    )
    reset = done.to(idle)


@dataclass
class _Enrollment:
    email: str
    phone: str
    wallet_amount: int
    currency: str
    policy: dict[str, Any] | None = None
    name: str = ""
    signed_at: dt.datetime | None = None


@dataclass
class _Good:
    """A frame whose face passed the gate, with its embedding (kept only in memory)."""

    timestamp: float
    face: Face
    embedding: Embedding

    @property
    def score(self) -> float:
        q = self.face.quality
        # Sharp, large and frontal wins; the scale of each term is rough on purpose.
        return q.sharpness / 100 + q.face_px / 100 - (abs(q.yaw) + abs(q.pitch)) / 10


class Flow:
    # One session's state; `_clear` resets it when a session starts.
    _mode: str | None
    _amount: int | None
    _currency: str | None
    _enrollment: _Enrollment | None
    _good: list[_Good]
    _check: Liveness | None
    _liveness_name: str
    _deletion_phone: tuple[PhoneAsk, str] | None
    _answer: Any
    _tries_left: int | None
    _step_up_ask: PhoneAsk | None
    _result: Result | None
    _face_box: tuple[int, int, int, int] | None
    _prompt: str
    _entered: float

    def __init__(
        self,
        *,
        engine: Engine,
        server: Server,
        liveness: Callable[[], Liveness] | None,
        clock: Callable[[], float],
        settings: FlowSettings | None = None,
    ) -> None:
        self._engine = engine
        self._server = server
        self._make_liveness = liveness
        self._clock = clock
        self.settings = settings or FlowSettings()
        self._same_person_threshold = self._session_threshold(engine, self.settings)
        self._steps = Steps()
        self._clear()

    # ------------------------------------------------------------ what the screen reads

    @property
    def state(self) -> str:
        return str(self._steps.current_state_value)

    @property
    def result(self) -> Result | None:
        return self._result

    @property
    def screen(self) -> Screen:
        return Screen(
            state=self.state,
            prompt=self._prompt,
            mode=self._mode,
            amount=self._amount,
            currency=self._currency,
            face_box=self._face_box,
            notice=self._enrollment.policy
            if self._enrollment and self.state == "consent"
            else None,
            tries_left=self._tries_left,
            step_up_ask=self._step_up_ask if self.state == "step_up" else None,
            result=self._result,
        )

    # ------------------------------------------------------------ what the shopper does

    def start_payment(self, amount_minor: int, currency: str) -> None:
        if amount_minor <= 0:
            raise ValueError("a payment is a positive amount in minor units")
        self._require_free()
        self._clear()
        self._mode, self._amount, self._currency = "pay", amount_minor, currency
        self._move("begin_face", "look_at_camera")

    def start_deletion(self, phone_last4: str | None = None, *, phone: str | None = None) -> None:
        """ "Delete my face data": the face, confirmed by the phone's last four digits or by
        the full number (exactly one). Where four digits are not enough for the server, the
        session ends with outcome ``full_phone_required``: start again with `phone`."""
        kind, typed = phone_answer(phone_last4, phone)
        checked = _checked_phone(kind, typed)
        self._require_free()
        self._clear()
        self._mode, self._deletion_phone = "delete", (kind, checked)
        self._move("begin_face", "look_at_camera")

    def start_enrollment(
        self, *, email: str, phone: str, wallet_amount: int = 0, currency: str = "CAD"
    ) -> None:
        """Enrollment starts with the server's current notice, shown in full."""
        self._require_free()
        self._clear()
        self._mode, self._currency = "enroll", currency
        self._enrollment = _Enrollment(email, phone, wallet_amount, currency)
        self._move("begin_enrollment", "read_notice")
        try:
            self._enrollment.policy = self._server.policy()
        except KioskError as error:
            self._end_on_error(error)

    def agree(self, name: str) -> None:
        """The explicit "I agree", with the name the shopper typed as signature."""
        if self.state != "consent" or self._enrollment is None:
            raise KioskError("there is no notice to agree to", code="no_consent_pending")
        if len(name.strip()) < 2:
            raise KioskError("type your full name to sign", code="name_required")
        self._enrollment.name = name.strip()
        self._enrollment.signed_at = dt.datetime.now(dt.UTC)
        self._move("agree", "look_at_camera")

    def enter_digits(self, typed: str) -> None:
        """The shopper's answer to the step-up, of the kind it asks (`screen.step_up_ask`):
        the last four digits, or the full number. The other kind, or a typo, is refused with
        `KioskError` (``bad_digits``, ``bad_phone_number``) and nothing is sent."""
        asked = self._step_up_ask
        if self.state != "step_up" or asked is None:
            raise KioskError("no step-up is asked now", code="no_step_up_pending")
        checked = _checked_phone(asked, typed)
        phone_last4, phone = _keywords(asked, checked)
        self._move("submit", "please_wait")
        self._call(lambda: self._server.step_up(self._answer, phone_last4=phone_last4, phone=phone))

    def cancel(self) -> None:
        self._end(Result("cancelled", "cancelled"))

    def pay_another_way(self, *, code: str = "other_way", explanation: str = "") -> None:
        """The shopper pays another way; the till may say why with its own `code`."""
        self._end(Result("other_way", code, explanation=explanation))

    # ------------------------------------------------------------ what the camera gives

    def on_frame(self, frame: FrameLike) -> None:
        self.tick()
        if self.state == "looking":
            self._look(frame)
        elif self.state == "liveness":
            self._check_liveness(frame)

    def end_of_source(self) -> None:
        """A recorded source has no more frames: go on with what was found, or give up."""
        if self.state == "looking":
            needed = self.settings.enroll_min_frames if self._mode == "enroll" else 1
            if len(self._good) >= needed:
                self._proceed()
            else:
                why = _too_few(needed, len(self._good))
                self._end(Result("no_face", "no_good_frames", explanation=why))
        elif self.state == "liveness" and self._check is not None:
            self._liveness_done(self._check.finish(self._clock()))

    def tick(self) -> None:
        """Time limits; the screen's loop calls this even when no frame comes."""
        now = self._clock()
        limit = {
            "consent": self.settings.consent_timeout_s,
            "looking": self.settings.looking_timeout_s,
            "liveness": self.settings.liveness_timeout_s,
            "step_up": self.settings.step_up_timeout_s,
            "done": self.settings.result_shown_s,
        }.get(self.state)
        if limit is None or now - self._entered < limit:
            return
        if self.state == "done":
            self._move("reset", "welcome")
        elif self.state == "liveness" and self._check is not None:
            self._liveness_done(self._check.finish(now))
        elif self.state == "step_up":
            self._end(Result("declined", "step_up_timed_out"))
        else:
            self._end(Result("timed_out", f"{self.state}_timed_out"))

    # ------------------------------------------------------------ inside

    def _require_free(self) -> None:
        if self.state not in ("idle", "done"):
            raise KioskError("a session is in progress; cancel it first", code="kiosk_busy")

    def _clear(self) -> None:
        self._mode = None
        self._amount = None
        self._currency = None
        self._enrollment = None
        self._good = []
        self._check = None
        self._liveness_name = "none"
        self._deletion_phone = None
        self._answer = None
        self._tries_left = None
        self._step_up_ask = None
        self._result = None
        self._face_box = None
        self._prompt = "welcome"
        self._entered = self._clock()

    def _move(self, event: str, prompt: str) -> None:
        self._steps.send(event)
        self._prompt = prompt
        self._entered = self._clock()

    def _end(self, result: Result) -> None:
        if self.state in ("idle", "done"):
            return
        self._result = result
        self._good = []  # frames' embeddings go as soon as the session ends
        self._move("finish", result.outcome)

    def _end_on_error(self, error: KioskError) -> None:
        if isinstance(error, ServerUnavailable):
            self._end(Result("server_unavailable", error.code, explanation=str(error)))
        else:
            self._end(Result("error", error.code, explanation=str(error)))

    def _look(self, frame: FrameLike) -> None:
        faces = self._engine.analyse(frame.image)
        self._face_box = faces[0].box if len(faces) == 1 else None
        problem = self.settings.gate.problem(faces)
        if problem is not None:
            self._prompt = problem
            return
        face = faces[0]
        embedding = self._engine.embed(frame.image, face)
        if self._good and not self._same_person(self._good[0].embedding, embedding):
            self._prompt = "one_person"  # someone else stepped in: keep the first shopper
            return
        if self._mode == "enroll":
            if self._good and frame.timestamp - self._good[-1].timestamp < (
                self.settings.enroll_spacing_s
            ):
                return
            self._good.append(_Good(frame.timestamp, face, embedding))
            self._prompt = "hold_still"
            if len(self._good) >= self.settings.enroll_max_frames:
                self._proceed()
            return
        self._good.append(_Good(frame.timestamp, face, embedding))
        waited = frame.timestamp - self._good[0].timestamp
        if (
            len(self._good) >= self.settings.payment_frames
            or waited >= self.settings.payment_window_s
        ):
            self._proceed()

    def _proceed(self) -> None:
        """Good frames in hand: the liveness challenge, or straight to the server."""
        if self._make_liveness is None:
            self._submit()
            return
        self._check = self._make_liveness()
        prompt = self._check.start(self._clock())
        self._move("face_ready", prompt)

    def _check_liveness(self, frame: FrameLike) -> None:
        assert self._check is not None
        faces = self._engine.analyse(frame.image)
        if len(faces) != 1:
            self._face_box = None
            return
        face = faces[0]
        self._face_box = face.box
        embedding = self._engine.embed(frame.image, face)
        same = self._same_person(self._good[0].embedding, embedding)
        if same and self.settings.gate.problem(faces) is None and self._mode != "enroll":
            self._good.append(_Good(frame.timestamp, face, embedding))
        outcome = self._check.observe(
            timestamp=frame.timestamp,
            landmarks=face.landmarks,
            box=face.box,
            same_person=same,
            image=frame.image,  # for a model-based check; never kept or sent
        )
        if outcome is not None:
            self._liveness_done(outcome)

    def _liveness_done(self, outcome: LivenessOutcome) -> None:
        if not outcome.passed:
            self._end(Result("liveness_failed", outcome.reason, explanation=outcome.explanation))
            return
        self._liveness_name = outcome.check
        self._submit()

    @staticmethod
    def _session_threshold(engine: Engine, settings: FlowSettings) -> float:
        if settings.same_person_threshold is not None:
            return settings.same_person_threshold
        calibration = engine.manifest.calibration
        if calibration is None:
            raise KioskError(
                f"pack {engine.manifest.ref} has no calibrated threshold; set one",
                code="pack_not_calibrated",
            )
        return min(point.threshold for point in calibration.points)

    def _same_person(self, first: Embedding, other: Embedding) -> bool:
        return first.similarity(other) >= self._same_person_threshold

    def _submit(self) -> None:
        self._move("submit", "please_wait")
        if self._mode == "delete":
            self._delete()
        elif self._mode == "pay":
            best = max(self._good, key=lambda good: good.score)
            assert self._amount is not None and self._currency is not None
            amount, currency = self._amount, self._currency
            self._call(
                lambda: self._server.pay(amount, currency, best.embedding, self._liveness_name)
            )
        else:
            self._enroll()

    def _delete(self) -> None:
        best = max(self._good, key=lambda good: good.score)
        assert self._deletion_phone is not None
        phone_last4, phone = _keywords(*self._deletion_phone)
        try:
            answer = self._server.delete_me(
                best.embedding, self._liveness_name, phone_last4=phone_last4, phone=phone
            )
        except KioskError as error:
            if error.code == FULL_PHONE_REQUIRED:
                # Among the server's many shoppers, four digits leave too many candidates.
                self._end(Result(FULL_PHONE_REQUIRED, error.code, explanation=_FULL_PHONE))
            else:
                self._end_on_error(error)
            return
        if _field(answer, "status") == "deleted":
            receipt = f"receipt {_field(answer, 'request_id')} at {_field(answer, 'done_at')}"
            self._end(Result("deleted", "deleted", explanation=receipt))
        else:
            self._end(Result("not_found", "not_found"))

    def _enroll(self) -> None:
        enrollment = self._enrollment
        assert enrollment is not None and enrollment.policy is not None
        policy = enrollment.policy
        texts = policy["texts"]
        locale = self.settings.locale if self.settings.locale in texts else "en"
        try:
            answer = self._server.enroll(
                policy_version=int(policy["version"]),
                text_sha256=texts[locale]["sha256"],
                locale=locale,
                signature_name=enrollment.name,
                signed_at=enrollment.signed_at or dt.datetime.now(dt.UTC),
                embeddings=[good.embedding for good in self._good],
                liveness=self._liveness_name,
                email=enrollment.email,
                phone=enrollment.phone,
                wallet_amount=enrollment.wallet_amount,
                currency=enrollment.currency,
            )
        except KioskError as error:
            self._end_on_error(error)
            return
        self._end(
            Result(
                "enrolled",
                "enrolled",
                shopper_label=_field(answer, "masked_label"),
                wallet_balance=_field(answer, "wallet_balance"),
            )
        )

    def _call(self, request: Callable[[], Any]) -> None:
        try:
            answer = request()
        except ServerError as error:
            self._end(Result("error", error.code, explanation=str(error)))
            return
        except KioskError as error:
            self._end_on_error(error)
            return
        self._answer = answer
        status = _field(answer, "status")
        if status == "approved":
            self._end(
                Result(
                    "approved",
                    "approved",
                    payment_id=_field(answer, "payment_id"),
                    shopper_label=_field(answer, "shopper_label"),
                    wallet_balance=_field(answer, "wallet_balance"),
                )
            )
        elif status == "step_up_required":
            asked = _field(answer, "step_up_ask") or PHONE_LAST4  # an older server: 4 digits
            if asked not in ASKS:
                shown = str(asked)[:40]
                self._end(
                    Result(
                        "error",
                        "step_up_ask_unknown",
                        explanation=f"the server asks for {shown!r}, which this kiosk cannot take",
                    )
                )
                return
            self._step_up_ask = PHONE if asked == PHONE else PHONE_LAST4
            self._tries_left = _field(answer, "tries_left")
            self._move("ask_digits", STEP_UP_PROMPTS[self._step_up_ask])
        else:
            code = _field(answer, "decline_code") or "declined"
            self._end(Result("declined", code, payment_id=_field(answer, "payment_id")))


# The step-up's prompt for what the server asks.
STEP_UP_PROMPTS: dict[PhoneAsk, str] = {
    PHONE_LAST4: "enter_phone_digits",
    PHONE: "enter_phone_number",
}
FULL_PHONE_REQUIRED = "full_phone_required"  # the server's code, and the deletion's outcome
_FULL_PHONE = (
    "the last four digits are not enough to find you among this store's shoppers: "
    "start again with the full phone number"
)


def _checked_phone(asked: PhoneAsk, typed: str) -> str:
    """What the shopper typed, trimmed, if it is the kind asked; the errors never quote it."""
    text = typed.strip() if isinstance(typed, str) else ""
    if asked == PHONE_LAST4 and not is_last4(text):
        why = ", not the full number" if is_phone_number(text) else ""
        raise KioskError(f"type the last four digits of your phone{why}", code="bad_digits")
    if asked == PHONE and not is_phone_number(text):
        why = "not only its last four digits" if is_last4(text) else "7 to 15 digits"
        raise KioskError(f"type your full phone number: {why}", code="bad_phone_number")
    return text


def _keywords(asked: PhoneAsk, text: str) -> tuple[str | None, str | None]:
    """(phone_last4, phone) for the server client, exactly one of them set."""
    return (text, None) if asked == PHONE_LAST4 else (None, text)


def _too_few(needed: int, found: int) -> str:
    """Why a recorded source with too few good frames is refused."""
    if needed <= 1:
        return "no frame showed one face clearly enough (light, distance, sharpness, pose)"
    seen = {0: "none was found", 1: "1 was found"}.get(found, f"{found} were found")
    return (
        f"enrollment needs at least {needed} good frames of the face and {seen}: several "
        "views of the face make the enrolled record reliable, so a single photo is refused "
        f"(use a video, or a folder of {needed} or more photos)"
    )


def _field(answer: Any, name: str) -> Any:
    """An answer's field, whether the client gives a mapping or a dataclass."""
    if isinstance(answer, dict):
        return answer.get(name)
    return getattr(answer, name, None)


# What a session is given and gives back lives in kiosk.session; importable from here too.
__all__ = [
    "STEP_UP_PROMPTS",
    "Engine",
    "Flow",
    "FlowSettings",
    "FrameLike",
    "Liveness",
    "LivenessOutcome",
    "QualityGate",
    "Result",
    "Screen",
    "Server",
    "Steps",
]
