"""dlib's own face pipeline: the reference our engine is checked against (tests, benchmarks)."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from models.quality import Box
from models.weights import dlib_model_file


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
