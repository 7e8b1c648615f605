"""Frame sources: real video and image files made in tmp_path, and a camera on a simulated cable."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from kiosk.camera import DEFAULT_STALL_LIMIT, CameraSource, Frame, FrameSource, open_source
from kiosk.errors import SourceError

# Pure colours, as OpenCV stores them (BGR), and as the sources must give them (RGB).
BGR = {
    "red": (0, 0, 255),
    "green": (0, 255, 0),
    "blue": (255, 0, 0),
    "yellow": (0, 255, 255),
    "magenta": (255, 0, 255),
}
RGB = {name: (r, g, b) for name, (b, g, r) in BGR.items()}
SIZE = (48, 64)  # rows, columns


def solid(colour: str, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.full((*size, 3), BGR[colour], dtype=np.uint8)


def colour_of(frame: Frame, tolerance: int = 24) -> str:
    """The name of the pure colour the frame shows (RGB), within a JPEG-sized tolerance."""
    assert frame.image.dtype == np.uint8 and frame.image.ndim == 3 and frame.image.shape[2] == 3
    assert frame.image.flags.c_contiguous
    mean = frame.image.reshape(-1, 3).mean(axis=0)
    for name, rgb in RGB.items():
        if np.all(np.abs(mean - np.array(rgb)) <= tolerance):
            return name
    raise AssertionError(f"not a pure colour: {mean}")


def read_all(source: FrameSource) -> list[Frame]:
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    return frames


# --- recorded sources ----------------------------------------------------------------------------


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, SIZE[::-1])
    assert writer.isOpened()
    for colour in BGR:
        writer.write(solid(colour))
    writer.release()
    return path


def test_video_gives_every_frame_in_order_as_rgb(video: Path) -> None:
    with open_source(str(video)) as source:
        assert source.live is False
        assert source.description == "video clip.avi (64x48 @ 10 fps)"
        frames = read_all(source)
        assert source.read() is None  # stays exhausted
    assert [colour_of(f) for f in frames] == list(BGR)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert all(f.image.shape == (*SIZE, 3) for f in frames)


def test_video_closed_early_gives_no_more_frames(video: Path) -> None:
    source = open_source(str(video))
    assert source.read() is not None
    source.close()
    source.close()
    assert source.read() is None


def test_image_file_is_one_frame(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    assert cv2.imwrite(str(path), solid("red"))
    with open_source(str(path)) as source:
        assert (source.live, source.description) == (False, "image red.png (64x48)")
        frame = source.read()
        assert source.read() is None
    assert frame is not None
    assert (frame.index, frame.timestamp) == (0, 0.0)
    assert np.array_equal(frame.image, np.full((*SIZE, 3), RGB["red"], np.uint8))


def test_folder_in_name_order_skipping_what_is_not_an_image(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    assert cv2.imwrite(str(folder / "b.png"), solid("green"))
    assert cv2.imwrite(str(folder / "a.png"), solid("red"))
    assert cv2.imwrite(str(folder / "c.jpg"), solid("blue"))
    (folder / "notes.txt").write_text("not a picture")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # an image header, no image
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "sub").mkdir()

    with caplog.at_level(logging.WARNING, logger="kiosk.camera"):
        source = open_source(str(folder), image_fps=4.0)
        assert source.live is False
        assert source.description.endswith(" images in pics/")
        frames = read_all(source)
        source.close()

    assert [colour_of(f) for f in frames] == ["red", "green", "blue"]
    assert [f.index for f in frames] == [0, 1, 2]
    assert [f.timestamp for f in frames] == [0.0, 0.25, 0.5]
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(skipped) == 2
    assert any("notes.txt" in m for m in skipped) and any("bad.png" in m for m in skipped)


def test_folder_description_counts_images(tmp_path: Path) -> None:
    for name in ("1.png", "2.png"):
        assert cv2.imwrite(str(tmp_path / name), solid("red"))
    with open_source(str(tmp_path)) as source:
        assert source.description == f"2 images in {tmp_path.name}/"


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda d: str(d / "missing.mp4"), "source_not_found"),
        (lambda d: "", "source_not_found"),
        (lambda d: _write(d / "notes.txt", b"hello, not a picture" * 20), "source_unreadable"),
        (lambda d: _write(d / "clip.mp4", b"\0\1\2\3 not a video" * 100), "source_unreadable"),
        (lambda d: _write(d / "cut.jpg", _jpeg()[:40]), "source_unreadable"),
        (lambda d: str(Path(_write(d / "text" / "notes.txt", b"x")).parent), "source_unreadable"),
        (lambda d: str(Path(_write(d / "none" / ".keep", b"")).parent), "source_unreadable"),
    ],
    ids=["missing", "empty", "text-file", "junk-video", "truncated-jpeg", "no-image", "empty-dir"],
)
def test_bad_specs(tmp_path: Path, make: Callable[[Path], str], code: str) -> None:
    with pytest.raises(SourceError) as error:
        open_source(make(tmp_path))
    assert error.value.code == code
    assert str(error.value)


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def _jpeg() -> bytes:
    ok, data = cv2.imencode(".jpg", solid("red"))
    assert ok
    return bytes(data.tobytes())


# --- cameras: a simulated device ------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeCamera:
    """A USB camera on a cable the test holds: it gives the frames it is handed, one per read,
    can be unplugged (reads fail, opens fail) and plugged back. Modes up to 640x480 at 30 fps."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.plugged = True
        self.broken = False  # True: it opens, but every read fails (a flaky cable or hub)
        self.streaming = False  # True: a new frame every few ms, like a real camera
        self.queue: list[np.ndarray] = []
        self.served = 0
        self.waiting = False  # the reader is inside read(), waiting for a frame
        self.opened: list[int | str] = []
        self.failed_opens = 0
        self.failed_reads = 0
        self.settings: dict[int, float] = {}
        self.captures: list[FakeCapture] = []

    def factory(self, device: int | str, *args: Any) -> FakeCapture:
        with self.cond:
            self.opened.append(device)
            if not self.plugged:
                self.failed_opens += 1
            capture = FakeCapture(self, opened=self.plugged)
            self.captures.append(capture)
            self.cond.notify_all()
            return capture

    def emit(self, colour: str) -> None:
        """Hand the camera a frame and wait until the reader has taken it and is back for more."""
        with self.cond:
            self.queue.append(solid(colour))
            target = self.served + 1
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: self.served >= target and self.waiting, 5.0)

    def unplug(self) -> None:
        with self.cond:
            self.plugged = False
            self.cond.notify_all()

    def plug(self) -> None:
        with self.cond:
            self.plugged = True
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool]) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, 5.0)

    def read(self, capture: FakeCapture) -> tuple[bool, np.ndarray | None]:
        with self.cond:
            while True:
                if not capture.isOpened() or self.broken:
                    self.waiting = False
                    self.failed_reads += 1
                    self.cond.notify_all()
                    return False, None
                if self.queue:
                    self.waiting = False
                    self.served += 1
                    self.cond.notify_all()
                    return True, self.queue.pop(0)
                if self.streaming:
                    self.cond.wait(0.005)
                    self.served += 1
                    return True, solid("green")
                self.waiting = True
                self.cond.notify_all()
                self.cond.wait()


