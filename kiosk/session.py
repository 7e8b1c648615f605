"""What a kiosk session is given and what it gives back, apart from the machine that runs it
(kiosk.flow): the protocols of the frames, the face engine, the liveness check and the
server client, all injected; the quality gate and the flow's settings; the result a session
ends with and the screen it shows. No score or template is in a result or a screen.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from models.engine import Embedding, Face
from models.manifest import PackManifest

# ---------------------------------------------------------------- what the flow is given


class FrameLike(Protocol):
    @property
    def image(self) -> npt.NDArray[np.uint8]: ...
    @property
    def timestamp(self) -> float: ...


class Engine(Protocol):
    """The face engine (models.engine.FaceEngine), as the flow uses it."""

    manifest: PackManifest

    def analyse(self, frame: npt.NDArray[Any]) -> list[Face]: ...
    def embed(self, frame: npt.NDArray[Any], face: Face) -> Embedding: ...


class LivenessOutcome(Protocol):
    @property
    def passed(self) -> bool: ...
    @property
    def check(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def explanation(self) -> str: ...


class Liveness(Protocol):
    """A presentation-attack check (kiosk.liveness): a prompt, then frame by frame."""

    name: str

    def start(self, now: float) -> str: ...
    def observe(
        self,
        *,
        timestamp: float,
        landmarks: npt.NDArray[np.float64],
        box: tuple[int, int, int, int],
        same_person: bool,
        image: npt.NDArray[np.uint8] | None = None,
    ) -> LivenessOutcome | None: ...
    def finish(self, now: float) -> LivenessOutcome: ...


class Server(Protocol):
    """The signed server client (kiosk.client.ServerClient), as the flow uses it."""

    def policy(self) -> dict[str, Any]: ...
    def enroll(
        self,
        *,
        policy_version: int,
        text_sha256: str,
        locale: str,
        signature_name: str,
        signed_at: dt.datetime,
        embeddings: Sequence[Embedding],
        liveness: str,
        email: str,
        phone: str,
        wallet_amount: int,
        currency: str,
    ) -> Any: ...
    def pay(self, amount_minor: int, currency: str, embedding: Embedding, liveness: str) -> Any: ...
    def step_up(
        self, answer: Any, *, phone_last4: str | None = None, phone: str | None = None
    ) -> Any: ...
    def delete_me(
        self,
        embedding: Embedding,
        liveness: str,
        *,
        phone_last4: str | None = None,
        phone: str | None = None,
    ) -> Any: ...


# ---------------------------------------------------------------- settings and results


@dataclass(frozen=True)
class QualityGate:
    """What a frame's face must meet to be used. Defaults fit a till camera at arm's length;
    the pose limits are loose because the 5-point pitch estimate is rough (see README)."""

    min_face_px: int = 80
    min_sharpness: float = 60.0
    min_brightness: float = 50.0
    max_brightness: float = 220.0
    max_yaw: float = 25.0
    max_pitch: float = 45.0

    def problem(self, faces: Sequence[Face]) -> str | None:
        """None when the frame is good, else the prompt that tells the shopper what to fix."""
        if not faces:
            return "look_at_camera"
        if len(faces) > 1:
            return "one_person"
        quality = faces[0].quality
        if quality.face_px < self.min_face_px:
            return "move_closer"
        if not self.min_brightness <= quality.brightness <= self.max_brightness:
            return "more_light" if quality.brightness < self.min_brightness else "less_light"
        if quality.sharpness < self.min_sharpness:
            return "hold_still"
        if abs(quality.yaw) > self.max_yaw or abs(quality.pitch) > self.max_pitch:
            return "face_camera"
        return None


@dataclass(frozen=True)
class FlowSettings:
    gate: QualityGate = field(default_factory=QualityGate)
    payment_frames: int = 3  # good frames looked at before picking the best for a payment
    payment_window_s: float = 0.5  # …or fewer, once this long has passed since the first
    enroll_min_frames: int = 3
    enroll_max_frames: int = 5
    enroll_spacing_s: float = 0.3  # good frames spread in time (0 for a folder of photos)
    # Cosine between frames of one session; default: the pack's loosest calibrated point.
    same_person_threshold: float | None = None
    consent_timeout_s: float = 180.0
    looking_timeout_s: float = 20.0
    liveness_timeout_s: float = 10.0
    step_up_timeout_s: float = 60.0
    result_shown_s: float = 6.0
    locale: str = "en"


@dataclass(frozen=True)
class Result:
    """How a session ended: what the screen shows and the CLI prints. No score, no template."""

    outcome: str  # approved, declined, enrolled, deleted, not_found, full_phone_required,
    # cancelled, other_way, timed_out, liveness_failed, no_face, server_unavailable, error
    code: str
    payment_id: str | None = None
    shopper_label: str | None = None
    wallet_balance: int | None = None
    explanation: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("approved", "enrolled", "deleted")


@dataclass(frozen=True)
class Screen:
    """The customer screen's view of the flow (served as JSON to the browser page)."""

    state: str
    prompt: str
    mode: str | None = None  # pay, enroll, delete
    amount: int | None = None
    currency: str | None = None
    face_box: tuple[int, int, int, int] | None = None
    notice: dict[str, Any] | None = None
    tries_left: int | None = None
    step_up_ask: str | None = None  # phone_last4 or phone (kiosk.phone), while in step_up
    result: Result | None = None
    other_ways: tuple[str, ...] = ("card", "cash")


__all__ = [
    "Engine",
    "FlowSettings",
    "FrameLike",
    "Liveness",
    "LivenessOutcome",
    "QualityGate",
    "Result",
    "Screen",
    "Server",
]
