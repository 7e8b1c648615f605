"""Liveness (presentation-attack) checks: pure code fed one face at a time, the clock injected.

A check is started when the flow has good frames of one shopper, shows the prompt `start`
returns, is fed each later frame's face through `observe` until it returns a result, and is
forced to decide by `finish` (time limit reached, session cancelled, recorded source ended).
Every result names the check that made it: "active-challenge", "insightface" or "none", the
names the server accepts with a template (server.templates.LIVENESS_CHECKS).

`ActiveChallenge` (always available, offline) asks for a head turn to a random side and checks
it with 3D cues that a flat picture does not produce. What it can and cannot tell apart, and the
figures behind its thresholds, are in docs/liveness.md. `InsightfaceLiveness` runs insightface's
liveness addon model on each frame when that file is installed; `NoLiveness` is for recorded
sources (`--liveness off`).

Results carry geometry (how far the nose moved, how the eye corners' spacing changed) in their
explanation, never an embedding similarity or a model score.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from kiosk.errors import KioskError

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
Direction = Literal["left", "right"]
# Which 5 points the face engine gives: dlib's shape predictor (outer and inner corner of the
# image-right eye, then of the image-left eye, then the base of the nose) or insightface's SCRFD
# (image-left eye, image-right eye, nose tip, image-left and image-right mouth corner).
LandmarkScheme = Literal["dlib-5", "arcface-5"]
Mode = Literal["auto", "active", "insightface", "off"]

ACTIVE_CHALLENGE = "active-challenge"
INSIGHTFACE = "insightface"
NO_LIVENESS = "none"

PROMPTS: dict[str, str] = {
    "turn_left": "Turn your head to your left",
    "turn_right": "Turn your head to your right",
    "hold_still": "Hold still and look at the camera",
}


@dataclass(frozen=True)
class LivenessResult:
    passed: bool
    check: str  # "active-challenge", "insightface" or "none"
    # Stable code: passed, no_turn, flat_motion, wrong_direction, identity_changed, timed_out,
    # too_few_frames, face_lost; insightface's check adds spoof_detected and no_image.
    reason: str
    explanation: str  # for people and tests: geometry figures only, never a similarity or score


class LivenessCheck(Protocol):
    """One presentation-attack check. `start` begins (or restarts) a session, so one object
    serves session after session; `observe` returns None while undecided."""

    name: str

    def start(self, now: float) -> str: ...

    def observe(
        self,
        *,
        timestamp: float,
        landmarks: npt.NDArray[np.float64],
        box: Box,
        same_person: bool,
        image: npt.NDArray[np.uint8] | None = None,
    ) -> LivenessResult | None: ...

    def finish(self, now: float) -> LivenessResult: ...


# ---------------------------------------------------------------- geometry of one face


@dataclass(frozen=True)
class FaceGeometry:
    """What the active challenge measures on one face, all in units of the eye distance.

    parallax:  the nose's offset from the eyes' midpoint along the eye line, positive towards
               the image's right. A head turning moves it by about depth*tan(yaw); so does a
               flat picture sheared or tilted about a slanting axis, which is why it is only
               the "how far and which way" of the turn, never the proof of depth.
    asymmetry: dlib-5 only: log(width of the image-left eye / width of the image-right eye),
               the widths measured along the eye line in the affine frame of the eye centres and
               the nose, so that no affine map of a flat picture (move, rotate, scale, shear, a
               tilt seen from afar) changes it. A real head changes it because the outer eye
               corners lie behind the inner ones: the eye on the side the nose turns to narrows.
    drop:      the nose's offset across the eye line (downwards). A head turning shrinks the eye
               distance by cos(yaw) and leaves the drop, so drop grows as 1/cos(yaw).
    shift:     arcface-5 only: the nose tip's horizontal coordinate in the projective frame of
               the eyes and mouth corners (a unit square). Those four points are nearly on one
               plane, so no homography of a flat picture changes it; a head turning moves it.
    """

    parallax: float
    asymmetry: float
    drop: float
    shift: float = 0.0


def measure(
    landmarks: npt.NDArray[np.float64], scheme: LandmarkScheme = "dlib-5"
) -> FaceGeometry | None:
    """The geometry of one face's 5 landmarks, or None when they are degenerate."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2) or not np.all(np.isfinite(points)):
        raise ValueError("landmarks must be 5 finite (x, y) points")
    if scheme == "dlib-5":
        right_eye = points[0:2].mean(axis=0)
        left_eye = points[2:4].mean(axis=0)
        nose = points[4]
    else:
        left_eye, right_eye, nose = points[0], points[1], points[2]
    across = right_eye - left_eye
    eye_distance = float(np.hypot(*across))
    if eye_distance < 1e-6:
        return None
    unit = across / eye_distance
    down = np.array([-unit[1], unit[0]])
    middle = (left_eye + right_eye) / 2.0
    offset = nose - middle
    parallax = float(offset @ unit) / eye_distance
    drop = float(offset @ down) / eye_distance
    if drop <= 0.05:  # the nose on or above the eye line: not a face the 5 points describe
        return None
    if scheme == "dlib-5":
        asymmetry = _eye_asymmetry(points, left_eye, across, offset)
        if asymmetry is None:
            return None
        return FaceGeometry(parallax=parallax, asymmetry=asymmetry, drop=drop)
    shift = _projective_nose(points)
    if shift is None:
        return None
    return FaceGeometry(parallax=parallax, asymmetry=0.0, drop=drop, shift=shift)


