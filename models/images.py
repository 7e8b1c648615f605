"""Reading pictures and camera frames into the one format the engine works on: RGB, uint8, HxWx3."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from models.errors import ImageError

logger = logging.getLogger(__name__)

RGBImage = npt.NDArray[np.uint8]

# 8000x8000 photos are accepted; anything beyond this is almost certainly not a camera frame
# or a photo of a person, and would cost seconds of decoding.
MAX_PIXELS = 100_000_000


def load_image(path: str | Path) -> RGBImage:
    """Read an image file as RGB uint8, whatever its channels or bit depth."""
    file = Path(path)
    try:
        data = np.fromfile(file, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise ImageError(f"{file}: no such file", code="image_not_found") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{file}: is a folder, not an image", code="image_unreadable") from exc
    except OSError as exc:
        raise ImageError(
            f"{file}: cannot be read ({exc.strerror})", code="image_unreadable"
        ) from exc
    if data.size == 0:
        raise ImageError(f"{file}: the file is empty", code="image_empty")
    return decode_image(data.tobytes(), name=str(file))


def decode_image(data: bytes, *, name: str = "image") -> RGBImage:
    """Decode encoded image bytes (JPEG, PNG, ...) into RGB uint8."""
    if not data:
        raise ImageError(f"{name}: no data", code="image_empty")
    buffer = np.frombuffer(data, dtype=np.uint8)
    header = cv2.imdecode(buffer, cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if header is None:
        raise ImageError(f"{name}: not a readable image", code="image_unreadable")
    # The reduced decode is 1/8 per side: it tells the size cheaply before a full decode.
    if header.shape[0] * header.shape[1] * 64 > MAX_PIXELS * 1.1:
        raise ImageError(
            f"{name}: larger than {MAX_PIXELS // 1_000_000} megapixels", code="image_too_large"
        )
    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageError(f"{name}: not a readable image", code="image_unreadable")
    return to_rgb(decoded, name=name, bgr=True)


def to_rgb(array: npt.NDArray[np.generic], *, name: str = "frame", bgr: bool = False) -> RGBImage:
    """Convert a grey, RGB(A)/BGR(A), 8- or 16-bit or float array into contiguous RGB uint8."""
    if not isinstance(array, np.ndarray):
        raise ImageError(f"{name}: not an image array", code="bad_frame")
    if array.ndim not in (2, 3) or array.size == 0:
        raise ImageError(f"{name}: expected a 2-D or 3-D image array", code="bad_frame")
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise ImageError(
            f"{name}: larger than {MAX_PIXELS // 1_000_000} megapixels", code="image_too_large"
        )
    image = _to_uint8(array, name=name)
    if image.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB))
    channels = image.shape[2]
    if channels == 1:
        return np.ascontiguousarray(cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB))
    if channels == 3:
        return np.ascontiguousarray(image[:, :, ::-1] if bgr else image)
    if channels == 4:
        # Transparent pixels keep their colour: a face photo with alpha is still a face photo.
        colour = image[:, :, :3]
        return np.ascontiguousarray(colour[:, :, ::-1] if bgr else colour)
    raise ImageError(f"{name}: {channels} channels; expected 1, 3 or 4", code="bad_frame")


def _to_uint8(array: npt.NDArray[np.generic], *, name: str) -> npt.NDArray[np.uint8]:
    if array.dtype == np.uint8:
        return array.astype(np.uint8, copy=False)
    if array.dtype == np.uint16:
        return np.right_shift(array.astype(np.uint16, copy=False), 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64, copy=False)
        if not np.all(np.isfinite(values)):
            raise ImageError(f"{name}: holds NaN or infinite values", code="bad_frame")
        # Floats in [0, 1] are read as fractions of full scale, larger ones as 0-255 levels.
        scaled = values * 255.0 if float(values.max(initial=0.0)) <= 1.0 else values
        return np.asarray(np.clip(np.rint(scaled), 0, 255), dtype=np.uint8)
    raise ImageError(f"{name}: unsupported pixel type {array.dtype}", code="bad_frame")
