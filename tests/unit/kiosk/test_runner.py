"""The runner: the real flow and face engine fed by real frame sources (photos from the shared
face set, a simulated USB camera), a scripted server (test_flow.ScriptedServer), and actions
from other threads. Most tests turn the loop by hand with `step()`; the thread's own tests wait
for conditions, never for an amount of time."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiosk.camera import DEFAULT_STALL_LIMIT, CameraSource, FrameSource, open_source
from kiosk.errors import KioskError
from kiosk.flow import Flow, FlowSettings
from kiosk.runner import AnnouncingServer, Runner
from models.engine import FaceEngine
from tests.unit.kiosk.test_camera import FakeCamera, FakeClock
from tests.unit.kiosk.test_flow import APPROVED, ScriptedLiveness, ScriptedServer

P01 = ["img1.jpg", "img2.jpg", "img4.jpg"]  # one person, three good photos (see test_flow)


def wait_for(predicate: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Wait until `predicate` holds (a condition, not a duration: `limit` only stops a hang)."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def p01_folder(faces_dir: Path, tmp_path: Path) -> Path:
    """A folder of one person's photos: links to the shared set, nothing copied."""
    folder = tmp_path / "p01"
    folder.mkdir()
    for name in P01:
        (folder / name).symlink_to(faces_dir / "images" / name)
    return folder


class WatchingServer(ScriptedServer):
    """Also notes what the screen showed while each request was on its way."""

    def __init__(self, answers: list[Any]) -> None:
        super().__init__(answers)
        self.runner: Runner | None = None
        self.shown: list[tuple[str, str]] = []

    def _next(self) -> Any:
        assert self.runner is not None
        screen = self.runner.view.screen
        self.shown.append((screen.state, screen.prompt))
        return super()._next()


def make_runner(
    engine: FaceEngine,
    server: ScriptedServer,
    spec: str,
    *,
    clock: Callable[[], float] = time.monotonic,
    liveness: Any = None,
    reopen: bool = True,
    loop: bool = False,
    **settings: Any,
) -> Runner:
    announcing = AnnouncingServer(server)
    flow = Flow(
        engine=engine,
        server=announcing,
        liveness=(lambda: liveness) if liveness is not None else None,
        clock=clock,
        settings=FlowSettings(**{"enroll_spacing_s": 0.0, **settings}),
    )
    runner = Runner(
        flow,
        open_source(spec),
        reopen=(lambda: open_source(spec)) if reopen else None,
        loop=loop,
        pace=False,
        clock=clock,
        server=announcing,
        tick_interval=0.01,
    )
    if isinstance(server, WatchingServer):
        server.runner = runner
    return runner


def steps_until(runner: Runner, state: str, limit: int = 50) -> None:
    for _ in range(limit):
        if runner.view.screen.state == state:
            return
        runner.step()
    raise AssertionError(f"the flow is {runner.view.screen.state}, not {state}")


def test_a_payment_from_a_folder_of_photos(engine: FaceEngine, p01_folder: Path) -> None:
    server = WatchingServer([APPROVED])
    runner = make_runner(engine, server, str(p01_folder))
    runner.step()
    assert runner.view.screen.state == "idle" and runner.preview() is None
    runner.start_payment(1_250, "CAD")
    view = runner.view  # published by the action itself, before any frame
    assert (view.screen.state, view.screen.prompt, view.screen.amount) == (
        "looking",
        "look_at_camera",
        1_250,
    )
    runner.step()
    preview = runner.preview()
    assert preview is not None and preview.face_box is not None
    assert (
        runner.view.preview_seq == preview.seq and runner.view.screen.face_box == preview.face_box
    )
    steps_until(runner, "done")
    assert runner.flow.result is not None and runner.flow.result.outcome == "approved"
    # The screen said "please wait" while the request was on its way.
    assert server.shown == [("sending", "please_wait")]
    [(amount, currency, _, liveness)] = server.payments
    assert (amount, currency, liveness) == (1_250, "CAD", "none")
    runner.step()
    assert runner.preview() is None and runner.view.preview_seq == 0  # dropped after looking
    runner.stop()


def test_a_recording_loops_and_starts_again_for_each_session(
    engine: FaceEngine, faces_dir: Path
) -> None:
    photo = str(faces_dir / "images" / "img1.jpg")  # one frame per pass
    answer = {"masked_label": "Marie T.", "wallet_balance": 0}
    server = ScriptedServer([answer, APPROVED])
    runner = make_runner(engine, server, photo, loop=True, enroll_max_frames=5)
    runner.start_enrollment(email="m@example.com", phone="5145550142")
    runner.agree("Marie Tremblay")
    steps_until(runner, "done")
    assert runner.flow.result is not None and runner.flow.result.outcome == "enrolled"
    # Five frames from five passes: their stamps went forward, or the flow would skip them.
    [sent] = server.enrollments
    assert len(sent["embeddings"]) == 5

    runner.start_payment(500, "CAD")  # the next session gets the recording again
    steps_until(runner, "done")
    assert runner.flow.result is not None and runner.flow.result.outcome == "approved"
    runner.stop()


def test_the_end_of_a_recording_ends_the_looking(engine: FaceEngine, faces_dir: Path) -> None:
    couple = str(faces_dir / "images" / "couple.jpg")  # two faces: never a good frame
    runner = make_runner(engine, ScriptedServer(), couple, reopen=False)
    runner.start_payment(500, "CAD")
    runner.step()
    assert runner.view.screen.prompt == "one_person"
    steps_until(runner, "done")
    result = runner.flow.result
    assert result is not None and (result.outcome, result.code) == ("no_face", "no_good_frames")
    # Used once, without a way to open it again: the screen says there are no more frames.
    assert runner.view.problem is not None and runner.view.problem.code == "source_ended"
    runner.start_payment(500, "CAD")
    runner.step()
    assert runner.view.screen.state == "looking"  # sessions still start; their time limit ends them
    runner.stop()


