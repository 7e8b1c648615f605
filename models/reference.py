"""dlib's own face pipeline: the reference our engine is checked against (tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from models.images import load_image
from models.quality import Box
from models.weights import dlib_model_file

if TYPE_CHECKING:
    from models.engine import FaceEngine

# dlib's full-size HOG on large photos costs seconds each; both sides get the same smaller
# copy, so the comparison stays exact.
REFERENCE_MAX_SIDE = 1000


@cache
def _dlib_models() -> tuple[Any, Any, Any]:
    import dlib

    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(str(dlib_model_file("shape_predictor_5_face_landmarks.dat"))),
        dlib.face_recognition_model_v1(
            str(dlib_model_file("dlib_face_recognition_resnet_model_v1.dat"))
        ),
    )


def dlib_faces(image: npt.NDArray[np.uint8]) -> list[tuple[Box, npt.NDArray[np.float64]]]:
    """Every face dlib finds at full size (upsampling once if none), with its unit-length
    descriptor from `compute_face_descriptor` on dlib's own chip."""
    detector, predictor, model = _dlib_models()
    found = []
    for rect in detector(image, 0) or detector(image, 1):
        vector = np.array(
            model.compute_face_descriptor(image, predictor(image, rect)), dtype=np.float64
        )
        box: Box = (rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)
        found.append((box, vector / np.linalg.norm(vector)))
    return found


def iou(a: Box, b: Box) -> float:
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def agreement(engine: FaceEngine, photos: Iterable[Path]) -> Iterator[tuple[str, float]]:
    """(photo name, cosine between our embedding and dlib's) for every face both find, paired
    by box overlap; faces only one side finds are skipped."""
    for path in photos:
        image = load_image(path)
        if max(image.shape[:2]) > REFERENCE_MAX_SIDE:
            scale = REFERENCE_MAX_SIDE / max(image.shape[:2])
            resized = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            image = np.ascontiguousarray(resized, dtype=np.uint8)
        ours = engine.analyse(image)
        embeddings = engine.embed_faces(image, ours)
        for box, reference in dlib_faces(image):
            best = max(range(len(ours)), key=lambda k: iou(ours[k].box, box), default=None)
            if best is not None and iou(ours[best].box, box) >= 0.5:
                yield path.name, float(embeddings[best].vector.astype(np.float64) @ reference)
