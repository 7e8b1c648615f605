"""`facepay kiosk pay` and `delete-me` with phone answers: `drive` (the loop the commands run)
over the real flow and face engine, a folder of one person's photos and a scripted server;
what the command prints and its exit status; and the options refused before any camera or
server is touched."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kiosk.camera import open_source
from kiosk.cli import _finish, drive, kiosk_group
from kiosk.errors import ServerError
from kiosk.flow import Flow, FlowSettings, Result
from models.engine import FaceEngine
from tests.unit.kiosk.test_flow import APPROVED, ScriptedServer

PHONE = "+1 514 555 0142"
LAST4 = "0142"
P01 = ("img1.jpg", "img2.jpg", "img4.jpg")


def challenge(ask: str | None) -> dict[str, Any]:
    asked: dict[str, Any] = {"status": "step_up_required", "payment_id": "p-2", "tries_left": 3}
    if ask is not None:
        asked["step_up_ask"] = ask
    return asked


@pytest.fixture
def p01_folder(faces_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "p01"
    folder.mkdir()
    for name in P01:
        (folder / name).symlink_to(faces_dir / "images" / name)
    return folder


def run_session(
    engine: FaceEngine, server: ScriptedServer, folder: Path, start: str, **answers: str
) -> Result:
    flow = Flow(
        engine=engine,
        server=server,
        liveness=None,
        clock=time.monotonic,
        settings=FlowSettings(enroll_spacing_s=0.0),
    )
    if start == "pay":
        flow.start_payment(25_000, "CAD")
        given = answers
    else:
        flow.start_deletion(answers.get("phone_last4"), phone=answers.get("phone"))
        given = {}
    with open_source(str(folder)) as frames:
        result: Result = drive(flow, frames, **given)
    return result


def finished(result: Result, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The exit status and the line `facepay kiosk …` prints for this result."""
    try:
        _finish(result, as_json=False)
    except SystemExit as exit:
        status = int(exit.code or 0)
    else:
        status = 0
    return status, capsys.readouterr().out


@pytest.mark.parametrize(
    ("ask", "sent"),
    [
        ("phone", {"phone": PHONE}),
        ("phone_last4", {"phone_last4": LAST4}),
        (None, {"phone_last4": LAST4}),
    ],
)
def test_pay_answers_the_step_up_with_the_option_it_asks_for(
    engine: FaceEngine,
    p01_folder: Path,
    capsys: pytest.CaptureFixture[str],
    ask: str | None,
    sent: dict[str, str],
) -> None:
    """Both options given: only the one the server asks for is sent."""
    server = ScriptedServer([challenge(ask), APPROVED])
    result = run_session(engine, server, p01_folder, "pay", phone_last4=LAST4, phone=PHONE)
    assert result.outcome == "approved" and server.phones == [sent]
    status, printed = finished(result, capsys)
    assert status == 0 and printed.startswith("approved")


@pytest.mark.parametrize(
    ("ask", "given", "code", "option"),
    [
        ("phone", {"phone_last4": LAST4}, "phone_required", "--phone NUMBER"),
        ("phone_last4", {"phone": PHONE}, "phone_last4_required", "--phone-last4 DDDD"),
        (None, {}, "phone_last4_required", "--phone-last4 DDDD"),
    ],
)
def test_pay_without_the_option_asked_for_says_which_one_and_exits_1(
    engine: FaceEngine,
    p01_folder: Path,
    capsys: pytest.CaptureFixture[str],
    ask: str | None,
    given: dict[str, str],
    code: str,
    option: str,
) -> None:
    server = ScriptedServer([challenge(ask)])
    result = run_session(engine, server, p01_folder, "pay", **given)
    assert (result.outcome, result.code) == ("other_way", code)
    assert server.phones == []  # the other kind is never sent in its place
    status, printed = finished(result, capsys)
    assert status == 1
    assert f"[{code}]" in printed and f"give {option}" in printed


def test_a_wrong_answer_is_not_tried_again(
    engine: FaceEngine, p01_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    again = {**challenge("phone"), "tries_left": 2}
    server = ScriptedServer([challenge("phone"), again])
    result = run_session(engine, server, p01_folder, "pay", phone=PHONE)
    assert result.outcome == "other_way" and "not accepted" in result.explanation
    assert server.phones == [{"phone": PHONE}]
    assert finished(result, capsys)[0] == 1


def test_delete_me_told_the_full_number_is_needed_names_the_option(
    engine: FaceEngine, p01_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    needs_full = ServerError("four digits are not enough", code="full_phone_required", status=422)
    receipt = {"status": "deleted", "request_id": "r-1", "done_at": "2026-11-26T23:00:00+00:00"}
    server = ScriptedServer([needs_full, receipt])
    result = run_session(engine, server, p01_folder, "delete", phone_last4=LAST4)
    assert (result.outcome, result.code) == ("full_phone_required", "full_phone_required")
    status, printed = finished(result, capsys)
    assert status == 1 and "full phone number" in printed and "--phone NUMBER" in printed
    result = run_session(engine, server, p01_folder, "delete", phone=PHONE)
    assert result.outcome == "deleted"
    assert server.phones == [{"phone_last4": LAST4}, {"phone": PHONE}]


def test_the_json_result_carries_the_code_and_the_explanation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = Result("other_way", "phone_required", explanation="give --phone NUMBER")
    with pytest.raises(SystemExit) as exit:
        _finish(missing, as_json=True)
    assert exit.value.code == 1
    printed = json.loads(capsys.readouterr().out)
    assert (printed["code"], printed["explanation"]) == ("phone_required", "give --phone NUMBER")


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["pay", "--amount", "5", "--phone", "12345"], "--phone"),
        (["pay", "--amount", "5", "--phone", "+1 514 555 0142 ext 9"], "--phone"),
        (["pay", "--amount", "5", "--phone-last4", "142"], "--phone-last4"),
        (["delete-me"], "--phone-last4 DDDD or --phone NUMBER"),
        (["delete-me", "--phone-last4", LAST4, "--phone", PHONE], "one of the two"),
        (["delete-me", "--phone", "0142"], "--phone"),
    ],
)
def test_phone_options_are_checked_before_anything_starts(
    tmp_path: Path, arguments: list[str], says: str
) -> None:
    """Refused with a usage error (exit 2) before the kiosk's home, camera or server is used:
    the home here is not even registered."""
    home = tmp_path / "unregistered"
    runner = CliRunner()
    outcome = runner.invoke(
        kiosk_group, ["--home", str(home), *arguments, "--source", str(tmp_path)]
    )
    assert outcome.exit_code == 2, outcome.output
    assert says in outcome.output
    assert not home.exists()
    if len(arguments) > 1 and arguments[-2] in ("--phone", "--phone-last4"):
        assert arguments[-1] not in outcome.output  # a phone number is not echoed