@pytest.fixture
def camera() -> Iterator[FakeCamera]:
    device = FakeCamera()
    yield device
    device.unplug()  # the fake's reads wait for frames forever; a real camera's do not


def test_a_lost_camera_is_shown_and_recovers(engine: FaceEngine, camera: FakeCamera) -> None:
    clock = FakeClock()
    source: FrameSource = CameraSource(
        0, clock=clock, capture_factory=camera.factory, retry_delay=0.01
    )
    flow = Flow(
        engine=engine,
        server=ScriptedServer(),
        liveness=None,
        clock=clock,
        settings=FlowSettings(looking_timeout_s=20.0),
    )
    runner = Runner(flow, source, clock=clock, tick_interval=0.01, read_timeout=0.05)
    camera.emit("red")
    runner.step()
    assert runner.view.problem is None

    camera.unplug()
    camera.wait_for(lambda: camera.failed_opens >= 1)
    runner.start_payment(500, "CAD")
    clock.now += DEFAULT_STALL_LIMIT + 1
    runner.step()
    problem = runner.view.problem
    assert problem is not None and problem.code == "camera_lost" and problem.since == clock.now
    assert runner.view.screen.state == "looking"
    clock.now += 20.0  # the flow's time limit holds while the camera is away
    runner.step()
    result = runner.flow.result
    assert result is not None and (result.outcome, result.code) == (
        "timed_out",
        "looking_timed_out",
    )

    camera.plug()
    camera.emit("blue")
    runner.step()
    assert runner.view.problem is None
    runner.stop()


def test_a_flow_failure_ends_the_session_not_the_runner(
    engine: FaceEngine, p01_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = ScriptedServer([RuntimeError("the client broke"), APPROVED])
    with make_runner(engine, server, str(p01_folder)) as runner:
        runner.start_payment(500, "CAD")
        wait_for(lambda: runner.view.screen.state == "done", "the session to end")
        assert runner.flow.result is not None and runner.flow.result.outcome == "cancelled"
        assert runner.running
        assert any(r.levelno == logging.ERROR and r.name == "kiosk.runner" for r in caplog.records)
        runner.start_payment(500, "CAD")  # and the next session works
        wait_for(lambda: runner.flow.result is not None and runner.flow.result.ok, "approval")


def test_actions_from_other_threads_are_taken_one_at_a_time(
    engine: FaceEngine, p01_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = ScriptedServer([APPROVED] * 1_000 + [{"masked_label": "M."}] * 1_000)
    check = ScriptedLiveness(frames_needed=1, passes=True)
    runner = make_runner(engine, server, str(p01_folder), loop=True, liveness=check)
    unexpected: list[BaseException] = []
    refused: list[str] = []
    done = threading.Barrier(5)

    def shopper(seed: int) -> None:
        rng = random.Random(seed)
        actions: list[Callable[[], None]] = [
            lambda: runner.start_payment(rng.randint(1, 9_999), "CAD"),
            lambda: runner.start_enrollment(email="m@example.com", phone="5145550142"),
            lambda: runner.agree("Marie Tremblay"),
            lambda: runner.enter_digits("0142"),
            runner.cancel,
            runner.pay_another_way,
        ]
        try:
            for _ in range(40):
                try:
                    rng.choice(actions)()
                except KioskError as error:
                    refused.append(error.code)  # the flow said no: busy, nothing to agree to…
                time.sleep(rng.random() / 50)
        except BaseException as error:  # pragma: no cover - what the test is looking for
            unexpected.append(error)
        finally:
            done.wait()

    with runner:
        threads = [threading.Thread(target=shopper, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        done.wait()
        for thread in threads:
            thread.join()
        assert runner.running
        runner.cancel()
        wait_for(lambda: runner.view.screen.state in ("done", "idle"), "the end of the session")
        # Whatever the shoppers left behind, the flow is whole: a payment still goes through.
        runner.start_payment(500, "CAD")
        wait_for(lambda: runner.view.screen.state == "done", "the last payment")
        result = runner.flow.result
        assert result is not None and result.outcome == "approved", result
    assert unexpected == []
    assert set(refused) <= {"kiosk_busy", "no_consent_pending", "no_step_up_pending"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_stop_ends_the_thread_and_closes_the_source(engine: FaceEngine, p01_folder: Path) -> None:
    source = open_source(str(p01_folder))
    flow = Flow(engine=engine, server=ScriptedServer(), liveness=None, clock=time.monotonic)
    runner = Runner(flow, source, pace=False, tick_interval=0.01)
    runner.start()
    assert runner.running
    with pytest.raises(RuntimeError):
        runner.start()
    runner.stop()
    assert not runner.running and source.read() is None
    runner.stop()  # again: nothing to do
    assert runner.view.screen.state == "idle"


def test_announcing_server_passes_everything_through() -> None:
    server = ScriptedServer([{"status": "deleted"}, {"status": "approved"}])
    announcing = AnnouncingServer(server)
    calls: list[str] = []
    announcing.announce = lambda: calls.append("announced")
    assert announcing.policy()["version"] == 3
    vector = np.ones(4, np.float32) / 2
    from models.engine import Embedding

    deleted = announcing.delete_me(Embedding(vector, "p@1"), "none", phone="+1 514 555 0142")
    assert deleted == {"status": "deleted"}
    assert announcing.step_up({"status": "step_up_required"}, phone_last4="0142") == {
        "status": "approved"
    }
    assert calls == ["announced"] * 3
    assert server.phones == [{"phone": "+1 514 555 0142"}, {"phone_last4": "0142"}]
