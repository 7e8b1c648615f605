"""Face quality measures, as pure functions of the image and the face's box and landmarks.

They feed the kiosk's quality gate (size, sharpness, light, frontal pose); none of them is a
biometric template and all are cheap enough to run on every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

Box = tuple[int, int, int, int]  # left, top, right, bottom (pixels, right/bottom exclusive)

# Sharpness is measured on the face resized to this size, so that it does not grow with the
# face's size in pixels.
_SHARPNESS_SIDE = 96
# Head geometry for the pose estimates (dlib 5-point landmarks: two corners per eye, nose base):
# depth of the nose base in front of the eyes, and its drop below them, as fractions of the
# distance between the eye centres. Typical adult values; the estimates are meant for a
# "face the camera" gate, not for measurement.
_NOSE_DEPTH = 0.55
_NOSE_DROP = 0.62


@dataclass(frozen=True)
class Quality:
    face_px: int  # width of the face box in pixels
    sharpness: float  # variance of the Laplacian on the normalised face, higher is sharper
    brightness: float  # mean luminance of the face, 0-255
    yaw: float  # degrees, positive when the face turns towards the image's right
    pitch: float  # degrees, positive when the face tilts up

    def as_dict(self) -> dict[str, float | int]:
        return {
            "face_px": self.face_px,
            "sharpness": round(self.sharpness, 2),
            "brightness": round(self.brightness, 2),
            "yaw": round(self.yaw, 1),
            "pitch": round(self.pitch, 1),
        }


def measure_quality(
    image: npt.NDArray[np.uint8], box: Box, landmarks: npt.NDArray[np.float64]
) -> Quality:
    grey = _face_grey(image, box)
    yaw, pitch = estimate_pose(landmarks)
    return Quality(
        face_px=int(box[2] - box[0]),
        sharpness=sharpness(grey),
        brightness=float(grey.mean()) if grey.size else 0.0,
        yaw=yaw,
        pitch=pitch,
    )


def _face_grey(image: npt.NDArray[np.uint8], box: Box) -> npt.NDArray[np.uint8]:
    height, width = image.shape[:2]
    left, top = max(0, box[0]), max(0, box[1])
    right, bottom = min(width, box[2]), min(height, box[3])
    if right <= left or bottom <= top:
        return np.zeros((0, 0), dtype=np.uint8)
    crop = image[top:bottom, left:right]
    return np.asarray(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), dtype=np.uint8)


def sharpness(grey_face: npt.NDArray[np.uint8]) -> float:
    """Variance of the Laplacian of the face resized to a fixed size (blur lowers it)."""
    if grey_face.size == 0:
        return 0.0
    resized = cv2.resize(
        grey_face, (_SHARPNESS_SIDE, _SHARPNESS_SIDE), interpolation=cv2.INTER_AREA
    )
    return float(cv2.Laplacian(resized, cv2.CV_64F).var())


def estimate_pose(landmarks: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Yaw and pitch in degrees from dlib's 5 landmarks, in the frame of the eye line.

    Working in the eye line's frame makes both independent of in-plane rotation (roll).
    """
    points = np.asarray(landmarks, dtype=np.float64)
    eye_a = points[0:2].mean(axis=0)
    eye_b = points[2:4].mean(axis=0)
    nose = points[4]
    across = eye_b - eye_a
    eye_distance = float(np.hypot(*across))
    if eye_distance < 1e-6:
        return 0.0, 0.0
    unit_across = across / eye_distance
    unit_down = np.array([-unit_across[1], unit_across[0]])
    if unit_down[1] < 0:  # keep "down" pointing down the image
        unit_down = -unit_down
        unit_across = -unit_across
    offset = (nose - (eye_a + eye_b) / 2.0) / eye_distance
    lateral = float(offset @ unit_across)
    drop = float(offset @ unit_down)
    # The nose sits _NOSE_DEPTH in front of the eye plane: turning by yaw moves it sideways by
    # depth*sin(yaw) while the eye distance shrinks by cos(yaw).
    yaw_radians = math.atan2(lateral, _NOSE_DEPTH)
    yaw = math.degrees(yaw_radians)
    drop *= math.cos(yaw_radians)  # undo the eye distance's shrinking with yaw
    # Tilting up by pitch: drop = DROP*cos(pitch) - DEPTH*sin(pitch) = R*cos(pitch + alpha).
    reach = math.hypot(_NOSE_DROP, _NOSE_DEPTH)
    alpha = math.atan2(_NOSE_DEPTH, _NOSE_DROP)
    pitch = math.degrees(math.acos(max(-1.0, min(1.0, drop / reach))) - alpha)
    return yaw, pitch
