"""The liveness checks.

Flat pictures of real people (../shared/faces) moved, rotated, scaled, tilted and warped in
front of a simulated camera go through the real face engine and are all rejected. There is no
video of real head turns here, so genuine turns are a 3D model of the five landmarks turning
in front of a pinhole camera, with pixel noise; the same model squashed flat must fail. Every
decision's explanation is checked for its reason. Time is the frames' timestamps, never the
wall clock.
"""

from __future__ import annotations

import csv
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from kiosk.errors import KioskError
from kiosk.liveness import (
    INSIGHTFACE_LIVENESS,
    ActiveChallenge,
    AddonModel,
    ChallengeSettings,
    Direction,
    InsightfaceLiveness,
    LandmarkScheme,
    LivenessResult,
    NoLiveness,
    choose_check,
    insightface_addon_path,
    measure,
)
from models.errors import ChecksumError
from models.images import load_image
from models.packs import sha256_file

# A webcam: 640x480, focal length 600 px (about 56 degrees across).
WIDTH, HEIGHT, FOCAL = 640, 480, 600.0
CENTRE = np.array([WIDTH / 2, HEIGHT / 2])
FRAME_S = 0.15  # seconds between frames with a face (about 7 a second)
FLAT_REASONS = {"no_turn", "flat_motion", "wrong_direction", "too_few_frames", "face_lost"}

Frames = list[tuple[float, np.ndarray]]  # (timestamp, 5x2 landmarks)


# ---------------------------------------------------------------- a head in front of a camera


@dataclass(frozen=True)
class Head:
    """A typical adult's five landmarks, in mm: x towards the image's right, y down, z towards
    the camera, origin between the inner eye corners. The outer eye corners sit a few mm behind
    the inner ones and the nose base some 20-30 mm in front of them (anthropometric means:
    inner corners ~34 mm apart, outer ~90 mm, nose base ~42 mm below the eye line)."""

    inner: float = 17.0
    outer: float = 45.0
    corner_depth: float = 6.0  # outer corners behind the inner ones
    corner_rise: float = 3.0  # outer corners above the inner ones
    nose_drop: float = 42.0
    nose_depth: float = 25.0

    def dlib5(self) -> np.ndarray:
        """dlib's order: image-right eye (outer, inner), image-left eye (outer, inner), nose."""
        o, i, d, r = self.outer, self.inner, self.corner_depth, self.corner_rise
        return np.array(
            [[o, -r, -d], [i, 0, 0], [-o, -r, -d], [-i, 0, 0], [0, self.nose_drop, self.nose_depth]]
        )

    @staticmethod
    def arcface5() -> np.ndarray:
        """insightface's order: eye centres (image-left, image-right), nose tip, mouth corners."""
        return np.array(
            [[-31, -1, -2], [31, -1, -2], [0, 30, 38], [-25, 66, 4], [25, 66, 4]], dtype=float
        )

    @classmethod
    def random(cls, rng: np.random.Generator) -> Head:
        return cls(
            inner=rng.uniform(15.5, 18.5),
            outer=rng.uniform(42.0, 48.0),
            corner_depth=rng.uniform(4.0, 7.0),
            corner_rise=rng.uniform(1.0, 5.0),
            nose_drop=rng.uniform(38.0, 46.0),
            nose_depth=rng.uniform(20.0, 30.0),
        )


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Degrees; positive yaw turns +z (the face's front) towards +x (the image's right)."""
    y, p, r = np.radians([yaw, pitch, roll])
    about_y = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    about_x = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    about_z = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def project(
    points: np.ndarray, yaw: float, pitch: float, roll: float, distance: float
) -> np.ndarray:
    """A pinhole camera's view of the head turned about its neck (90 mm behind the eyes)."""
    pivot = np.array([0.0, 30.0, -90.0])
    turned = (rotation(yaw, pitch, roll) @ (points - pivot).T).T + pivot
    depth = distance - turned[:, 2]
    return np.column_stack(
        [CENTRE[0] + FOCAL * turned[:, 0] / depth, CENTRE[1] + FOCAL * turned[:, 1] / depth]
    )


