"""Frame sources: a USB camera, a video file, an image or a folder of images, behind one interface.

Every source gives `Frame`s of RGB uint8 pixels (OpenCV's BGR is converted here). A camera is read
on its own daemon thread that keeps only the latest frame, so a slow reader never falls behind;
a camera that disappears makes `read()` raise `SourceError(code="camera_lost")` while the thread
keeps reopening the device, and frames flow again once it is back. Recorded sources give every
frame in order, then None.

Frames stay on the device: nothing here logs, prints or sends pixels.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import cv2
import numpy as np
import numpy.typing as npt

from kiosk.errors import SourceError
from models.errors import ImageError
from models.images import load_image, to_rgb

logger = logging.getLogger(__name__)

CaptureFactory = Callable[..., Any]
"""Makes an OpenCV-like capture (`isOpened`, `read`, `get`, `set`, `release`); cv2.VideoCapture."""

# A camera that gives no frame for this long is reported lost (USB cameras can take a second or
# two to start streaming, so this is well above one frame time).
DEFAULT_STALL_LIMIT = 3.0
# Reopening a lost camera: the first retry after this, doubling up to the maximum.
DEFAULT_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 2.0
# How long close() waits for the reader thread, which may be inside a blocking device read.
JOIN_TIMEOUT = 2.0
# How often a waiting read() looks at the (injected) clock for a stall.
_STALL_POLL = 0.05

_CAMERA_INDEX = re.compile(r"[0-9]+")


@dataclass(frozen=True, eq=False)
class Frame:
    """One picture from a source. `eq=False`: frames compare by identity, not pixel by pixel."""

    image: npt.NDArray[np.uint8]
    """RGB, HxWx3, uint8, C-contiguous."""
    index: int
    """0, 1, 2, ... in the order this source produced frames (a camera counts dropped ones too)."""
    timestamp: float
    """Seconds on the source's clock: camera = the injected clock at capture; video = position
    in the file; images = index / image_fps."""


class FrameSource(Protocol):
    """Where frames come from; close it when done (it is also a context manager)."""

    description: str
    """For people: "camera 0 (640x480 @ 30 fps, MJPEG)", "video clip.mp4", "7 images in dir/"."""
    live: bool
    """True for a camera (frames keep coming, old ones are dropped); False for recorded sources."""

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame; None when a recorded source is exhausted or the source is closed.

        A camera gives the latest frame newer than the last one returned, waiting up to
        `timeout` seconds (None: until one comes) and returning None if none came in time; it
        raises `SourceError(code="camera_lost")` while it has given no frame for longer than
        its stall limit. Recorded sources ignore `timeout`.
        """
        ...

    def close(self) -> None:
        """Release the device or file; idempotent. Reads after close return None."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


def open_source(
    spec: str,
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    mjpeg: bool = False,
    image_fps: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    capture_factory: CaptureFactory | None = None,
) -> FrameSource:
    """Open what `--source` names: a camera index ("0") or device ("/dev/video2"), a video file,
    an image file, or a folder of images (taken in name order).

    `width`, `height`, `fps` and `mjpeg` are requests to a camera (the description shows what it
    accepted); `image_fps` spaces the timestamps of still images; `clock` stamps camera frames;
    `capture_factory` replaces cv2.VideoCapture (for cameras and videos). Raises `SourceError`
    with code "source_not_found", "source_unreadable" or "camera_unavailable".
    """
    if not (math.isfinite(image_fps) and image_fps > 0):
        raise ValueError(f"image_fps must be a positive number, not {image_fps!r}")
    device = _camera_device(spec)
    if device is not None:
        return CameraSource(
            device,
            width=width,
            height=height,
            fps=fps,
            mjpeg=mjpeg,
            clock=clock,
            capture_factory=capture_factory,
        )
    if not spec.strip():
        raise SourceError(
            "no source given: name a camera, a video, an image or a folder", code="source_not_found"
        )
    path = Path(spec)
    try:
        if path.is_dir():
            return _open_folder(path, image_fps=image_fps)
        if not path.exists():
            raise SourceError(f"{spec}: no such file or folder", code="source_not_found")
    except OSError as exc:
        raise SourceError(
            f"{spec}: cannot be read ({exc.strerror})", code="source_unreadable"
        ) from exc
    # Images first: OpenCV's video backends would also open a PNG, as a one-frame "video".
    if cv2.haveImageReader(str(path)):
        return _open_image(path, image_fps=image_fps)
    return VideoSource(path, capture_factory=capture_factory)


def _camera_device(spec: str) -> int | str | None:
    text = spec.strip()
    if _CAMERA_INDEX.fullmatch(text):
        return int(text)
    if text.startswith("/dev/"):
        return text
    return None


class _Closing:
    """Context-manager support: leaving the `with` block closes the source."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# --- still images --------------------------------------------------------------------------------