class FakeCapture:
    """What cv2.VideoCapture offers, for FakeCamera."""

    def __init__(self, camera: FakeCamera, *, opened: bool) -> None:
        self.camera = camera
        self.opened = opened
        self.released = False
        self.props = {
            cv2.CAP_PROP_FRAME_WIDTH: 640.0,
            cv2.CAP_PROP_FRAME_HEIGHT: 480.0,
            cv2.CAP_PROP_FPS: 30.0,
            cv2.CAP_PROP_FOURCC: float(cv2.VideoWriter.fourcc(*"YUYV")),
        }

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return self.opened and self.camera.plugged and not self.released

    def set(self, prop: int, value: float) -> bool:
        self.camera.settings[prop] = value
        limits = {cv2.CAP_PROP_FRAME_WIDTH: 640.0, cv2.CAP_PROP_FRAME_HEIGHT: 480.0}
        limits[cv2.CAP_PROP_FPS] = 30.0
        if prop in limits:
            self.props[prop] = min(value, limits[prop])
        elif prop == cv2.CAP_PROP_FOURCC:
            self.props[prop] = value
        return True

    def get(self, prop: int) -> float:
        return self.props.get(prop, 0.0)

    def read(self) -> tuple[bool, np.ndarray | None]:
        return self.camera.read(self)

    def release(self) -> None:
        with self.camera.cond:
            self.released = True
            self.camera.cond.notify_all()


@pytest.fixture
def camera() -> FakeCamera:
    return FakeCamera()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def source(camera: FakeCamera, clock: FakeClock) -> Iterator[FrameSource]:
    # open_source("0", ...) with retries sped up for the test
    opened = CameraSource(0, clock=clock, capture_factory=camera.factory, retry_delay=0.01)
    yield opened
    camera.unplug()  # the fake's read() waits for frames forever; a real camera's does not
    opened.close()


def camera_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("facepay-camera")]