def head_turn(
    seed: int,
    yaw_sign: float,
    *,
    max_yaw: tuple[float, float] = (35.0, 45.0),
    flatten: bool = False,
    delay_s: float = 0.0,
    noise_px: float = 1.0,
    scheme: LandmarkScheme = "dlib-5",
) -> Frames:
    """A shopper facing the camera, then turning (yaw_sign +1: the nose to the image's right,
    the shopper's left) while nodding and rolling a little, and holding the turn until the
    screen answers (about a second here); landmarks with Gaussian noise."""
    rng = np.random.default_rng(seed)
    points = Head.random(rng).dlib5() if scheme == "dlib-5" else Head.arcface5()
    if flatten:
        points = points * np.array([1.0, 1.0, 0.0])
    eye_distance_px = rng.uniform(60.0, 110.0)  # a shopper 35-60 cm from the camera
    distance = FOCAL * 62.0 / eye_distance_px
    peak = rng.uniform(*max_yaw)
    pitch, nod, roll = rng.uniform(-8, 8), rng.uniform(-6, 6), rng.uniform(-5, 5)
    turning = int(rng.integers(6, 16))  # 0.9-2.4 s to turn
    still = 4 + round(delay_s / FRAME_S)
    frames: Frames = []
    for index in range(still + turning + 8):
        progress = min(1.0, max(0.0, (index - still) / turning))
        eased = 0.5 - 0.5 * math.cos(math.pi * progress)
        seen = project(points, yaw_sign * peak * eased, pitch + nod * eased, roll, distance)
        frames.append((index * FRAME_S, seen + rng.normal(0.0, noise_px, seen.shape)))
    return frames


def feed(
    check: Any,
    frames: Frames,
    *,
    same_person: Callable[[int], bool] = lambda index: True,
    finish_at: float | None = None,
) -> LivenessResult:
    """Frames in order until the check decides; else its forced decision."""
    for index, (timestamp, landmarks) in enumerate(frames):
        result = check.observe(
            timestamp=timestamp,
            landmarks=landmarks,
            box=(0, 0, WIDTH, HEIGHT),
            same_person=same_person(index),
        )
        if result is not None:
            return result
    end = frames[-1][0] + FRAME_S if finish_at is None else finish_at
    return check.finish(end)


def challenge(seed: int, scheme: LandmarkScheme = "dlib-5") -> tuple[ActiveChallenge, float]:
    """A started challenge and the yaw sign that answers its prompt."""
    check = ActiveChallenge(rng=random.Random(seed), landmarks=scheme)
    prompt = check.start(0.0)
    assert prompt == f"turn_{check.direction}"
    return check, 1.0 if check.direction == "left" else -1.0


# ---------------------------------------------------------------- the measure


def test_asymmetry_is_unchanged_by_any_affine_map_but_the_parallax_is_not() -> None:
    """Why the nose alone proves nothing: shearing a flat picture moves it like a turn; the eye
    corners' asymmetry, measured in the affine frame of the eyes and nose, cannot change."""
    rng = np.random.default_rng(7)
    face = project(Head().dlib5(), 0.0, 0.0, 0.0, 450.0)
    before = measure(face)
    assert before is not None
    for _ in range(50):
        linear = (
            np.array([[1.0, rng.uniform(-0.4, 0.4)], [0.0, 1.0]])
            @ rotation(0, 0, rng.uniform(-40, 40))[:2, :2]
        )
        linear = linear * rng.uniform(0.5, 2.0) @ np.diag([rng.uniform(0.6, 1.0), 1.0])
        after = measure(face @ linear.T + rng.uniform(-200, 200, 2))
        assert after is not None
        assert after.asymmetry == pytest.approx(before.asymmetry, abs=1e-9)
    sheared = measure(face @ np.array([[1.0, 0.4], [0.0, 1.0]]).T)
    assert sheared is not None and sheared.parallax - before.parallax > 0.25


def test_arcface_nose_shift_is_unchanged_by_any_homography() -> None:
    rng = np.random.default_rng(8)
    face = project(Head.arcface5() * np.array([1, 1, 0]), 0, 0, 0, 450.0)
    before = measure(face, "arcface-5")
    assert before is not None
    for _ in range(50):
        warp = np.eye(3) + np.diag([1.0, 1.0, 0.0]) * rng.uniform(-0.2, 0.2)
        warp[2, :2] = rng.uniform(-1e-3, 1e-3, 2)
        warp[:2, 2] = rng.uniform(-100, 100, 2)
        warp[0, 1] = rng.uniform(-0.4, 0.4)
        moved = cv2.perspectiveTransform(face.reshape(-1, 1, 2), warp).reshape(-1, 2)
        after = measure(moved, "arcface-5")
        assert after is not None
        assert after.shift == pytest.approx(before.shift, abs=1e-6)