def _eye_asymmetry(
    points: npt.NDArray[np.float64],
    left_eye: npt.NDArray[np.float64],
    across: npt.NDArray[np.float64],
    offset: npt.NDArray[np.float64],
) -> float | None:
    basis = np.column_stack([across, offset])
    if abs(float(np.linalg.det(basis))) < 1e-9:
        return None
    along = np.linalg.solve(basis, (points[0:4] - left_eye).T)[0]
    right_width = abs(float(along[0] - along[1]))
    left_width = abs(float(along[2] - along[3]))
    if min(left_width, right_width) < 1e-3:
        return None
    return math.log(left_width / right_width)


_UNIT_SQUARE = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])


def _projective_nose(points: npt.NDArray[np.float64]) -> float | None:
    """The nose's x in the homography that sends eyes and mouth corners to a unit square."""
    quad = points[[0, 1, 4, 3]]  # left eye, right eye, right mouth corner, left mouth corner
    rows = []
    values = []
    for (x, y), (u, v) in zip(quad, _UNIT_SQUARE, strict=True):
        rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y])
        rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y])
        values.extend([u, v])
    system = np.array(rows)
    if abs(float(np.linalg.det(system))) < 1e-12:
        return None
    h = np.append(np.linalg.solve(system, np.array(values)), 1.0).reshape(3, 3)
    mapped = h @ np.array([points[2, 0], points[2, 1], 1.0])
    if abs(float(mapped[2])) < 1e-12:
        return None
    return float(mapped[0] / mapped[2])


# ---------------------------------------------------------------- the active challenge


@dataclass(frozen=True)
class ChallengeSettings:
    """Thresholds of the active challenge; docs/liveness.md gives the figures behind them.

    Turns are measured from the shopper's first frames (the baseline, facing the camera), on
    the median of the last `smooth_frames` frames, in units of the eye distance.
    """

    time_limit_s: float = 6.0  # from the first frame observed to a decision
    # Nose parallax towards the asked side: a mean face turned 25-30 degrees (a clear turn; the
    # prompt asks for one). Flat pictures tilted steeply near the camera make dlib's nose point
    # reach 0.15-0.3, which the 3D cues below must then catch; few reach 0.25 for long.
    min_turn: float = 0.25
    # dlib-5: the eye-corner asymmetry must follow the nose, as a head's does. At least
    # max(min_asymmetry, min_asymmetry_ratio * turn) (a flat picture keeps it at 0), at most
    # max_asymmetry_ratio * turn + asymmetry_slack (the perspective of a tilted picture near the
    # camera makes it grow far faster than the nose moves).
    min_asymmetry: float = 0.06
    min_asymmetry_ratio: float = 0.35
    max_asymmetry_ratio: float = 2.5
    asymmetry_slack: float = 0.05
    # dlib-5: the eye distance must shrink, against the nose's drop, as a head turned that far
    # would: drop grows by g/cos(yaw), yaw = atan(turn / nose_depth), for a nose depth in
    # nose_depth_range (eye distances) and g in pitch_range (the head nodding while it turns),
    # give or take drop_slack. A picture turned like a door foreshortens much more.
    nose_depth_range: tuple[float, float] = (0.30, 0.80)
    pitch_range: tuple[float, float] = (0.85, 1.12)
    drop_slack: float = 0.05
    # arcface-5: the nose tip's projective coordinate must move at least this far (a flat
    # picture cannot move it), and at least min_shift_ratio of the parallax.
    min_shift: float = 0.08
    min_shift_ratio: float = 0.3
    baseline_frames: int = 3
    smooth_frames: int = 5
    hold_frames: int = 3  # consecutive (smoothed) frames that must show the turn
    min_frames: int = 8  # frames with a face before anything passes
    max_gap_s: float = 1.0  # longer without a face ends the session (face_lost)
    mirrored: bool = False  # True when frames are mirror images of the scene

    def __post_init__(self) -> None:
        if self.baseline_frames < 1 or self.smooth_frames < 1 or self.hold_frames < 1:
            raise ValueError("frame counts must be at least 1")
        if self.min_frames < self.baseline_frames + 1:
            raise ValueError("min_frames must exceed baseline_frames")
        low, high = self.nose_depth_range
        if not 0 < low <= high:
            raise ValueError("nose_depth_range must be positive and ordered")


