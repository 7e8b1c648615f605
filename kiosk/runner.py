"""The runner: one flow, one frame source and a background thread that drives the one with the
other, for the customer screen.

The thread reads a frame and hands it to `Flow.on_frame`, or calls `Flow.tick` when no frame
is due, so the flow's time limits hold. Every call into the flow, from that thread or from the
screen's web handlers (start a payment, "I agree", the digits, cancel, pay another way), goes
through one lock, one call at a time. The screen reads `Runner.view`, a snapshot published
after every call (and, through `AnnouncingServer`, just before each server call, so "please
wait" shows while the call blocks), and `Runner.preview`, the latest frame while the flow is
looking at the shopper.

Sources:

- a camera is read all the time (it keeps only its latest frame); frames are used only while
  the flow is looking or checking liveness. A camera that stops giving frames
  (`SourceError(code="camera_lost")`) puts a `Problem` in the view and the flow's time limits
  run on; the problem clears with the next frame.
- a recorded source (video, image, folder) stands for what the camera sees during a session:
  it starts again from its beginning when a session starts looking (if `reopen` is given), is
  paced at its own frame rate, and, at its end, either starts again (`loop`) or ends the
  looking like the headless commands do (`Flow.end_of_source`). Frames of a restarted
  recording are stamped after the last one, so timestamps never go back.

Frames stay in memory: nothing here logs, stores or sends pixels, and the preview is dropped
as soon as the flow stops looking.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from kiosk.camera import FrameSource
from kiosk.errors import SourceError
from kiosk.flow import Flow, Screen, Server
from models.engine import Embedding

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]

FACE_STATES = frozenset({"looking", "liveness"})
"""The flow's states that take frames; the preview exists only in these."""

# A recorded source's frames are spaced by their own timestamps, but never more than this.
MAX_FRAME_GAP = 1.0
# Spacing assumed between the last frame of a recording and the first of its next pass.
DEFAULT_FRAME_GAP = 0.1
# How long stop() waits for the thread, which may be inside a server call.
JOIN_TIMEOUT = 15.0


@dataclass(frozen=True)
class Problem:
    """Something wrong with the frames that the screen must say: camera_lost (it comes back
    by itself), source_failed or source_ended (no more frames: pay another way)."""

    code: str
    message: str  # for people and logs, English; the screen has its own texts by code
    since: float  # on the runner's clock


@dataclass(frozen=True)
class View:
    """What the screen shows: the flow's `Screen`, a problem with the frames, and the number
    of the latest preview frame (0: none), which the page uses to fetch a new picture."""

    screen: Screen
    problem: Problem | None = None
    preview_seq: int = 0
    locale: str = "en"


@dataclass(frozen=True, eq=False)
class Preview:
    """The latest frame the flow looked at (RGB) and the face box found in it."""

    image: npt.NDArray[np.uint8]
    face_box: Box | None
    seq: int


@dataclass(frozen=True, eq=False)
class _Stamped:
    """A frame as the flow gets it: the source's picture, a timestamp that never goes back."""

    image: npt.NDArray[np.uint8]
    timestamp: float