# ---------------------------------------------------------------- genuine turns


@pytest.mark.parametrize("seed", range(30))
def test_a_head_turning_as_asked_passes(seed: int) -> None:
    check, sign = challenge(seed)
    result = feed(check, head_turn(seed, sign))
    assert result.passed, result.explanation
    assert (result.check, result.reason) == ("active-challenge", "passed")
    assert f"to the shopper's {check.direction}" in result.explanation
    assert "a head turned" in result.explanation


@pytest.mark.parametrize("seed", range(10))
def test_a_head_turning_passes_with_insightface_landmarks(seed: int) -> None:
    check, sign = challenge(seed, "arcface-5")
    result = feed(check, head_turn(seed, sign, scheme="arcface-5"))
    assert result.passed, result.explanation


@pytest.mark.parametrize("seed", range(10))
def test_a_head_turning_the_other_way_fails(seed: int) -> None:
    check, sign = challenge(seed)
    result = feed(check, head_turn(seed, -sign))
    assert (result.passed, result.reason) == (False, "wrong_direction")
    assert f"asked for the {check.direction}" in result.explanation


@pytest.mark.parametrize("seed", range(10))
def test_too_small_a_turn_fails(seed: int) -> None:
    check, sign = challenge(seed)
    result = feed(check, head_turn(seed, sign, max_yaw=(8.0, 14.0)))
    assert (result.passed, result.reason) == (False, "no_turn")
    assert "No turn" in result.explanation and "at least 0.25" in result.explanation


@pytest.mark.parametrize("seed", range(5))
def test_a_turn_after_the_time_limit_fails(seed: int) -> None:
    check, sign = challenge(seed)
    late = head_turn(seed, sign, delay_s=ChallengeSettings().time_limit_s)
    result = feed(check, late)
    assert (result.passed, result.reason) == (False, "timed_out")
    assert "within the 6 s limit" in result.explanation


def test_finish_at_the_time_limit_times_out() -> None:
    check, sign = challenge(3)
    frames = head_turn(3, sign, delay_s=3.0)[:12]  # still facing the camera
    result = feed(check, frames, finish_at=6.0)
    assert (result.passed, result.reason) == (False, "timed_out")


@pytest.mark.parametrize("seed", range(5))
def test_another_person_during_the_turn_fails(seed: int) -> None:
    check, sign = challenge(seed)
    result = feed(check, head_turn(seed, sign), same_person=lambda index: index < 6)
    assert (result.passed, result.reason) == (False, "identity_changed")
    assert "someone other" in result.explanation


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("scheme", ["dlib-5", "arcface-5"])
def test_the_same_turn_of_a_flat_face_fails(seed: int, scheme: LandmarkScheme) -> None:
    """All five points on one plane: a photo turned like a door, seen through the same camera."""
    check, sign = challenge(seed, scheme)
    result = feed(check, head_turn(seed, sign, flatten=True, scheme=scheme))
    assert not result.passed
    assert result.reason in ("flat_motion", "no_turn"), result.explanation
    assert "flat picture" in result.explanation or "No turn" in result.explanation


def test_too_few_frames_and_a_lost_face_fail() -> None:
    check, sign = challenge(1)
    frames = head_turn(1, sign)
    assert feed(check, frames[:4]).reason == "too_few_frames"
    check.start(10.0)
    gap = [*frames[:5], *[(t + 1.5, points) for t, points in frames[5:]]]
    result = feed(check, gap)
    assert (result.reason, result.passed) == ("face_lost", False)
    assert "out of sight for 1.6 s" in result.explanation


def test_a_decision_is_final_until_the_next_start() -> None:
    check, sign = challenge(2)
    frames = head_turn(2, sign)
    first = feed(check, frames)
    assert first.passed
    assert (
        check.observe(timestamp=99.0, landmarks=frames[0][1], box=(0, 0, 1, 1), same_person=False)
        == first
    )
    assert check.finish(99.0) == first
    check.start(100.0)
    again = feed(check, [(t + 100.0, points) for t, points in frames[:5]])
    assert again.reason == "too_few_frames"