@dataclass(frozen=True)
class _Judgement:
    """One (smoothed) frame against the asked direction."""

    verdict: str  # turned, no_turn, flat, perspective, foreshortened, door, no_shift
    turn: float  # nose parallax towards the asked side, from the baseline
    asymmetry: float  # dlib-5: eye-corner asymmetry towards the asked side, from the baseline
    drop_ratio: float  # dlib-5: drop / baseline drop
    low: float  # the bound the verdict broke (or 0.0)
    high: float
    shift: float = 0.0  # arcface-5: the nose tip's projective shift towards the asked side


@dataclass
class _Session:
    started_at: float
    direction: Direction
    sign: float  # +1: the nose should move towards the image's right
    first_ts: float | None = None
    last_ts: float | None = None
    frames: list[FaceGeometry] = field(default_factory=list)
    baseline: FaceGeometry | None = None
    streak: int = 0
    wrong_streak: int = 0
    best: _Judgement | None = None  # the largest turn seen towards the asked side
    flat: _Judgement | None = None  # the largest turn that a flat picture's cues gave away
    best_other: float = 0.0  # the largest turn seen the other way
    decided: LivenessResult | None = None


class ActiveChallenge:
    """Turn your head to a random side; the turn must show 3D parallax, not a flat picture's.

    `rng` picks the side (inject a seeded `random.Random` in tests); `landmarks` says which 5
    points the face engine gives. The time limit runs on the frames' timestamps from the first
    frame observed (`observe`) and on the caller's clock from `start` (`finish`): the two need
    not share an origin.
    """

    name = ACTIVE_CHALLENGE

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        settings: ChallengeSettings | None = None,
        landmarks: LandmarkScheme = "dlib-5",
        directions: Sequence[Direction] = ("left", "right"),
    ) -> None:
        if landmarks not in ("dlib-5", "arcface-5"):
            raise ValueError(f"unknown landmark scheme {landmarks!r}")
        if not directions or any(d not in ("left", "right") for d in directions):
            raise ValueError("directions must be a non-empty choice of 'left' and 'right'")
        self._rng = rng or random.SystemRandom()
        self.settings = settings or ChallengeSettings()
        self.landmarks: LandmarkScheme = landmarks
        self._directions = tuple(directions)
        self._session: _Session | None = None

    @property
    def direction(self) -> Direction:
        return self._current().direction

    def start(self, now: float) -> str:
        direction: Direction = self._rng.choice(self._directions)
        # The shopper's left is the image's right in a camera's (unmirrored) picture.
        sign = 1.0 if direction == "left" else -1.0
        if self.settings.mirrored:
            sign = -sign
        self._session = _Session(started_at=now, direction=direction, sign=sign)
        return f"turn_{direction}"

    def observe(
        self,
        *,
        timestamp: float,
        landmarks: npt.NDArray[np.float64],
        box: Box,
        same_person: bool,
        image: npt.NDArray[np.uint8] | None = None,
    ) -> LivenessResult | None:
        session = self._current()
        if session.decided is not None:
            return session.decided
        settings = self.settings
        if session.last_ts is not None and timestamp < session.last_ts:
            raise ValueError("frames must be observed in time order")
        if session.first_ts is None:
            session.first_ts = timestamp
        if not same_person:
            return self._decide(
                False,
                "identity_changed",
                "A frame showed someone other than the shopper who started the session.",
            )
        if session.last_ts is not None and timestamp - session.last_ts > settings.max_gap_s:
            gap = timestamp - session.last_ts
            return self._decide(
                False,
                "face_lost",
                f"The face was out of sight for {gap:.1f} s (at most {settings.max_gap_s:.1f} s"
                " between two frames).",
            )
        session.last_ts = timestamp
        if timestamp - session.first_ts > settings.time_limit_s:
            return self._forced(timed_out=True)
        geometry = measure(landmarks, self.landmarks)
        if geometry is None:
            return None
        session.frames.append(geometry)
        if len(session.frames) == settings.baseline_frames:
            session.baseline = _median_geometry(session.frames)
        if session.baseline is None:
            return None
        judgement = self._judge(
            _median_geometry(session.frames[-settings.smooth_frames :]), session.baseline
        )
        self._record(session, judgement)
        if session.wrong_streak >= settings.hold_frames:
            return self._decide(False, "wrong_direction", self._explain_wrong(session))
        if session.streak >= settings.hold_frames and len(session.frames) >= settings.min_frames:
            return self._decide(True, "passed", self._explain_pass(judgement))
        return None

    def finish(self, now: float) -> LivenessResult:
        session = self._current()
        if session.decided is not None:
            return session.decided
        return self._forced(timed_out=now - session.started_at >= self.settings.time_limit_s)

    # ------------------------------------------------------------ inside

    def _current(self) -> _Session:
        if self._session is None:
            raise RuntimeError("the challenge has not been started")
        return self._session

    def _decide(self, passed: bool, reason: str, explanation: str) -> LivenessResult:
        session = self._current()
        session.decided = LivenessResult(passed, self.name, reason, explanation)
        logger.info("liveness %s: %s", self.name, reason)
        return session.decided

    def _judge(self, now: FaceGeometry, base: FaceGeometry) -> _Judgement:
        settings = self.settings
        sign = self._current().sign
        turn = sign * (now.parallax - base.parallax)
        drop_ratio = now.drop / base.drop
        if self.landmarks == "arcface-5":
            shift = sign * (now.shift - base.shift)
            if turn < settings.min_turn:
                return _Judgement("no_turn", turn, 0.0, drop_ratio, settings.min_turn, 0.0, shift)
            needed = max(settings.min_shift, settings.min_shift_ratio * turn)
            verdict = "turned" if shift >= needed else "no_shift"
            return _Judgement(verdict, turn, 0.0, drop_ratio, needed, 0.0, shift)
        asymmetry = sign * (now.asymmetry - base.asymmetry)
        shallow, deep = settings.nose_depth_range
        down, up = settings.pitch_range
        most = up * math.hypot(1.0, abs(turn) / shallow) + settings.drop_slack
        if turn < settings.min_turn:
            if drop_ratio > most:  # foreshortened like a turned head, without the nose moving
                return _Judgement("door", turn, asymmetry, drop_ratio, 0.0, most)
            return _Judgement("no_turn", turn, asymmetry, drop_ratio, settings.min_turn, 0.0)
        low = max(settings.min_asymmetry, settings.min_asymmetry_ratio * turn)
        high = settings.max_asymmetry_ratio * turn + settings.asymmetry_slack
        if asymmetry < low:
            return _Judgement("flat", turn, asymmetry, drop_ratio, low, high)
        if asymmetry > high:
            return _Judgement("perspective", turn, asymmetry, drop_ratio, low, high)
        least = down * math.hypot(1.0, turn / deep) - settings.drop_slack
        if not least <= drop_ratio <= most:
            return _Judgement("foreshortened", turn, asymmetry, drop_ratio, least, most)
        return _Judgement("turned", turn, asymmetry, drop_ratio, low, high)

    def _record(self, session: _Session, judgement: _Judgement) -> None:
        session.streak = session.streak + 1 if judgement.verdict == "turned" else 0
        other = -judgement.turn
        session.wrong_streak = session.wrong_streak + 1 if other >= self.settings.min_turn else 0
        session.best_other = max(session.best_other, other)
        if session.best is None or judgement.turn > session.best.turn:
            session.best = judgement
        if judgement.verdict not in ("turned", "no_turn") and (
            session.flat is None or judgement.turn > session.flat.turn
        ):
            session.flat = judgement

    def _forced(self, *, timed_out: bool) -> LivenessResult:
        session = self._current()
        settings = self.settings
        limit = f" within the {settings.time_limit_s:.0f} s limit" if timed_out else ""
        seen = len(session.frames)
        if seen < settings.min_frames:
            return self._decide(
                False,
                "too_few_frames",
                f"Only {seen} frames with a face were seen{limit} (at least "
                f"{settings.min_frames} are needed).",
            )
        if session.flat is not None:
            explanation = self._explain_flat(session.flat)
            return self._decide(False, "flat_motion", f"{explanation}; no head turn{limit}.")
        moved = 0.0 if session.best is None else max(0.0, session.best.turn)
        return self._decide(
            False,
            "timed_out" if timed_out else "no_turn",
            f"No turn {self._side()} held{limit or ' before the end'}: the nose moved at most "
            f"{moved:.2f} of the eye distance that way (at least {settings.min_turn:.2f}, held "
            f"{settings.hold_frames} frames, is needed).",
        )

    def _side(self) -> str:
        return f"to the shopper's {self._current().direction}"

    def _explain_pass(self, judgement: _Judgement) -> str:
        settings = self.settings
        if self.landmarks == "arcface-5":
            return (
                f"The nose moved {judgement.turn:.2f} of the eye distance {self._side()} and its "
                f"tip moved {judgement.shift:.2f} in the frame of the eyes and mouth (a flat "
                f"picture cannot move it; at least {judgement.low:.2f} needed), held "
                f"{settings.hold_frames} frames: a head turned."
            )
        return (
            f"The nose moved {judgement.turn:.2f} of the eye distance {self._side()} (at least "
            f"{settings.min_turn:.2f} needed) and the eye corners' spacing changed with it "
            f"(asymmetry {judgement.asymmetry:.2f}, between {judgement.low:.2f} and "
            f"{judgement.high:.2f} for that turn; a flat picture keeps it), the eye distance "
            f"shrank as a turned head's does (drop ratio {judgement.drop_ratio:.2f}), held "
            f"{settings.hold_frames} frames: a head turned."
        )

    def _explain_flat(self, best: _Judgement) -> str:
        moved = f"The nose moved {best.turn:.2f} of the eye distance {self._side()}"
        if best.verdict == "no_shift":
            return (
                f"{moved} but its tip kept its place in the frame of the eyes and mouth (moved "
                f"{best.shift:.2f}, at least {best.low:.2f} needed): a flat picture tilted or "
                "warped, not a head"
            )
        if best.verdict == "flat":
            return (
                f"{moved} but the eye corners kept their spacing (asymmetry "
                f"{best.asymmetry:.2f}, at least {best.low:.2f} needed for that turn): a flat "
                "picture moved, sheared or tilted, not a head"
            )
        if best.verdict == "door":
            return (
                f"The eye distance shrank against the nose's drop as if the head turned (drop "
                f"ratio {best.drop_ratio:.2f}, above {best.high:.2f} for a head whose nose moved "
                f"{best.turn:.2f}) but the nose stayed between the eyes: a flat picture turned "
                "like a door"
            )
        if best.verdict == "perspective":
            return (
                f"{moved} but the eye corners' spacing changed far more than a head's would "
                f"(asymmetry {best.asymmetry:.2f}, at most {best.high:.2f} for that turn): the "
                "perspective of a flat picture tilted near the camera"
            )
        return (
            f"{moved} but the eye distance did not shrink against the nose's drop as a turned "
            f"head's does (drop ratio {best.drop_ratio:.2f}, expected between {best.low:.2f} "
            f"and {best.high:.2f}): a flat picture turned or tilted"
        )

    def _explain_wrong(self, session: _Session) -> str:
        other = "right" if session.direction == "left" else "left"
        return (
            f"The nose moved {session.best_other:.2f} of the eye distance to the shopper's "
            f"{other}; the challenge asked for the {session.direction}."
        )


