"""Quality measures: pose estimates recover a known head turn, blur lowers sharpness."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from models import quality


def _landmarks(yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """dlib's 5 points projected from a head model turned by yaw, then pitch, then roll."""
    # Eye corners on the eye plane (z = 0), nose base in front of it; eye centres 1 apart.
    model = np.array(
        [
            [0.75, 0.0, 0.0],
            [0.25, 0.0, 0.0],
            [-0.75, 0.0, 0.0],
            [-0.25, 0.0, 0.0],
            [0.0, quality._NOSE_DROP, quality._NOSE_DEPTH],
        ]
    )
    y, p, r = (math.radians(v) for v in (yaw, pitch, roll))
    turn = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    # Image y points down, so tilting the face up moves the nose up (towards -y).
    tilt = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    spin = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    points = model @ turn.T @ tilt.T @ spin.T
    return points[:, :2] * 80.0 + np.array([320.0, 240.0])


@pytest.mark.parametrize(
    ("yaw", "pitch", "tolerance"),
    [(0, 0, 1), (20, 0, 1), (-35, 0, 1), (0, 15, 1), (0, -20, 1), (25, 10, 5), (-15, -10, 5)],
)
def test_pose_recovers_head_model(yaw: float, pitch: float, tolerance: float) -> None:
    # Turning and tilting together tilts the eye line too (seen as roll), hence the wider
    # tolerance there: 5 points cannot tell that from a real roll.
    est_yaw, est_pitch = quality.estimate_pose(_landmarks(yaw, pitch))
    assert est_yaw == pytest.approx(yaw, abs=tolerance)
    assert est_pitch == pytest.approx(pitch, abs=tolerance)


def test_pose_ignores_roll_and_mirrors() -> None:
    yaw, pitch = quality.estimate_pose(_landmarks(20, 5))
    rolled = quality.estimate_pose(_landmarks(20, 5, roll=25))
    assert rolled == pytest.approx((yaw, pitch), abs=1e-6)
    mirrored = _landmarks(20, 5)
    mirrored[:, 0] = 640 - mirrored[:, 0]
    mirror_yaw, mirror_pitch = quality.estimate_pose(mirrored)
    assert mirror_yaw == pytest.approx(-yaw) and mirror_pitch == pytest.approx(pitch)


def test_sharpness_drops_with_blur_and_brightness_follows_light() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    box = (50, 50, 150, 150)
    points = _landmarks(0, 0)
    sharp = quality.measure_quality(image, box, points)
    blurred = quality.measure_quality(cv2.GaussianBlur(image, (0, 0), 3), box, points)
    assert blurred.sharpness < sharp.sharpness / 10
    dark = quality.measure_quality((image // 4).astype(np.uint8), box, points)
    assert dark.brightness < sharp.brightness / 3
    assert sharp.face_px == 100


def test_box_outside_the_image() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    measured = quality.measure_quality(image, (20, 20, 30, 30), _landmarks(0, 0))
    assert measured.sharpness == 0.0 and measured.brightness == 0.0
