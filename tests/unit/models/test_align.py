"""models.align against the libraries it reproduces: dlib's face chips and insightface's crops.

The dlib half runs dlib's own detector and 5-point predictor over every photo of the shared face
set and checks that ``extract_dlib_chip`` returns exactly the pixels ``dlib.get_face_chip`` does.
The insightface half compares ``extract_arcface_chip`` with ``face_align.norm_crop``.
"""

from __future__ import annotations

import math
import random
import tracemalloc
import warnings
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path

import cv2
import dlib
import face_recognition_models
import numpy as np
import numpy.typing as npt
import pytest
from insightface.utils import face_align

from models import align

ImageArray = npt.NDArray[np.uint8]
IntArray = npt.NDArray[np.int64]

#: Longest side the detector runs on; larger photos are detected on a shrunk copy.
DETECT_MAX_SIDE = 1600
CHIP_SIZE = 150
CHIP_PADDING = 0.25


@dataclass(frozen=True)
class Face:
    image_name: str
    rgb: ImageArray
    landmarks: IntArray  # (5, 2), dlib's integer part positions

    @property
    def shape(self) -> dlib.full_object_detection:
        return to_shape(self.landmarks)


def to_shape(landmarks: npt.ArrayLike) -> dlib.full_object_detection:
    pts = np.asarray(landmarks)
    parts = [dlib.point(int(x), int(y)) for x, y in pts]
    left, top = (int(v) for v in pts.min(axis=0))
    right, bottom = (int(v) for v in pts.max(axis=0))
    return dlib.full_object_detection(dlib.rectangle(left, top, right, bottom), parts)


def load_rgb(path: Path) -> ImageArray:
    bgr = cv2.imread(str(path))
    assert bgr is not None, f"cannot read {path}"
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def detect_faces(
    rgb: ImageArray, detector: dlib.fhog_object_detector, predictor: dlib.shape_predictor
) -> list[IntArray]:
    height, width = rgb.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
    small = rgb
    if scale < 1.0:
        size = (round(width * scale), round(height * scale))
        small = np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    dets = detector(small, 0)
    if len(dets) == 0:
        dets = detector(small, 1)
    faces = []
    for det in dets:
        rect = dlib.rectangle(
            round(det.left() / scale),
            round(det.top() / scale),
            round(det.right() / scale),
            round(det.bottom() / scale),
        )
        shape = predictor(rgb, rect)
        faces.append(np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)]))
    return faces


@pytest.fixture(scope="session")
def faces(faces_dir: Path) -> list[Face]:
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(
        face_recognition_models.pose_predictor_five_point_model_location()
    )
    paths = sorted((faces_dir / "images").glob("*.jpg"))
    assert paths, f"no images in {faces_dir / 'images'}"
    found = []
    for path in paths:
        rgb = load_rgb(path)
        for landmarks in detect_faces(rgb, detector, predictor):
            found.append(Face(path.name, rgb, landmarks))
    return found


@pytest.fixture(scope="session")
def big_face(faces: list[Face]) -> Face:
    """The face with the widest eye span that lies well inside its photo."""

    def inside(face: Face) -> bool:
        height, width = face.rgb.shape[:2]
        details = align.dlib_chip_details(face.landmarks, CHIP_SIZE, CHIP_PADDING)
        return (
            details.left > 0
            and details.top > 0
            and details.right < width - 1
            and details.bottom < height - 1
        )

    candidates = [f for f in faces if inside(f)]
    assert candidates
    return max(candidates, key=lambda f: float(np.ptp(f.landmarks[:, 0])))


def dlib_chip(rgb: ImageArray, landmarks: npt.ArrayLike, size: int, padding: float) -> ImageArray:
    chip: ImageArray = dlib.get_face_chip(rgb, to_shape(landmarks), size, padding)
    return chip


def assert_same_chip(ours: ImageArray, ref: ImageArray, what: str) -> None:
    assert ours.dtype == np.uint8
    assert ours.shape == ref.shape, what
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    assert int(diff.max(initial=0)) == 0, (
        f"{what}: {int(np.count_nonzero(diff))} values differ, worst by {int(diff.max())}"
    )


# ---------------------------------------------------------------------------------------------
# dlib chips on the shared face set


def test_face_set_detects_faces(faces: list[Face]) -> None:
    assert len({f.image_name for f in faces}) >= 10