def _median_geometry(frames: Sequence[FaceGeometry]) -> FaceGeometry:
    return FaceGeometry(
        parallax=median(f.parallax for f in frames),
        asymmetry=median(f.asymmetry for f in frames),
        drop=median(f.drop for f in frames),
        shift=median(f.shift for f in frames),
    )


# ---------------------------------------------------------------- no check


class NoLiveness:
    """No presentation-attack check (recorded sources, `--liveness off`): passes at once."""

    name = NO_LIVENESS

    def start(self, now: float) -> str:
        return "hold_still"

    def observe(
        self,
        *,
        timestamp: float,
        landmarks: npt.NDArray[np.float64],
        box: Box,
        same_person: bool,
        image: npt.NDArray[np.uint8] | None = None,
    ) -> LivenessResult:
        return self.finish(timestamp)

    def finish(self, now: float) -> LivenessResult:
        return LivenessResult(True, self.name, "passed", "Liveness is off: nothing was checked.")


# ---------------------------------------------------------------- insightface's addon


@dataclass(frozen=True)
class AddonModel:
    """A liveness model file: where insightface keeps it, its pin and its input format."""

    filename: str
    sha256: str
    input_size: int  # square RGB crop, aligned on the 5 landmarks
    threshold: float  # live probability at or above which a frame counts as live
    landmarks: LandmarkScheme