class ImageSource(_Closing):
    """Image files in a given order, decoded one at a time; unreadable ones are skipped."""

    live = False

    def __init__(
        self,
        files: Sequence[Path],
        *,
        description: str,
        image_fps: float = 10.0,
        first: npt.NDArray[np.uint8] | None = None,
    ) -> None:
        """`first`, if given, is the already decoded picture of `files[0]`."""
        self.description = description
        self._files = list(files)
        self._image_fps = image_fps
        self._first = first
        self._position = 0
        self._index = 0

    def read(self, timeout: float | None = None) -> Frame | None:
        while self._position < len(self._files):
            path = self._files[self._position]
            self._position += 1
            image, self._first = self._first, None
            if image is None:
                try:
                    image = load_image(path)
                except ImageError as exc:
                    logger.warning("skipping %s", exc)  # "<path>: <why>"
                    continue
            frame = Frame(image, self._index, self._index / self._image_fps)
            self._index += 1
            return frame
        return None

    def close(self) -> None:
        self._position = len(self._files)
        self._first = None


def _open_image(path: Path, *, image_fps: float) -> ImageSource:
    try:
        image = load_image(path)
    except ImageError as exc:
        raise SourceError(str(exc), code="source_unreadable") from exc  # "<path>: <why>"
    height, width = image.shape[:2]
    return ImageSource(
        [path],
        description=f"image {path.name} ({width}x{height})",
        image_fps=image_fps,
        first=image,
    )


def _open_folder(folder: Path, *, image_fps: float) -> ImageSource:
    files: list[Path] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        # A look at the file's first bytes: cheap, and it tells images from other files
        # whatever their names. Files that still fail to decode are skipped when read.
        if cv2.haveImageReader(str(entry)):
            files.append(entry)
        else:
            logger.warning("skipping %s: not an image file", entry.name)
    if not files:
        raise SourceError(f"{folder}: no image files in this folder", code="source_unreadable")
    count = f"{len(files)} image{'s' if len(files) != 1 else ''}"
    return ImageSource(
        files, description=f"{count} in {folder.name or folder}/", image_fps=image_fps
    )


# --- video files ---------------------------------------------------------------------------------