def test_chips_equal_dlib_on_every_face(faces: list[Face]) -> None:
    failures = []
    for face in faces:
        ours = align.extract_dlib_chip(face.rgb, face.landmarks, CHIP_SIZE, CHIP_PADDING)
        ref = dlib_chip(face.rgb, face.landmarks, CHIP_SIZE, CHIP_PADDING)
        if ours.shape != ref.shape or not np.array_equal(ours, ref):
            diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
            failures.append(f"{face.image_name}: {np.count_nonzero(diff)} values, max {diff.max()}")
    assert not failures, "\n".join(failures)


def test_chip_details_match_dlib_on_every_face(faces: list[Face]) -> None:
    # The geometry follows dlib's arithmetic step by step; a few last-bit differences remain
    # (at most ~6e-13 px, ~2e-16 rad over the face set), far below what moves a pixel.
    for face in faces:
        ours = align.dlib_chip_details(face.landmarks, CHIP_SIZE, CHIP_PADDING)
        ref = dlib.get_face_chip_details(face.shape, CHIP_SIZE, CHIP_PADDING)
        rect = (ref.rect.left(), ref.rect.top(), ref.rect.right(), ref.rect.bottom())
        assert ours.rect == pytest.approx(rect, rel=0, abs=1e-9), face.image_name
        assert ours.angle == pytest.approx(ref.angle, rel=0, abs=1e-12), face.image_name
        assert (ours.rows, ours.cols) == (ref.rows, ref.cols) == (CHIP_SIZE, CHIP_SIZE)
        assert ours.width == pytest.approx(CHIP_SIZE * ours.scale)
        assert ours.center == pytest.approx(((rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2))


@pytest.mark.parametrize(("size", "padding"), [(151, 0.25), (200, 0.2), (64, 0.0), (150, 1.0)])
def test_other_sizes_and_paddings_equal_dlib(big_face: Face, size: int, padding: float) -> None:
    ours = align.extract_dlib_chip(big_face.rgb, big_face.landmarks, size, padding)
    ref = dlib_chip(big_face.rgb, big_face.landmarks, size, padding)
    assert_same_chip(ours, ref, f"size={size} padding={padding}")


def test_face_cut_by_image_border_is_black_where_dlib_is(big_face: Face) -> None:
    # Cut the photo through the middle of the face, so that half the chip lies outside it.
    x0 = int(big_face.landmarks[:, 0].mean())
    rgb = np.ascontiguousarray(big_face.rgb[:, x0:])
    landmarks = big_face.landmarks - [x0, 0]
    ours = align.extract_dlib_chip(rgb, landmarks)
    ref = dlib_chip(rgb, landmarks, CHIP_SIZE, CHIP_PADDING)
    assert_same_chip(ours, ref, "face on the border")
    black = np.all(ref == 0, axis=2)
    assert black.sum() > CHIP_SIZE * CHIP_SIZE // 4  # the outside really is in the chip


def test_chip_wholly_outside_image_is_black(big_face: Face) -> None:
    height, width = big_face.rgb.shape[:2]
    for shift in ([-2 * width, 0], [0, 3 * height], [-5000, -5000]):
        landmarks = big_face.landmarks + shift
        ours = align.extract_dlib_chip(big_face.rgb, landmarks)
        assert_same_chip(ours, dlib_chip(big_face.rgb, landmarks, 150, 0.25), f"shift {shift}")
        assert not ours.any()


def test_grayscale_photo_as_three_channels(big_face: Face) -> None:
    gray = cv2.cvtColor(big_face.rgb, cv2.COLOR_RGB2GRAY)
    rgb = np.asarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), dtype=np.uint8)
    ours = align.extract_dlib_chip(rgb, big_face.landmarks)
    assert_same_chip(ours, dlib_chip(rgb, big_face.landmarks, 150, 0.25), "grayscale")
    assert np.array_equal(ours[..., 0], ours[..., 1])
    assert np.array_equal(ours[..., 0], ours[..., 2])