# insightface's "liveness" addon (insightface.addons.catalog, insightface >= 2.1): an 80x80 RGB
# crop aligned on SCRFD's 5 points, one live probability out. Its licence is not stated in the
# package: treat it as insightface's pretrained models (non-commercial research) until checked.
INSIGHTFACE_LIVENESS = AddonModel(
    filename="liveness.onnx",
    sha256="87a9ac1dbb16a61eec212957e5095e62a8769c1e188af9b0198f253302c4afdb",
    input_size=80,
    threshold=0.8,
    landmarks="arcface-5",
)


def insightface_addon_path(
    root: Path | None = None, addon: AddonModel = INSIGHTFACE_LIVENESS
) -> Path:
    """Where insightface keeps the addon: <insightface root>/addons/<file>; never downloaded
    here (insightface's `ensure_addon` would fetch it: copy the file there to install it)."""
    if root is None:
        from models.packs import insightface_root

        root = insightface_root()
    return root / "addons" / addon.filename


class InsightfaceLiveness:
    """insightface's RGB liveness addon, frame by frame: passes after `live_frames`
    consecutive live frames, fails at the first `spoof_frames` frames judged not live.

    Needs each frame's image (RGB) and insightface's 5 landmarks (an insightface pack's SCRFD
    detector); the file is checked against its sha256 before a session is made from it.
    """

    name = INSIGHTFACE

    def __init__(
        self,
        model_path: Path,
        *,
        addon: AddonModel = INSIGHTFACE_LIVENESS,
        live_frames: int = 3,
        spoof_frames: int = 2,
        time_limit_s: float = 6.0,
        threshold: float | None = None,
    ) -> None:
        from models.errors import ChecksumError, PackError
        from models.packs import sha256_file

        if not model_path.is_file():
            raise PackError(f"the liveness model is missing at {model_path}", code="pack_missing")
        actual = sha256_file(model_path)
        if actual != addon.sha256:
            raise ChecksumError(
                f"{model_path.name}: sha256 {actual[:12]}… is not the pinned {addon.sha256[:12]}…"
            )
        from insightface.addons.liveness import Liveness

        self.addon = addon
        self._model: Any = Liveness(
            str(model_path),
            threshold=addon.threshold if threshold is None else threshold,
            providers=["CPUExecutionProvider"],
        )
        self._live_frames = live_frames
        self._spoof_frames = spoof_frames
        self._time_limit_s = time_limit_s
        self._started_at: float | None = None
        self._first_ts: float | None = None
        self._seen = 0
        self._live = 0
        self._spoof = 0
        self._rejected = 0
        self._decided: LivenessResult | None = None

    def start(self, now: float) -> str:
        self._started_at = now
        self._first_ts = None
        self._seen = self._live = self._spoof = self._rejected = 0
        self._decided = None
        return "hold_still"

    def observe(
        self,
        *,
        timestamp: float,
        landmarks: npt.NDArray[np.float64],
        box: Box,
        same_person: bool,
        image: npt.NDArray[np.uint8] | None = None,
    ) -> LivenessResult | None:
        if self._started_at is None:
            raise RuntimeError("the check has not been started")
        if self._decided is not None:
            return self._decided
        if self._first_ts is None:
            self._first_ts = timestamp
        if not same_person:
            return self._decide(
                False,
                "identity_changed",
                "A frame showed someone other than the shopper who started the session.",
            )
        if image is None:
            return self._decide(
                False, "no_image", "The insightface check needs each frame's image; none came."
            )
        if timestamp - self._first_ts > self._time_limit_s:
            return self.finish(self._started_at + self._time_limit_s)
        bgr = np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[:, :, ::-1])
        verdict = self._model.predict(bgr, np.asarray(landmarks, dtype=np.float32))
        self._seen += 1
        if verdict["status"] != "ok":
            self._rejected += 1  # the face too near the frame's edge for the aligned crop
            self._live = 0
            return None
        if verdict["is_live"]:
            self._live += 1
        else:
            self._live = 0
            self._spoof += 1
        if self._spoof >= self._spoof_frames:
            return self._decide(
                False,
                "spoof_detected",
                f"insightface's liveness model judged {self._spoof} of {self._seen} frames not "
                "live.",
            )
        if self._live >= self._live_frames:
            return self._decide(
                True,
                "passed",
                f"insightface's liveness model judged {self._live} frames in a row live.",
            )
        return None

    def finish(self, now: float) -> LivenessResult:
        if self._started_at is None:
            raise RuntimeError("the check has not been started")
        if self._decided is not None:
            return self._decided
        timed_out = now - self._started_at >= self._time_limit_s
        limit = f" within the {self._time_limit_s:.0f} s limit" if timed_out else ""
        return self._decide(
            False,
            "timed_out" if timed_out else "too_few_frames",
            f"No {self._live_frames} live frames in a row{limit or ' before the end'}: "
            f"{self._seen} frames judged, {self._rejected} of them with the face too near the "
            "frame's edge.",
        )

    def _decide(self, passed: bool, reason: str, explanation: str) -> LivenessResult:
        self._decided = LivenessResult(passed, self.name, reason, explanation)
        logger.info("liveness %s: %s", self.name, reason)
        return self._decided


