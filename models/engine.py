"""The face engine's one API for the kiosk: frames into faces, faces into embeddings."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.detect import Detection, FaceDetector
from models.embedder import Embedder
from models.images import to_rgb
from models.manifest import PackManifest
from models.quality import Box, Quality, measure_quality

logger = logging.getLogger(__name__)

Aligner = Callable[[npt.NDArray[np.uint8], npt.NDArray[np.float64]], npt.NDArray[np.uint8]]


@dataclass(frozen=True)
class Face:
    box: Box
    landmarks: npt.NDArray[np.float64]  # (5, 2)
    det_score: float
    quality: Quality

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

    def as_dict(self) -> dict[str, Any]:
        return {
            "box": list(self.box),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "det_score": round(self.det_score, 4),
            "quality": self.quality.as_dict(),
        }


@dataclass(frozen=True)
class Embedding:
    """A unit-length template and the pack (id@version) that made it."""

    vector: npt.NDArray[np.float32]
    pack: str

    def similarity(self, other: Embedding) -> float:
        if other.pack != self.pack:
            raise ValueError(f"cannot compare templates of {self.pack} and {other.pack}")
        return float(np.dot(self.vector, other.vector))


class FaceEngine:
    def __init__(
        self,
        manifest: PackManifest,
        detector: FaceDetector,
        embedder: Embedder,
        aligner: Aligner,
    ) -> None:
        self.manifest = manifest
        self._detector = detector
        self._embedder = embedder
        self._align = aligner

    @property
    def pack(self) -> str:
        return self.manifest.ref

    def analyse(self, frame: npt.NDArray[Any]) -> list[Face]:
        """Every face in an RGB frame (any depth or channel count is converted), largest first."""
        image = to_rgb(frame)
        faces = [self._face(image, found) for found in self._detector.detect(image)]
        return sorted(faces, key=lambda face: face.area, reverse=True)

    def _face(self, image: npt.NDArray[np.uint8], found: Detection) -> Face:
        return Face(
            box=found.box,
            landmarks=found.landmarks,
            det_score=found.score,
            quality=measure_quality(image, found.box, found.landmarks),
        )

    def chip(self, frame: npt.NDArray[Any], face: Face) -> npt.NDArray[np.uint8]:
        """The aligned face image the model sees (stays on the device)."""
        return self._align(to_rgb(frame), face.landmarks)

    def embed(self, frame: npt.NDArray[Any], face: Face) -> Embedding:
        return self.embed_faces(frame, [face])[0]

    def embed_faces(self, frame: npt.NDArray[Any], faces: Sequence[Face]) -> list[Embedding]:
        """Embeddings of several faces of one frame, in one batch."""
        if not faces:
            return []
        image = to_rgb(frame)
        chips = np.stack([self._align(image, face.landmarks) for face in faces])
        return self.embed_chips(chips)

    def embed_chips(self, chips: npt.NDArray[np.uint8]) -> list[Embedding]:
        """Embeddings of aligned chips, (N, H, W, 3) RGB uint8, in one batch."""
        vectors = self._embedder.infer(chips)
        return [Embedding(vector=row, pack=self.pack) for row in vectors]