class AnnouncingServer:
    """The flow's server, calling `announce` before each request, so the runner can publish
    the screen ("please wait") while the request blocks inside a flow call."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self.announce: Callable[[], None] = _nothing

    def policy(self) -> dict[str, Any]:
        self.announce()
        return self._server.policy()

    def enroll(
        self,
        *,
        policy_version: int,
        text_sha256: str,
        locale: str,
        signature_name: str,
        signed_at: dt.datetime,
        embeddings: Sequence[Embedding],
        liveness: str,
        email: str,
        phone: str,
        wallet_amount: int,
        currency: str,
    ) -> Any:
        self.announce()
        return self._server.enroll(
            policy_version=policy_version,
            text_sha256=text_sha256,
            locale=locale,
            signature_name=signature_name,
            signed_at=signed_at,
            embeddings=embeddings,
            liveness=liveness,
            email=email,
            phone=phone,
            wallet_amount=wallet_amount,
            currency=currency,
        )

    def pay(self, amount_minor: int, currency: str, embedding: Embedding, liveness: str) -> Any:
        self.announce()
        return self._server.pay(amount_minor, currency, embedding, liveness)

    def step_up(
        self, answer: Any, *, phone_last4: str | None = None, phone: str | None = None
    ) -> Any:
        self.announce()
        return self._server.step_up(answer, phone_last4=phone_last4, phone=phone)

    def delete_me(
        self,
        embedding: Embedding,
        liveness: str,
        *,
        phone_last4: str | None = None,
        phone: str | None = None,
    ) -> Any:
        self.announce()
        return self._server.delete_me(embedding, liveness, phone_last4=phone_last4, phone=phone)


def _nothing() -> None:
    return None


class Runner:
    """Drives `flow` with frames of `source` on a thread; see the module's docstring.

    `reopen` opens the recorded source again (for a new session or the next pass of `loop`);
    without it a recorded source is used once. `pace` spaces a recorded source's frames by
    their timestamps (off in tests). `server`, if the flow was built with it, lets the screen
    show "please wait" during server calls. `clock` should be the flow's clock.
    """

    def __init__(
        self,
        flow: Flow,
        source: FrameSource,
        *,
        reopen: Callable[[], FrameSource] | None = None,
        loop: bool = True,
        pace: bool = True,
        clock: Callable[[], float] = time.monotonic,
        server: AnnouncingServer | None = None,
        tick_interval: float = 0.1,
        read_timeout: float = 0.2,
    ) -> None:
        self._flow = flow
        self._source: FrameSource | None = source
        self._live = source.live
        self.description = source.description
        self._reopen = reopen
        self._loop = loop
        self._pace = pace
        self._clock = clock
        self._tick_interval = tick_interval
        self._read_timeout = read_timeout

        self._lock = threading.RLock()  # every call into the flow
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        self._new_session = False  # a session started and has not looked yet (the lock's)
        # Only the runner's thread (or step() in tests) touches these.
        self._used = False  # the recorded source has given frames since it was opened
        self._empty_pass = False  # the last rewind came after a pass that gave no frame
        self._offset = 0.0  # added to a recorded source's timestamps
        self._last_source_stamp: float | None = None
        self._last_stamp: float | None = None
        self._gap = DEFAULT_FRAME_GAP

        self._problem: Problem | None = None
        self._preview: Preview | None = None
        self._preview_seq = 0
        self._view = View(flow.screen, locale=flow.settings.locale)
        if server is not None:
            server.announce = self._publish

    # ------------------------------------------------------------ what the screen reads

    @property
    def flow(self) -> Flow:
        return self._flow

    @property
    def view(self) -> View:
        """The latest published view; reading it never waits for the flow."""
        return self._view

    def preview(self) -> Preview | None:
        """The latest frame looked at, while the flow is looking; None otherwise."""
        return self._preview

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------ what the till and shopper do

    def start_payment(self, amount_minor: int, currency: str) -> None:
        self._call(lambda: self._flow.start_payment(amount_minor, currency), starts=True)

    def start_enrollment(
        self, *, email: str, phone: str, wallet_amount: int = 0, currency: str = "CAD"
    ) -> None:
        self._call(
            lambda: self._flow.start_enrollment(
                email=email, phone=phone, wallet_amount=wallet_amount, currency=currency
            ),
            starts=True,
        )

    def start_deletion(self, phone_last4: str | None = None, *, phone: str | None = None) -> None:
        self._call(lambda: self._flow.start_deletion(phone_last4, phone=phone), starts=True)

    def agree(self, name: str) -> None:
        self._call(lambda: self._flow.agree(name))

    def enter_digits(self, typed: str) -> None:
        self._call(lambda: self._flow.enter_digits(typed))

    def cancel(self) -> None:
        self._call(self._flow.cancel)

    def pay_another_way(self) -> None:
        self._call(self._flow.pay_another_way)

    def _call(self, action: Callable[[], None], *, starts: bool = False) -> None:
        with self._lock:
            try:
                action()
                if starts:
                    self._new_session = True  # (the action raises when it starts nothing)
            finally:
                self._publish()

    # ------------------------------------------------------------ the thread

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a runner is started once")
        self._thread = threading.Thread(target=self._run, name="facepay-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then close the source; idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                logger.warning("the runner is still inside a flow call; it stops after it")
        self._close_source()
        self._preview = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                # The flow or the engine failed on a frame: end the session, keep the screen.
                logger.exception("the kiosk flow failed; the session is cancelled")
                with self._lock:
                    self._flow.cancel()
                    self._publish()
                self._stop.wait(self._tick_interval)

    def step(self) -> None:
        """One turn of the loop: a frame into the flow, or a tick (the thread calls this)."""
        with self._lock:
            looking = self._flow.state in FACE_STATES
            starts = looking and self._new_session
            if starts:
                self._new_session = False
        if starts:
            self._session_starts()
        if not looking:
            self._drop_preview()

        source = self._source
        if source is None or not (looking or self._live):
            self._tick()
            self._stop.wait(self._tick_interval)
            return
        try:
            frame = source.read(timeout=self._read_timeout)
        except SourceError as error:
            self._source_trouble(error)
            return
        if frame is None:
            if self._live:
                self._tick()  # no frame in time: the time limits still hold
            else:
                self._recording_ended()
            return
        self._frames_back()
        if not looking:
            self._tick()  # a live camera's frame outside a session: not used, not kept
            self._stop.wait(self._tick_interval)
            return
        started = self._clock()
        image = frame.image
        with self._lock:
            if self._flow.state in FACE_STATES:
                self._flow.on_frame(_Stamped(image, self._stamp(frame.timestamp)))
                box = self._flow.screen.face_box
                self._preview_seq += 1
                self._preview = Preview(image, box, self._preview_seq)
            else:
                self._flow.tick()
            self._publish()
        if self._pace and not self._live:
            self._stop.wait(max(0.0, self._gap - (self._clock() - started)))

    # ------------------------------------------------------------ inside

    def _publish(self) -> None:
        """Snapshot the flow for the screen."""
        with self._lock:
            preview = self._preview
            self._view = View(
                screen=self._flow.screen,
                problem=self._problem,
                preview_seq=preview.seq if preview is not None else 0,
                locale=self._flow.settings.locale,
            )

    def _tick(self) -> None:
        with self._lock:
            self._flow.tick()
            self._publish()

    def _drop_preview(self) -> None:
        if self._preview is not None:
            self._preview = None
            self._publish()

    def _stamp(self, source_timestamp: float) -> float:
        if self._last_source_stamp is not None:
            gap = source_timestamp - self._last_source_stamp
            if 0 < gap <= MAX_FRAME_GAP:
                self._gap = gap
        self._last_source_stamp = source_timestamp
        stamp = source_timestamp + self._offset
        if self._last_stamp is not None and stamp < self._last_stamp:
            stamp = self._last_stamp  # a camera's clock may not move between two frames
        self._last_stamp = stamp
        self._used = True
        self._empty_pass = False
        return stamp

    def _session_starts(self) -> None:
        """A recorded source starts from its beginning with each session."""
        if not self._live and self._used and self._reopen is not None:
            self._rewind()

    def _rewind(self) -> bool:
        assert self._reopen is not None
        self._close_source()
        try:
            self._source = self._reopen()
        except SourceError as error:
            self._source_trouble(error)
            return False
        # The next pass is stamped after the last frame given, one frame gap later.
        base = self._last_stamp if self._last_stamp is not None else 0.0
        self._offset = base + self._gap
        self._last_source_stamp = None
        self._used = False
        return True

    def _recording_ended(self) -> None:
        # Looping, a pass that gave no frame (a session that began at the recording's very
        # end) gets one more pass; two empty passes in a row mean the recording is empty.
        if self._loop and self._reopen is not None and (self._used or not self._empty_pass):
            self._empty_pass = not self._used
            if self._rewind():
                return
        with self._lock:
            if self._flow.state in FACE_STATES:
                self._flow.end_of_source()
                if self._flow.state in FACE_STATES:
                    self._flow.cancel()
            self._publish()
        if self._reopen is None:  # used once: no more frames for later sessions
            self._close_source()
            self._set_problem("source_ended", f"{self.description}: no more frames")
        # else: the next session opens the recording again (it has been used)

    def _source_trouble(self, error: SourceError) -> None:
        if error.code == "camera_lost":
            if self._problem is None or self._problem.code != "camera_lost":
                logger.warning("%s; the screen says so until it is back", error)
            self._set_problem("camera_lost", str(error))
            self._tick()
            self._stop.wait(self._tick_interval)
            return
        logger.error("%s; no more frames from %s", error, self.description)
        self._close_source()
        with self._lock:
            if self._flow.state in FACE_STATES:
                self._flow.cancel()
            self._publish()
        self._set_problem("source_failed", str(error))

    def _frames_back(self) -> None:
        problem = self._problem
        if problem is not None and problem.code == "camera_lost":
            logger.info("%s gives frames again", self.description)
            self._problem = None
            self._publish()

    def _set_problem(self, code: str, message: str) -> None:
        current = self._problem
        if current is None or current.code != code:
            self._problem = Problem(code, message, self._clock())
            self._publish()

    def _close_source(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.close()


__all__ = ["FACE_STATES", "AnnouncingServer", "Preview", "Problem", "Runner", "View"]
