"""dlib model-file reader and the dlib ResNet -> ONNX converter.

The golden test checks the converted graph against dlib's own descriptor on every
face of the shared face set.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import cv2
import dlib
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest

from models.dlib_format import DlibFormatError, DlibReader
from models.dlib_resnet import (
    EXPECTED_FILE_SIZE,
    INPUT_MEAN_RGB,
    INPUT_SCALE,
    INPUT_SIZE,
    convert_resnet,
    parse_resnet,
)
from models.weights import dlib_model_file

logger = logging.getLogger(__name__)

GOLDEN_TOLERANCE = 1e-3
# Detect on a downscaled copy when an image is larger than this (speed only).
MAX_DETECT_SIDE = 1024


# ------------------------------------------------------------------ primitives


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"\x01\x00", 0),
        (b"\x01\x01", 1),
        (b"\x01\x96", 150),
        (b"\x02\x00\x01", 256),
        (b"\x02\x80\x12", 4736),
        (b"\x81\x1c", -28),
        (b"\x81\x01", -1),
        (b"\x88" + b"\x00" * 7 + b"\x80", -(2**63)),
        (b"\x08" + b"\xff" * 8, 2**64 - 1),
    ],
)
def test_packed_int(raw: bytes, value: int) -> None:
    reader = DlibReader(raw)
    assert reader.read_int() == value
    assert reader.at_end()


@pytest.mark.parametrize("raw", [b"\x00", b"\x09" + b"\x00" * 9, b"\x11\x00", b"\x0f"])
def test_packed_int_bad_control_byte(raw: bytes) -> None:
    with pytest.raises(DlibFormatError):
        DlibReader(raw).read_int()


def test_packed_int_range_check() -> None:
    with pytest.raises(DlibFormatError):
        DlibReader(b"\x81\x01").read_uint()
    with pytest.raises(DlibFormatError):
        DlibReader(b"\x01\x05").read_int(max_value=4)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"\x03\x0a\xd7\xa3\x81\x1c", 10737418 * 2.0**-28),  # loss margin, ~0.04
        (b"\x01\x10\x81\x04", 1.0),
        (b"\x01\x00\x01\x0b", 0.0),
        (b"\x81\x03\x01\x01", -6.0),
    ],
)
def test_float(raw: bytes, value: float) -> None:
    reader = DlibReader(raw)
    assert reader.read_float() == value
    assert reader.at_end()


def test_float_specials() -> None:
    # mantissa 0, exponents 32000 / 32001 / 32002 (0x7d00 / 0x7d01 / 0x7d02)
    reader = DlibReader(b"\x01\x00\x02\x00\x7d\x01\x00\x02\x01\x7d\x01\x00\x02\x02\x7d")
    assert reader.read_float() == math.inf
    assert reader.read_float() == -math.inf
    assert math.isnan(reader.read_float())
    assert reader.at_end()


def test_string_and_bool() -> None:
    reader = DlibReader(b"\x01\x05relu_10")
    assert reader.read_string() == "relu_"
    assert reader.read_bool() is True
    assert reader.read_bool() is False
    reader.expect_end()
    with pytest.raises(DlibFormatError):
        DlibReader(b"x").read_bool()


def test_tensors() -> None:
    values = np.arange(6, dtype="<f4")
    raw = b"\x01\x02" + b"\x01\x01\x01\x02\x01\x03\x01\x01" + values.tobytes()
    tensor = DlibReader(raw).read_tensor()
    assert tensor.dtype == np.float32
    assert tensor.shape == (1, 2, 3, 1)
    np.testing.assert_array_equal(tensor.reshape(-1), values)

    shape = DlibReader(b"\x01\x01\x01\x20\x01\x03\x01\x07\x01\x07").read_alias_tensor()
    assert shape.as_tuple() == (32, 3, 7, 7)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x02\x01",  # magnitude byte missing
        b"\x01\x08abc",  # string shorter than its length
        b"\x01\x02\x01\x01\x01\x01\x01\x01\x01\x02\x00\x00",  # tensor data cut short
    ],
)
def test_truncated_data(raw: bytes) -> None:
    reader = DlibReader(raw)
    with pytest.raises(DlibFormatError, match="truncated"):
        if raw.startswith(b"\x01\x02\x01"):
            reader.read_tensor()
        elif raw.startswith(b"\x01\x08"):
            reader.read_string()
        else:
            reader.read_int()


def test_format_error_is_value_error() -> None:
    assert issubclass(DlibFormatError, ValueError)


# -------------------------------------------------------------------- converter


@pytest.fixture(scope="module")
def dlib_model_bytes() -> bytes:
    return Path(dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")).read_bytes()


@pytest.fixture(scope="module")
def onnx_bytes(dlib_model_bytes: bytes) -> bytes:
    return convert_resnet(dlib_model_bytes)


def test_parser_consumes_whole_file(dlib_model_bytes: bytes) -> None:
    assert len(dlib_model_bytes) == EXPECTED_FILE_SIZE
    spec = parse_resnet(dlib_model_bytes)  # raises unless it ends exactly at the end
    assert spec.input_size == (INPUT_SIZE, INPUT_SIZE)
    np.testing.assert_allclose(spec.input_mean_rgb, INPUT_MEAN_RGB, rtol=1e-6)
    assert spec.num_layers == 108
    assert len(spec.blocks) == 14
    assert sum(block.shortcut_pool is not None for block in spec.blocks) == 4
    assert spec.fc_weight.shape == (256, 128)
    assert spec.loss.margin == pytest.approx(0.04)
    assert spec.loss.distance_threshold == pytest.approx(0.6)


def test_parser_rejects_truncated_or_padded_file(dlib_model_bytes: bytes) -> None:
    with pytest.raises(DlibFormatError):
        parse_resnet(dlib_model_bytes[:-1])
    with pytest.raises(DlibFormatError):
        parse_resnet(dlib_model_bytes + b"\x00")


def test_build_is_deterministic(dlib_model_bytes: bytes, onnx_bytes: bytes) -> None:
    progress: list[tuple[int, int]] = []
    again = convert_resnet(dlib_model_bytes, on_progress=lambda d, t: progress.append((d, t)))
    assert hashlib.sha256(again).hexdigest() == hashlib.sha256(onnx_bytes).hexdigest()
    assert progress
    totals = {total for _, total in progress}
    assert len(totals) == 1
    done = [d for d, _ in progress]
    assert done == sorted(done)
    assert done[-1] == progress[-1][1]


def test_onnx_interface(onnx_bytes: bytes) -> None:
    model = onnx.load_from_string(onnx_bytes)
    onnx.checker.check_model(model)
    assert model.producer_name == "facepay"
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "input"
    assert out.name == "embedding"
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert in_dims == ["batch", 3, INPUT_SIZE, INPUT_SIZE]
    assert out_dims == ["batch", 128]


# ------------------------------------------------------------------------ golden


def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def _detect(
    detector: dlib.fhog_object_detector, rgb: npt.NDArray[np.uint8]
) -> list[dlib.rectangle]:
    height, width = rgb.shape[:2]
    scale = min(1.0, MAX_DETECT_SIDE / max(height, width))
    small = rgb
    if scale < 1.0:
        size = (round(width * scale), round(height * scale))
        small = np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    rects = list(detector(small, 0)) or list(detector(small, 1))
    return [
        dlib.rectangle(
            round(r.left() / scale),
            round(r.top() / scale),
            round(r.right() / scale),
            round(r.bottom() / scale),
        )
        for r in rects
    ]


def _normalise(chip: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    mean = np.asarray(INPUT_MEAN_RGB, dtype=np.float32)
    x = (chip.astype(np.float32) - mean) * np.float32(INPUT_SCALE)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def test_golden_against_dlib(onnx_bytes: bytes, faces_dir: Path) -> None:
    images = sorted((faces_dir / "images").glob("*.jpg"))
    assert images, f"no images in {faces_dir / 'images'}"
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_file("shape_predictor_5_face_landmarks.dat")))
    facerec = dlib.face_recognition_model_v1(
        str(dlib_model_file("dlib_face_recognition_resnet_model_v1.dat"))
    )
    session = _session(onnx_bytes)

    worst = 0.0
    faces = 0
    failures: list[str] = []
    for path in images:
        bgr = cv2.imread(str(path))
        assert bgr is not None, path
        rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)
        for rect in _detect(detector, rgb):
            shape = predictor(rgb, rect)
            chip = dlib.get_face_chip(rgb, shape, size=INPUT_SIZE, padding=0.25)
            reference = np.array(facerec.compute_face_descriptor(chip))
            (ours,) = session.run(["embedding"], {"input": _normalise(chip)})
            diff = float(np.max(np.abs(ours[0].astype(np.float64) - reference)))
            worst = max(worst, diff)
            faces += 1
            if diff > GOLDEN_TOLERANCE:
                failures.append(f"{path.name}: max abs diff {diff:.3g}")
    logger.info("golden: %d faces, worst max abs diff %.3g", faces, worst)
    assert faces >= len(images) - 2, f"only {faces} faces found in {len(images)} images"
    assert not failures, failures
    assert worst <= GOLDEN_TOLERANCE