def test_camera_settings_and_what_the_device_accepted(
    camera: FakeCamera, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kiosk.camera"):
        source = open_source(
            "/dev/video2",
            width=1920,
            height=1080,
            fps=60,
            mjpeg=True,
            capture_factory=camera.factory,
        )
    try:
        assert camera.opened == ["/dev/video2"]
        assert camera.settings[cv2.CAP_PROP_FOURCC] == cv2.VideoWriter.fourcc(*"MJPG")
        assert camera.settings[cv2.CAP_PROP_FRAME_WIDTH] == 1920
        assert camera.settings[cv2.CAP_PROP_FPS] == 60
        assert source.live is True
        assert source.description == "camera /dev/video2 (640x480 @ 30 fps, MJPEG)"
        assert "1920x1080 (gave 640x480)" in caplog.text
    finally:
        camera.unplug()
        source.close()


def test_camera_index_without_settings(source: FrameSource, camera: FakeCamera) -> None:
    assert camera.opened == [0]
    assert camera.settings == {}
    assert source.description == "camera 0 (640x480 @ 30 fps, YUYV)"


def test_camera_frames_are_rgb_stamped_with_the_clock(
    source: FrameSource, camera: FakeCamera, clock: FakeClock
) -> None:
    camera.emit("red")
    first = source.read(timeout=2.0)
    clock.now += 0.5
    camera.emit("blue")
    second = source.read(timeout=2.0)
    assert first is not None and second is not None
    assert np.array_equal(first.image, np.full((*SIZE, 3), RGB["red"], np.uint8))
    assert colour_of(second) == "blue"
    assert [(f.index, f.timestamp) for f in (first, second)] == [(0, 100.0), (1, 100.5)]


def test_a_slow_reader_gets_only_the_latest_frame_and_never_twice(
    source: FrameSource, camera: FakeCamera
) -> None:
    for colour in ("red", "green", "blue"):
        camera.emit(colour)
    latest = source.read(timeout=2.0)
    assert latest is not None and (latest.index, colour_of(latest)) == (2, "blue")
    assert source.read(timeout=0.05) is None  # nothing newer yet: no second copy of "blue"
    camera.emit("yellow")
    newer = source.read(timeout=2.0)
    assert newer is not None and (newer.index, colour_of(newer)) == (3, "yellow")


def test_a_camera_that_goes_away_is_lost_then_back(
    source: FrameSource, camera: FakeCamera, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kiosk.camera")
    camera.emit("red")
    assert source.read(timeout=2.0) is not None

    camera.unplug()
    camera.wait_for(lambda: camera.failed_opens >= 2)  # the reader keeps trying to reopen it
    camera.broken = True
    camera.plug()
    camera.wait_for(lambda: camera.failed_reads >= 3)  # it opens again, but gives nothing
    clock.now += DEFAULT_STALL_LIMIT / 2
    assert source.read(timeout=0.02) is None  # silent, but not for long enough yet
    clock.now += DEFAULT_STALL_LIMIT
    for _ in range(2):  # and it stays lost until frames come again
        with pytest.raises(SourceError) as error:
            source.read(timeout=0.02)
        assert error.value.code == "camera_lost"
        assert "camera 0" in str(error.value)

    with camera.cond:
        camera.broken = False
    camera.emit("blue")
    back = source.read(timeout=2.0)
    assert back is not None and (back.index, colour_of(back)) == (1, "blue")
    assert back.timestamp == clock.now

    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [m for level, m in messages if level == logging.WARNING] == [
        "camera 0 stopped giving frames; trying to reopen it"
    ]
    assert [m for level, m in messages if level == logging.INFO] == [
        "camera 0 (640x480 @ 30 fps, YUYV) is back"
    ]


def test_a_blocked_read_raises_once_the_clock_passes_the_stall_limit(
    source: FrameSource, camera: FakeCamera, clock: FakeClock
) -> None:
    camera.unplug()
    outcome: list[BaseException] = []

    def reader() -> None:
        try:
            source.read()  # no timeout: waits for a frame or a stall
        except SourceError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    clock.now += DEFAULT_STALL_LIMIT + 1
    thread.join(5.0)
    assert not thread.is_alive()
    assert [getattr(e, "code", None) for e in outcome] == ["camera_lost"]


def test_close_stops_the_reader_thread(camera: FakeCamera) -> None:
    camera.streaming = True
    with open_source("0", capture_factory=camera.factory) as source:
        assert len(camera_threads()) == 1
        assert all(t.daemon for t in camera_threads())
        assert source.read(timeout=2.0) is not None
    assert camera_threads() == []
    assert all(c.released for c in camera.captures)
    assert source.read(timeout=0.01) is None
    source.close()  # twice is fine


def test_close_wakes_a_waiting_reader(source: FrameSource, camera: FakeCamera) -> None:
    results: list[Frame | None] = []
    thread = threading.Thread(target=lambda: results.append(source.read()))
    thread.start()
    camera.unplug()  # let the fake's blocking read() return, as a real camera's would
    source.close()
    thread.join(5.0)
    assert results == [None]


def test_a_camera_that_cannot_be_opened(camera: FakeCamera) -> None:
    camera.unplug()
    with pytest.raises(SourceError) as error:
        open_source("1", capture_factory=camera.factory)
    assert error.value.code == "camera_unavailable"
    assert "camera 1" in str(error.value)
    assert camera_threads() == []

    def broken(*args: Any) -> Any:
        raise cv2.error("no such device")

    with pytest.raises(SourceError) as error:
        open_source("/dev/video9", capture_factory=broken)
    assert error.value.code == "camera_unavailable"