def test_the_side_is_drawn_from_the_injected_random() -> None:
    sides = Counter()
    check = ActiveChallenge(rng=random.Random(5))
    for _ in range(200):
        check.start(0.0)
        sides[check.direction] += 1
    assert set(sides) == {"left", "right"} and min(sides.values()) > 70
    only: tuple[Direction, ...] = ("right",)
    assert ActiveChallenge(directions=only).start(0.0) == "turn_right"


def test_mirrored_frames_swap_the_sides() -> None:
    check = ActiveChallenge(rng=random.Random(0), settings=ChallengeSettings(mirrored=True))
    check.start(0.0)
    sign = 1.0 if check.direction == "left" else -1.0
    assert feed(check, head_turn(4, -sign)).passed


def test_observing_before_start_or_out_of_order_is_an_error() -> None:
    check = ActiveChallenge(rng=random.Random(0))
    points = project(Head().dlib5(), 0, 0, 0, 450.0)
    with pytest.raises(RuntimeError):
        check.observe(timestamp=0.0, landmarks=points, box=(0, 0, 1, 1), same_person=True)
    check.start(0.0)
    check.observe(timestamp=1.0, landmarks=points, box=(0, 0, 1, 1), same_person=True)
    with pytest.raises(ValueError, match="time order"):
        check.observe(timestamp=0.5, landmarks=points, box=(0, 0, 1, 1), same_person=True)


# ---------------------------------------------------------------- flat pictures of real faces


@dataclass(frozen=True)
class Tilt:
    """A flat picture's pose in front of the camera: turned about the vertical and horizontal
    axes through the face, rotated in its plane, moved nearer (scale) and sideways."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0

    def blend(self, end: Tilt, t: float) -> Tilt:
        values = [
            a + (b - a) * t for a, b in zip(vars(self).values(), vars(end).values(), strict=True)
        ]
        return Tilt(*values)

    def homography(self, pivot: np.ndarray) -> np.ndarray:
        """The picture lies at the focal distance, so at rest each pixel maps to itself."""
        turn = rotation(self.yaw, self.pitch, self.roll)
        camera = np.array([[FOCAL, 0, CENTRE[0]], [0, FOCAL, CENTRE[1]], [0, 0, 1.0]])
        back = np.array([[1, 0, -CENTRE[0]], [0, 1, -CENTRE[1]], [0, 0, FOCAL]])
        anchor = np.array([pivot[0] - CENTRE[0], pivot[1] - CENTRE[1], FOCAL])
        plane = camera @ (turn @ back + np.outer((np.eye(3) - turn) @ anchor, [0, 0, 1]))
        zoom = np.array(
            [
                [self.scale, 0, (1 - self.scale) * pivot[0] + self.dx],
                [0, self.scale, (1 - self.scale) * pivot[1] + self.dy],
                [0, 0, 1],
            ]
        )
        return zoom @ plane


FAMILIES = ("in-plane", "door", "nod", "oblique", "warp")


def end_pose(family: str, rng: np.random.Generator) -> Tilt:
    def side(low: float, high: float) -> float:
        return float(rng.choice([-1, 1]) * rng.uniform(low, high))

    if family == "in-plane":  # moved, rotated, brought nearer or further
        return Tilt(
            roll=side(10, 35), scale=rng.uniform(0.7, 1.3), dx=side(20, 80), dy=side(10, 50)
        )
    if family == "door":  # turned about the vertical axis, as if it were the head turning
        return Tilt(yaw=side(30, 70), pitch=rng.uniform(-5, 5), scale=rng.uniform(0.85, 1.15))
    if family == "nod":  # tilted about the horizontal axis
        return Tilt(pitch=side(30, 70), yaw=rng.uniform(-5, 5), scale=rng.uniform(0.85, 1.15))
    if family == "oblique":  # both at once: the tilt that shears the face the most
        return Tilt(yaw=side(25, 65), pitch=side(25, 65), roll=rng.uniform(-15, 15))
    return Tilt(yaw=side(5, 25), pitch=side(5, 25), dx=side(0, 40))  # plus growing warps


@dataclass(frozen=True)
class FlatAttack:
    name: str
    family: str
    frames: Frames  # the faces the engine found, with their timestamps
    shown: int  # frames shown to the camera


def flat_attack(
    engine: Any, photo: np.ndarray, landmarks: np.ndarray, name: str, seed: int
) -> FlatAttack:
    """One picture held in front of the camera: still at first, then moved to a random pose,
    every frame also warped by a small random homography (a hand is not a robot)."""
    rng = np.random.default_rng(seed)
    family = FAMILIES[seed % len(FAMILIES)]
    eye_distance = float(np.hypot(*(landmarks[0:2].mean(0) - landmarks[2:4].mean(0))))
    zoom = rng.uniform(60.0, 120.0) / eye_distance
    small = cv2.resize(photo, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_AREA)
    pivot = CENTRE + np.array([rng.uniform(-60, 60), rng.uniform(-30, 30)])
    offset = pivot - landmarks.mean(axis=0) * zoom
    canvas = cv2.warpAffine(
        small,
        np.array([[1, 0, offset[0]], [0, 1, offset[1]]]),
        (WIDTH, HEIGHT),
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(128, 128, 128),
    )
    start = Tilt(yaw=rng.uniform(-4, 4), pitch=rng.uniform(-4, 4), roll=rng.uniform(-4, 4))
    end = end_pose(family, rng)
    corners = np.array([[0, 0], [WIDTH, 0], [WIDTH, HEIGHT], [0, HEIGHT]], dtype=np.float32)
    drift = rng.normal(0.0, 0.06 * WIDTH, corners.shape) if family == "warp" else 0.0
    count = int(rng.integers(10, 21))
    frames: Frames = []
    for index in range(count):
        t = min(1.0, max(0.0, (index - 2) / (count - 3)))
        shake = corners + rng.normal(0.0, 3.0, corners.shape) + drift * t
        jitter = cv2.getPerspectiveTransform(corners, shake.astype(np.float32))
        warp = jitter @ start.blend(end, t).homography(pivot)
        shown = cv2.warpPerspective(
            canvas, warp, (WIDTH, HEIGHT), borderMode=cv2.BORDER_CONSTANT, borderValue=(128,) * 3
        )
        faces = engine.analyse(shown)
        if faces:
            frames.append((index * FRAME_S, faces[0].landmarks))
    return FlatAttack(f"{name} seed {seed} ({family})", family, frames, count)


@pytest.fixture(scope="module")
def flat_photos(faces_dir: Path, engine: Any) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The first labelled photo of each of eight people, with its face's landmarks."""
    with (faces_dir / "identities.csv").open(newline="") as handle:
        rows = sorted((row["identity"], row["file"]) for row in csv.DictReader(handle))
    first: dict[str, str] = {}
    for identity, name in rows:
        first.setdefault(identity, name)
    chosen = []
    for identity in sorted(first)[:8]:
        photo = load_image(faces_dir / "images" / first[identity])
        faces = engine.analyse(photo)
        assert faces, first[identity]
        chosen.append((f"{identity}/{first[identity]}", photo, faces[0].landmarks))
    return chosen