# ---------------------------------------------------------------- choosing


def choose_check(
    mode: Mode | str,
    *,
    rng: random.Random | None = None,
    landmarks: LandmarkScheme = "dlib-5",
    insightface_root: Path | None = None,
    settings: ChallengeSettings | None = None,
    addon: AddonModel = INSIGHTFACE_LIVENESS,
) -> LivenessCheck:
    """The check for a `--liveness` mode.

    auto:        insightface's addon when its file is installed and the engine gives
                 insightface's landmarks (an insightface pack), else the active challenge;
    active:      the active challenge; insightface: the addon or an error; off: no check.
    A present addon file with the wrong sha256 is an error in every mode that would use it.
    """
    if mode == "off":
        return NoLiveness()
    if mode == "active":
        return ActiveChallenge(rng=rng, settings=settings, landmarks=landmarks)
    if mode not in ("auto", "insightface"):
        raise KioskError(
            f"unknown liveness mode {mode!r} (auto, active, insightface, off)",
            code="bad_liveness_mode",
        )
    path = insightface_addon_path(insightface_root, addon)
    problem = None
    if not path.is_file():
        problem = f"insightface's liveness addon is not installed at {path}"
    elif landmarks != addon.landmarks:
        problem = (
            f"insightface's liveness addon needs {addon.landmarks} landmarks "
            f"(an insightface pack); the engine gives {landmarks}"
        )
    if problem is None:
        return InsightfaceLiveness(path, addon=addon)
    if mode == "insightface":
        raise KioskError(problem, code="liveness_unavailable")
    logger.info("liveness: %s; using the active challenge", problem)
    return ActiveChallenge(rng=rng, settings=settings, landmarks=landmarks)
