"""Bad input: every kind of unusable picture gets a clear error code, never a crash."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.errors import ImageError
from models.images import decode_image, load_image, to_rgb


def _write(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as error:
        load_image(tmp_path / "nope.jpg")
    assert error.value.code == "image_not_found"


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError) as error:
        load_image(tmp_path / "empty.jpg")
    assert error.value.code == "image_empty"


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_bytes(b"this is not a JPEG at all" * 10)
    with pytest.raises(ImageError) as error:
        load_image(tmp_path / "text.jpg")
    assert error.value.code == "image_unreadable"


def test_truncated_jpeg(tmp_path: Path) -> None:
    ok, data = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
    assert ok
    (tmp_path / "cut.jpg").write_bytes(data.tobytes()[:20])
    with pytest.raises(ImageError):
        load_image(tmp_path / "cut.jpg")


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as error:
        load_image(tmp_path)
    assert error.value.code == "image_unreadable"


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    grey = np.tile(np.arange(64, dtype=np.uint8), (32, 1))
    image = load_image(_write(tmp_path / "g.png", grey))
    assert image.shape == (32, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image[:, :, 0], grey) and np.array_equal(image[:, :, 2], grey)


def test_rgba_drops_alpha_and_keeps_colour(tmp_path: Path) -> None:
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., 0] = 200  # blue
    bgra[..., 3] = 10
    image = load_image(_write(tmp_path / "a.png", bgra))
    assert image.shape == (8, 8, 3)
    assert image[0, 0].tolist() == [0, 0, 200]  # RGB: blue last


def test_sixteen_bit_is_scaled(tmp_path: Path) -> None:
    deep = np.full((8, 8, 3), 65535, np.uint16)
    deep[..., 2] = 256 * 100
    image = load_image(_write(tmp_path / "d.png", deep))
    assert image.dtype == np.uint8
    assert image[0, 0].tolist() == [100, 255, 255]


def test_very_large_image_is_handled(tmp_path: Path) -> None:
    big = np.zeros((8000, 8000, 3), np.uint8)
    image = load_image(_write(tmp_path / "big.png", big))
    assert image.shape == (8000, 8000, 3)


def test_too_large_array_is_refused() -> None:
    huge = np.lib.stride_tricks.as_strided(
        np.zeros(1, np.uint8), shape=(20000, 20000), strides=(0, 0)
    )
    with pytest.raises(ImageError) as error:
        to_rgb(huge)
    assert error.value.code == "image_too_large"


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((0, 5, 3), np.uint8),
        np.zeros((4,), np.uint8),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((4, 4, 3), np.complex64),
    ],
)
def test_bad_frames(array: np.ndarray) -> None:
    with pytest.raises(ImageError):
        to_rgb(array)


def test_float_frames_with_nan_are_refused() -> None:
    frame = np.zeros((4, 4, 3), np.float32)
    frame[0, 0, 0] = np.nan
    with pytest.raises(ImageError):
        to_rgb(frame)


def test_decode_empty_bytes() -> None:
    with pytest.raises(ImageError) as error:
        decode_image(b"")
    assert error.value.code == "image_empty"