class VideoSource(_Closing):
    """Every frame of a video file, in order, stamped with its position in the file."""

    live = False

    def __init__(self, path: Path, *, capture_factory: CaptureFactory | None = None) -> None:
        factory = capture_factory or cv2.VideoCapture
        self._name = path.name
        try:
            capture = factory(str(path))
        except Exception as exc:  # cv2.error, or whatever an injected factory raises
            raise SourceError(
                f"{path}: cannot be opened as a video", code="source_unreadable"
            ) from exc
        self._capture: Any | None = capture
        if not capture.isOpened():
            self.close()
            raise SourceError(
                f"{path}: neither an image nor a video that can be read",
                code="source_unreadable",
            )
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        self._fps = fps if math.isfinite(fps) and fps > 0 else 0.0
        self._index = 0
        self._last_timestamp = 0.0
        self._pending = self._next()
        if self._pending is None:
            self.close()
            raise SourceError(f"{path}: the video has no readable frames", code="source_unreadable")
        height, width = self._pending.image.shape[:2]
        rate = f" @ {_number(self._fps)} fps" if self._fps else ""
        self.description = f"video {path.name} ({width}x{height}{rate})"

    def read(self, timeout: float | None = None) -> Frame | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        return self._next()

    def close(self) -> None:
        capture, self._capture = self._capture, None
        self._pending = None
        if capture is not None:
            _release(capture)

    def _next(self) -> Frame | None:
        if self._capture is None:
            return None
        ok, pixels = self._capture.read()
        if not ok or pixels is None:
            self.close()  # the end of the file: let go of it now
            return None
        try:
            image = to_rgb(pixels, name=self._name, bgr=True)
        except ImageError as exc:
            self.close()
            raise SourceError(
                f"{self._name}: frame {self._index}: {exc}", code="source_unreadable"
            ) from exc
        frame = Frame(image, self._index, self._timestamp())
        self._index += 1
        self._last_timestamp = frame.timestamp
        return frame

    def _timestamp(self) -> float:
        """The frame's position in the file; index / fps where the backend does not say."""
        assert self._capture is not None
        position = float(self._capture.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
        if (
            math.isfinite(position)
            and position >= 0
            and (self._index == 0 or position > self._last_timestamp)
        ):
            return position
        if self._fps:
            return max(self._index / self._fps, self._last_timestamp)
        return self._last_timestamp


# --- cameras -------------------------------------------------------------------------------------


class CameraSource(_Closing):
    """A camera read on a daemon thread into a one-frame slot: the reader gets the latest frame.

    The device is opened (and the settings applied) at construction, which raises
    `SourceError(code="camera_unavailable")` if it cannot be. When the device stops giving
    frames the thread releases it and reopens it with a growing delay, logging the loss and the
    recovery once each; `read()` raises `camera_lost` once no frame has come for `stall_limit`
    seconds on `clock`.
    """

    live = True

    def __init__(
        self,
        device: int | str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        mjpeg: bool = False,
        clock: Callable[[], float] = time.monotonic,
        capture_factory: CaptureFactory | None = None,
        stall_limit: float = DEFAULT_STALL_LIMIT,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        max_retry_delay: float = MAX_RETRY_DELAY,
    ) -> None:
        self._device = device
        self._name = f"camera {device}"
        self.description = self._name
        self._width = width
        self._height = height
        self._fps = fps
        self._mjpeg = mjpeg
        self._clock = clock
        self._factory = capture_factory or cv2.VideoCapture
        self._stall_limit = stall_limit
        self._retry_delay = retry_delay
        self._max_retry_delay = max(max_retry_delay, retry_delay)

        capture = self._open_device(first=True)
        if capture is None:
            raise SourceError(
                f"{self._name} could not be opened: is it plugged in, and not in use by "
                "another program?",
                code="camera_unavailable",
            )
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._latest: Frame | None = None  # the one-frame slot
        self._next_index = 0
        self._returned = -1  # index of the last frame read() gave out
        self._last_frame_at = clock()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run,
            args=(capture,),
            name=f"facepay-camera-{device}",
            daemon=True,
        )
        self._thread.start()

    def read(self, timeout: float | None = None) -> Frame | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while True:
                if self._closed:
                    return None
                latest = self._latest
                if latest is not None and latest.index > self._returned:
                    self._returned = latest.index
                    return latest
                silent = self._clock() - self._last_frame_at
                if silent > self._stall_limit:
                    raise SourceError(
                        f"{self._name} has given no frame for {silent:.1f} s: check its cable; "
                        "it is reopened as soon as it is back",
                        code="camera_lost",
                    )
                wait = _STALL_POLL
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    wait = min(wait, remaining)
                self._ready.wait(wait)

    def close(self) -> None:
        with self._ready:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self._ready.notify_all()
        if self._thread is threading.current_thread():
            return
        self._thread.join(JOIN_TIMEOUT)
        if self._thread.is_alive():
            logger.warning(
                "%s: the reader is still inside a device read; it lets the camera go when "
                "the read returns",
                self._name,
            )

    # The reader thread: it alone touches the capture once started, and releases it on exit.

    def _run(self, capture: Any | None) -> None:
        delay = self._retry_delay
        lost = False
        try:
            while not self._stop.is_set():
                if capture is None:
                    capture = self._open_device(first=False)
                    if capture is None:
                        self._stop.wait(delay)
                        delay = min(delay * 2, self._max_retry_delay)
                        continue
                image = self._grab(capture)
                if image is None:
                    _release(capture)
                    capture = None
                    if not lost and not self._stop.is_set():
                        lost = True
                        logger.warning("%s stopped giving frames; trying to reopen it", self._name)
                    self._stop.wait(delay)
                    delay = min(delay * 2, self._max_retry_delay)
                    continue
                if lost:
                    lost = False
                    logger.info("%s is back", self.description)
                delay = self._retry_delay
                self._publish(image)
        finally:
            if capture is not None:
                _release(capture)

    def _grab(self, capture: Any) -> npt.NDArray[np.uint8] | None:
        try:
            if not capture.isOpened():
                return None
            ok, pixels = capture.read()
        except Exception:  # cv2.error from a device that went away mid-read
            logger.debug("%s: the read failed", self._name, exc_info=True)
            return None
        if not ok or pixels is None:
            return None
        try:
            return to_rgb(pixels, name=self._name, bgr=True)
        except ImageError as exc:
            logger.debug("%s: unusable frame (%s)", self._name, exc.code)
            return None

    def _publish(self, image: npt.NDArray[np.uint8]) -> None:
        with self._ready:
            now = self._clock()
            self._latest = Frame(image, self._next_index, now)
            self._next_index += 1
            self._last_frame_at = now
            self._ready.notify_all()

    def _open_device(self, *, first: bool) -> Any | None:
        """Open the device and apply the settings; None if it is not there."""
        try:
            capture = self._factory(self._device)
        except Exception:  # cv2.error, or whatever an injected factory raises
            logger.debug("%s: cannot be opened", self._name, exc_info=True)
            return None
        try:
            if not capture.isOpened():
                _release(capture)
                return None
            self._apply_settings(capture)
            self.description = self._describe(capture, first=first)
        except Exception:
            logger.debug("%s: cannot be set up", self._name, exc_info=True)
            _release(capture)
            return None
        return capture

    def _apply_settings(self, capture: Any) -> None:
        # The pixel format first: on V4L2 it decides which sizes and rates are on offer.
        if self._mjpeg:
            capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
        if self._width is not None:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self._width)
        if self._height is not None:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self._height)
        if self._fps is not None:
            capture.set(cv2.CAP_PROP_FPS, self._fps)

    def _describe(self, capture: Any, *, first: bool) -> str:
        """What the device accepted, which is not always what was asked for."""
        width = _int_property(capture, cv2.CAP_PROP_FRAME_WIDTH)
        height = _int_property(capture, cv2.CAP_PROP_FRAME_HEIGHT)
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        fps = fps if math.isfinite(fps) and fps > 0 else 0.0
        fourcc = _fourcc_name(capture.get(cv2.CAP_PROP_FOURCC))
        details = []
        if width and height:
            details.append(f"{width}x{height}" + (f" @ {_number(fps)} fps" if fps else ""))
        elif fps:
            details.append(f"{_number(fps)} fps")
        if fourcc:
            details.append("MJPEG" if fourcc == "MJPG" else fourcc)
        if first:
            self._report_refusals(width, height, fps, fourcc)
        return f"{self._name} ({', '.join(details)})" if details else self._name

    def _report_refusals(self, width: int, height: int, fps: float, fourcc: str) -> None:
        refused = []
        if (self._width is not None and width != self._width) or (
            self._height is not None and height != self._height
        ):
            asked = f"{self._width or width}x{self._height or height}"
            refused.append(f"{asked} (gave {width}x{height})")
        if self._fps is not None and fps and abs(fps - self._fps) > 0.5:
            refused.append(f"{_number(self._fps)} fps (gave {_number(fps)})")
        if self._mjpeg and fourcc and fourcc != "MJPG":
            refused.append(f"MJPEG (gave {fourcc})")
        if refused:
            logger.info("%s did not accept %s", self._name, "; ".join(refused))


def _int_property(capture: Any, prop: int) -> int:
    value = float(capture.get(prop))
    return round(value) if math.isfinite(value) and value > 0 else 0


def _fourcc_name(value: float) -> str:
    """The four characters of a FOURCC code, or "" when the backend does not tell."""
    if not math.isfinite(value) or value <= 0:
        return ""
    code = int(value)
    name = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return name.strip() if name.isprintable() and name.isascii() else ""


def _number(value: float) -> str:
    return f"{round(value, 2):g}"


def _release(capture: Any) -> None:
    try:
        capture.release()
    except Exception:  # releasing a device that is already gone
        logger.debug("releasing a capture failed", exc_info=True)