def test_flat_pictures_moved_tilted_and_warped_are_all_rejected(
    flat_photos: Sequence[tuple[str, np.ndarray, np.ndarray]], engine: Any
) -> None:
    """25 sequences over eight people's photos, five kinds of motion. Each is judged for both
    sides, since an attacker sees the prompt before moving the picture."""
    reasons: Counter[str] = Counter()
    passed, judged = [], 0
    for seed in range(25):
        name, photo, landmarks = flat_photos[seed % len(flat_photos)]
        attack = flat_attack(engine, photo, landmarks, name, seed)
        if len(attack.frames) >= ChallengeSettings().min_frames:
            judged += 1
        for direction in ("left", "right"):
            check = ActiveChallenge(rng=random.Random(seed), directions=(direction,))
            check.start(0.0)
            result = feed(check, attack.frames, finish_at=attack.shown * FRAME_S)
            reasons[result.reason] += 1
            if result.passed:
                passed.append(f"{attack.name} {direction}: {result.explanation}")
                continue
            assert result.reason in FLAT_REASONS, (attack.name, result)
            assert any(char.isdigit() for char in result.explanation), result.explanation
    assert not passed, "\n".join(passed)
    assert judged >= 20, f"only {judged} sequences kept a face in enough frames to judge"
    assert reasons["flat_motion"] > 0, reasons  # the 3D cues, not just small motion, rejected some


# ---------------------------------------------------------------- no check, insightface, choosing


def test_no_liveness_passes_at_once() -> None:
    check = NoLiveness()
    assert check.start(0.0) == "hold_still"
    points = project(Head().dlib5(), 0, 0, 0, 450.0)
    result = check.observe(timestamp=0.1, landmarks=points, box=(0, 0, 1, 1), same_person=True)
    assert result == check.finish(0.2)
    assert (result.passed, result.check, result.reason) == (True, "none", "passed")