def test_huge_image_crops_before_filtering(big_face: Face) -> None:
    side = 8000
    height, width = big_face.rgb.shape[:2]
    huge = np.asarray(
        cv2.resize(big_face.rgb, (side, side), interpolation=cv2.INTER_LINEAR), dtype=np.uint8
    )
    landmarks = np.round(big_face.landmarks * [side / width, side / height]).astype(np.int64)
    details = align.dlib_chip_details(landmarks)
    assert details.width > 1000  # a deep pyramid, over a large part of the photo

    tracemalloc.start()
    try:
        ours = align.extract_dlib_chip(huge, landmarks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Only the chip's surroundings are filtered, in strips: far less than the photo itself.
    assert peak < huge.nbytes // 2
    assert_same_chip(ours, dlib_chip(huge, landmarks, 150, 0.25), "8000x8000")


def test_tiny_image(big_face: Face) -> None:
    height, width = big_face.rgb.shape[:2]
    tiny = np.asarray(
        cv2.resize(big_face.rgb, (32, 24), interpolation=cv2.INTER_AREA), dtype=np.uint8
    )
    landmarks = np.round(big_face.landmarks * [32 / width, 24 / height]).astype(np.int64)
    ours = align.extract_dlib_chip(tiny, landmarks)
    assert_same_chip(ours, dlib_chip(tiny, landmarks, 150, 0.25), "32x24 photo")


def test_extreme_upsampling_is_within_one_grey_level() -> None:
    # A 7-pixel face stretched to 150 pixels: the sample grid is so fine that last-bit
    # differences in the geometry decide a few truncations. Never more than one grey level.
    rng = np.random.default_rng(5)
    tiny = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    landmarks = np.array([[5, 2], [4, 2], [1, 2], [2, 2], [3, 4]])
    ours = align.extract_dlib_chip(tiny, landmarks)
    ref = dlib_chip(tiny, landmarks, 150, 0.25)
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= 1
    assert np.count_nonzero(diff) <= 0.02 * diff.size


def test_pyramid_level_equals_dlib_pyramid_down() -> None:
    rng = np.random.default_rng(0)
    pyr = dlib.pyramid_down(2)
    for height, width in [(9, 9), (9, 30), (11, 14), (64, 65), (301, 403), (700, 40)]:
        img = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        assert np.array_equal(align._pyramid_down(img), pyr(img)), (height, width)
    assert align._pyramid_down(np.zeros((8, 100, 3), np.uint8)).size == 0


def test_extract_image_chip_equals_dlib_for_given_details(big_face: Face) -> None:
    # The extraction half alone: dlib's own chip_details, our pyramid and sampling, over random
    # positions, sizes and angles. The transform from chip to source comes from a 3x3 pseudo-
    # inverse whose ~1e-18 rounding residue is not bit-identical to dlib's, which can flip a
    # truncation now and then: allow a handful of values off by one over all the cases.
    rgb = big_face.rgb
    height, width = rgb.shape[:2]
    rnd = random.Random(11)
    cases = 60
    off_by_one = 0
    for i in range(cases):
        cx = rnd.uniform(-100, width + 100)
        cy = rnd.uniform(-100, height + 100)
        side = rnd.uniform(40, 1.5 * max(height, width))
        angle = rnd.uniform(-math.pi, math.pi)
        ref_details = dlib.chip_details(
            dlib.drectangle(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2),
            dlib.chip_dims(150, 150),
            angle,
        )
        ours_details = align.ChipDetails(
            left=ref_details.rect.left(),
            top=ref_details.rect.top(),
            right=ref_details.rect.right(),
            bottom=ref_details.rect.bottom(),
            angle=ref_details.angle,
            scale=side / 150,
            rows=150,
            cols=150,
        )
        ours = align.extract_image_chip(rgb, ours_details)
        ref = dlib.extract_image_chip(rgb, ref_details)
        diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
        assert diff.max() <= 1, f"case {i}"
        off_by_one += int(np.count_nonzero(diff))
    assert off_by_one <= 10, f"{off_by_one} values off by one in {cases} chips"


def test_unrotated_unscaled_chip_is_a_plain_copy(big_face: Face) -> None:
    rgb = big_face.rgb
    rect = dlib.drectangle(-10.0, 20.0, 139.0, 169.0)  # 150 x 150, half a pixel off nothing
    ref = dlib.extract_image_chip(rgb, dlib.chip_details(rect, dlib.chip_dims(150, 150), 0.0))
    details = align.ChipDetails(-10.0, 20.0, 139.0, 169.0, angle=0.0, scale=1.0, rows=150, cols=150)
    ours = align.extract_image_chip(rgb, details)
    assert_same_chip(ours, ref, "plain copy")
    assert np.array_equal(ours[:, 10:], rgb[20:170, 0:140])
    assert not ours[:, :10].any()


def test_input_validation() -> None:
    img = np.zeros((50, 50, 3), np.uint8)
    good = np.array([[30, 20], [25, 20], [10, 20], [15, 20], [20, 30]])
    with pytest.raises(ValueError, match="landmarks"):
        align.extract_dlib_chip(img, good[:4])
    with pytest.raises(ValueError, match="finite"):
        align.dlib_chip_details(np.where(good == 30, np.nan, good))
    with pytest.raises(ValueError, match="size"):
        align.dlib_chip_details(good, size=0)
    with pytest.raises(ValueError, match="padding"):
        align.dlib_chip_details(good, padding=-0.1)
    with pytest.raises(ValueError, match="uint8"):
        align.extract_dlib_chip(img.astype(np.float32), good)
    with pytest.raises(ValueError, match="uint8"):
        align.extract_dlib_chip(img[..., 0], good)
    details = align.dlib_chip_details(good)
    with pytest.raises(FrozenInstanceError):
        details.angle = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# ArcFace crops against insightface


def insightface_crop(img: ImageArray, landmarks: npt.NDArray[np.float32], size: int) -> ImageArray:
    # insightface calls skimage's SimilarityTransform.estimate, deprecated in skimage 0.26.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        crop: ImageArray = face_align.norm_crop(img, landmarks, image_size=size)
    return crop


def insightface_matrix(landmarks: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float64]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        matrix: npt.NDArray[np.float64] = face_align.estimate_norm(landmarks, size)
    return matrix


def arcface_landmark_sets(width: int, height: int) -> list[npt.NDArray[np.float32]]:
    """Eye centres, nose tip, mouth corners: upright, tilted, small, large, and on the border."""
    base = np.array(
        [[-0.17, -0.12], [0.17, -0.12], [0.0, 0.05], [-0.13, 0.22], [0.13, 0.22]], np.float64
    )
    sets = []
    for cx, cy, scale, degrees in [
        (0.5, 0.45, 0.5, 0.0),
        (0.45, 0.5, 0.4, 12.0),
        (0.55, 0.4, 0.3, -25.0),
        (0.5, 0.5, 0.08, 4.0),
        (0.5, 0.5, 0.9, -3.0),
        (0.05, 0.5, 0.3, 8.0),
        (0.5, 0.97, 0.3, -40.0),
    ]:
        theta = math.radians(degrees)
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        side = min(width, height) * scale
        pts = (base * side) @ rot.T + [cx * width, cy * height]
        sets.append(pts.astype(np.float32))
    # Uneven landmarks, as a real detector gives: jitter the first set.
    rng = np.random.default_rng(1)
    sets.append(
        (sets[0] + rng.normal(0, 0.03 * min(width, height), size=(5, 2))).astype(np.float32)
    )
    return sets


@pytest.mark.parametrize("size", [112, 224, 128, 256])
def test_arcface_chip_matches_insightface(big_face: Face, size: int) -> None:
    img = big_face.rgb
    height, width = img.shape[:2]
    for i, landmarks in enumerate(arcface_landmark_sets(width, height)):
        matrix = align.arcface_transform(landmarks, size)
        np.testing.assert_allclose(
            matrix, insightface_matrix(landmarks, size), rtol=1e-6, atol=1e-4
        )
        ours = align.extract_arcface_chip(img, landmarks, size)
        ref = insightface_crop(img, landmarks, size)
        assert ours.shape == ref.shape == (size, size, 3)
        diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
        assert diff.max() <= 1, f"set {i}: max diff {diff.max()}"


def test_arcface_template_scaling() -> None:
    template = np.array(align.ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(align.arcface_template(112), template, atol=1e-4)
    np.testing.assert_allclose(align.arcface_template(224), template * 2, atol=1e-4)
    np.testing.assert_allclose(
        align.arcface_template(128), template * (128 / 128) + [8.0, 0.0], atol=1e-4
    )
    with pytest.raises(ValueError, match="multiple"):
        align.arcface_template(100)


def test_umeyama_recovers_an_exact_similarity() -> None:
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, size=(5, 2))
    theta = 0.3
    scale = 1.7
    rot = scale * np.array(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
    )
    dst = src @ rot.T + [5.0, -3.0]
    matrix = align.umeyama_similarity(src, dst)
    np.testing.assert_allclose(matrix[:, :2], rot, atol=1e-12)
    np.testing.assert_allclose(matrix[:, 2], [5.0, -3.0], atol=1e-10)
    with pytest.raises(ValueError, match="degenerate"):
        align.umeyama_similarity(np.ones((5, 2)), dst)
