"""One class per recognition model: an onnxruntime session plus its preprocessing, as data."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.errors import PackError
from models.manifest import Preprocessing

logger = logging.getLogger(__name__)


def make_session(model: Path | bytes, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with full graph optimisation and a bounded thread pool."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # No busy-waiting between runs: at a kiosk the next call is detection on the same cores,
    # and spinning inference threads slow it more than waking them costs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(
            source, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
        raise PackError(f"onnxruntime cannot load the model: {exc}", code="pack_corrupted") from exc


class Embedder:
    """Turns aligned face chips into unit-length float32 embeddings."""

    def __init__(self, session: Any, preprocessing: Preprocessing, embedding_size: int) -> None:
        inputs = session.get_inputs()
        outputs = session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise PackError("a recognition model must have one input and one output")
        shape = inputs[0].shape
        size = preprocessing.input_size
        if len(shape) != 4 or shape[1] != 3 or shape[2] != size or shape[3] != size:
            raise PackError(f"recognition model input {shape} does not match 3x{size}x{size}")
        if outputs[0].shape[-1] not in (embedding_size, None) and not isinstance(
            outputs[0].shape[-1], str
        ):
            raise PackError(
                f"recognition model output {outputs[0].shape} does not match size {embedding_size}"
            )
        self._session = session
        self._input = inputs[0].name
        self._fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.preprocessing = preprocessing
        self.embedding_size = embedding_size
        mean = np.asarray(preprocessing.mean, dtype=np.float32)
        self._mean = mean[::-1].copy() if preprocessing.channel_order == "BGR" else mean

    def to_tensor(self, chips: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """(N, H, W, 3) RGB uint8 chips into the model's (N, 3, H, W) float32 input."""
        pixels = chips[..., ::-1] if self.preprocessing.channel_order == "BGR" else chips
        tensor = (pixels.astype(np.float32) - self._mean) * np.float32(self.preprocessing.scale)
        return np.ascontiguousarray(tensor.transpose(0, 3, 1, 2))

    def infer(self, chips: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Unit-length embeddings, one row per chip."""
        if chips.ndim != 4 or chips.shape[0] == 0:
            raise ValueError("chips must be a non-empty (N, H, W, 3) array")
        batch = chips
        if self.preprocessing.flip_average:
            batch = np.concatenate([chips, chips[:, :, ::-1]], axis=0)
        raw = self._run(self.to_tensor(batch))
        if self.preprocessing.flip_average:
            count = chips.shape[0]
            raw = _unit(raw[:count]) + _unit(raw[count:])
        return _unit(raw)

    def _run(self, tensor: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if self._fixed_batch is None:
            return np.asarray(self._session.run(None, {self._input: tensor})[0], dtype=np.float32)
        rows = [
            np.asarray(self._session.run(None, {self._input: tensor[i : i + 1]})[0], np.float32)
            for i in range(tensor.shape[0])
        ]
        return np.concatenate(rows, axis=0)


def _unit(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    vectors = vectors.reshape(vectors.shape[0], -1).astype(np.float32, copy=False)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms < 1e-12):
        raise PackError("the model produced a zero or non-finite embedding", code="bad_embedding")
    return np.asarray(vectors / norms, dtype=np.float32)
