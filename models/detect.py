"""Face detectors: each returns boxes with 5 landmarks in the coordinates of the full image.

`DlibHogDetector` is the default pack's: dlib's HOG detector (no weight file) and its CC0
5-point shape predictor. HOG cost grows with the pixels it scans, so it runs on a reduced copy
of the frame first and only scans larger copies when that finds nothing (see README: a 640x480
frame costs ~11 ms at 320 px against ~42 ms at full size).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from models.quality import Box

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    box: Box
    landmarks: npt.NDArray[np.float64]  # (5, 2), x then y
    score: float


class FaceDetector(Protocol):
    def detect(self, image: npt.NDArray[np.uint8]) -> list[Detection]:
        """Faces in an RGB uint8 image, in no particular order."""
        ...


@dataclass(frozen=True)
class HogPass:
    """One scan: the image reduced so its longer side is at most `max_side`, then upsampled."""

    max_side: int
    upsample: int = 0


# Cheapest first; a pass runs only when the ones before it found no face. 320 px finds faces of
# about a quarter of the frame width or more (a shopper at the till); the later passes find
# smaller faces in photos.
DEFAULT_HOG_PASSES: tuple[HogPass, ...] = (
    HogPass(320),
    HogPass(640),
    HogPass(1280),
    HogPass(1280, upsample=1),
)


# For photos rather than a till: every face up to 1280 px scans, small ones included.
THOROUGH_HOG_PASSES: tuple[HogPass, ...] = (HogPass(1280), HogPass(1280, upsample=1))


class DlibHogDetector:
    def __init__(
        self,
        shape_predictor_path: Path,
        passes: Sequence[HogPass] = DEFAULT_HOG_PASSES,
        min_score: float = 0.0,
    ) -> None:
        import dlib

        self._dlib: Any = dlib
        self._hog: Any = dlib.get_frontal_face_detector()
        self._shape: Any = dlib.shape_predictor(str(shape_predictor_path))
        self._passes = tuple(passes)
        self._min_score = min_score

    def detect(self, image: npt.NDArray[np.uint8]) -> list[Detection]:
        height, width = image.shape[:2]
        scanned: set[tuple[float, int]] = set()
        for scan in self._passes:
            factor = min(1.0, scan.max_side / max(height, width))
            if (factor, scan.upsample) in scanned:
                continue  # a small image: this pass would scan what an earlier one did
            scanned.add((factor, scan.upsample))
            rects, scores, _ = self._hog.run(_scaled(image, factor), scan.upsample, self._min_score)
            if len(rects):
                return [
                    self._landmarks(image, rect, score, factor)
                    for rect, score in zip(rects, scores, strict=True)
                ]
        return []

    def _landmarks(
        self, image: npt.NDArray[np.uint8], rect: Any, score: float, factor: float
    ) -> Detection:
        scale = 1.0 / factor
        full = self._dlib.rectangle(
            round(rect.left() * scale),
            round(rect.top() * scale),
            round(rect.right() * scale),
            round(rect.bottom() * scale),
        )
        shape = self._shape(image, full)
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        # dlib rectangles are inclusive; ours are right/bottom exclusive.
        box: Box = (full.left(), full.top(), full.right() + 1, full.bottom() + 1)
        return Detection(box=box, landmarks=points, score=float(score))


def _scaled(image: npt.NDArray[np.uint8], factor: float) -> npt.NDArray[np.uint8]:
    """The image a pass scans: reduced scans are grey (about 20% cheaper); full-size scans stay
    in colour, because dlib's HOG then takes each pixel's strongest channel gradient and the
    box, hence the landmarks and the embedding, match dlib's own call exactly."""
    if factor >= 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    reduced = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.cvtColor(reduced, cv2.COLOR_RGB2GRAY), np.uint8)


class InsightfaceScrfdDetector:
    """The SCRFD detector of an insightface pack, through insightface's own model class."""

    def __init__(
        self, model_path: Path, input_size: tuple[int, int] = (640, 640), threshold: float = 0.5
    ) -> None:
        from insightface.model_zoo import model_zoo

        self._model: Any = model_zoo.get_model(str(model_path))
        if self._model is None or getattr(self._model, "taskname", None) != "detection":
            from models.errors import PackError

            raise PackError(f"{model_path.name} is not a face detection model")
        self._model.prepare(-1, input_size=input_size, det_thresh=threshold)

    def detect(self, image: npt.NDArray[np.uint8]) -> list[Detection]:
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        boxes, points = self._model.detect(bgr, max_num=0)
        found = []
        for index in range(boxes.shape[0]):
            x1, y1, x2, y2, score = (float(v) for v in boxes[index][:5])
            found.append(
                Detection(
                    box=(round(x1), round(y1), round(x2), round(y2)),
                    landmarks=np.asarray(points[index], dtype=np.float64),
                    score=score,
                )
            )
        return found