def tiny_liveness_model() -> bytes:
    """The addon's signature, (N, 3, 80, 80) RGB/255 in, (N,) live probability out; here the
    probability is the crop's mean brightness, so a test picks the answer with the picture."""
    from onnx import TensorProto, checker, helper

    node = helper.make_node("ReduceMean", ["input"], ["live"], axes=[1, 2, 3], keepdims=0)
    graph = helper.make_graph(
        [node],
        "tiny_liveness",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 80, 80])],
        [helper.make_tensor_value_info("live", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    checker.check_model(model)
    return bytes(model.SerializeToString())


@pytest.fixture
def addon(tmp_path: Path) -> tuple[Path, AddonModel]:
    path = insightface_addon_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(tiny_liveness_model())
    pinned = AddonModel(
        filename=path.name,
        sha256=sha256_file(path),
        input_size=80,
        threshold=0.8,
        landmarks="arcface-5",
    )
    return tmp_path, pinned


ARCFACE_POINTS = np.array([[80, 90], [120, 90], [100, 115], [84, 140], [116, 140]], dtype=float)


def show(check: Any, brightness: int, frames: int, **kwargs: Any) -> LivenessResult | None:
    image = np.full((200, 200, 3), brightness, dtype=np.uint8)
    result = None
    for index in range(frames):
        result = check.observe(
            timestamp=index * FRAME_S,
            landmarks=ARCFACE_POINTS,
            box=(60, 60, 140, 160),
            same_person=kwargs.get("same_person", True),
            image=kwargs.get("image", image),
        )
        if result is not None:
            return result
    return result


def test_insightface_addon_passes_live_frames_and_stops_spoofs(
    addon: tuple[Path, AddonModel],
) -> None:
    root, pinned = addon
    check = choose_check("auto", landmarks="arcface-5", insightface_root=root, addon=pinned)
    assert isinstance(check, InsightfaceLiveness) and check.name == "insightface"
    assert check.start(0.0) == "hold_still"
    assert show(check, 240, 2) is None
    live = show(check, 240, 1)
    assert live is not None and (live.passed, live.reason) == (True, "passed")
    check.start(1.0)
    spoof = show(check, 40, 5)
    assert spoof is not None and (spoof.passed, spoof.reason) == (False, "spoof_detected")
    assert "not live" in spoof.explanation and "0." not in spoof.explanation  # no score shown
    check.start(2.0)
    missing = show(check, 240, 1, image=None)
    assert missing is not None and missing.reason == "no_image"
    check.start(3.0)
    other = show(check, 240, 1, same_person=False)
    assert other is not None and other.reason == "identity_changed"
    check.start(4.0)
    assert check.finish(5.0).reason == "too_few_frames"
    check.start(6.0)
    late = check.finish(12.0)
    assert (late.reason, late.passed) == ("timed_out", False)
    assert "within the 6 s limit" in late.explanation


def test_insightface_addon_with_the_wrong_sha256_is_refused(addon: tuple[Path, AddonModel]) -> None:
    root, _ = addon
    with pytest.raises(ChecksumError):
        choose_check("auto", landmarks="arcface-5", insightface_root=root)


def test_choose_check_picks_what_is_available(
    tmp_path: Path, addon: tuple[Path, AddonModel]
) -> None:
    assert isinstance(choose_check("off"), NoLiveness)
    active = choose_check("active", rng=random.Random(1))
    assert isinstance(active, ActiveChallenge) and active.name == "active-challenge"
    empty = tmp_path / "empty"
    auto = choose_check("auto", insightface_root=empty)
    assert isinstance(auto, ActiveChallenge) and auto.landmarks == "dlib-5"
    root, pinned = addon
    # The addon needs insightface's landmarks: with dlib's, auto falls back to the challenge.
    dlib_engine = choose_check("auto", insightface_root=root, addon=pinned)
    assert isinstance(dlib_engine, ActiveChallenge)
    with pytest.raises(KioskError) as missing:
        choose_check("insightface", landmarks="arcface-5", insightface_root=empty)
    assert missing.value.code == "liveness_unavailable"
    with pytest.raises(KioskError) as unknown:
        choose_check("sometimes")
    assert unknown.value.code == "bad_liveness_mode"
    assert INSIGHTFACE_LIVENESS.filename == "liveness.onnx"
