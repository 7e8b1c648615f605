"""`facepay kiosk …`: register the kiosk, then enroll, pay and delete from a frame source,
headless (the tests and the demo use these), or run the customer screen.

With `--json` each command prints one JSON object. Exit status: 0 for an approved payment or
a done enrollment or deletion, 1 when declined (or not found, or the face was not good
enough), 2 for errors.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from decimal import Decimal
from typing import Any

import click

from kiosk.errors import SourceError
from kiosk.money import parse_amount
from kiosk.phone import PHONE, PHONE_LAST4, is_last4, is_phone_number

logger = logging.getLogger(__name__)

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
source_option = click.option(
    "--source",
    required=True,
    help="A camera index or /dev/videoN, a video file, an image or a folder of images.",
)
liveness_option = click.option(
    "--liveness",
    type=click.Choice(["auto", "active", "insightface", "off"]),
    default="auto",
    show_default=True,
    help="The presentation-attack check; off only for recorded sources (tests, the demo).",
)

# Outcomes that are a "no" rather than a failure: exit 1.
_NO = {
    "declined",
    "not_found",
    "full_phone_required",
    "liveness_failed",
    "no_face",
    "timed_out",
    "cancelled",
    "other_way",
}
# What a step-up or a deletion may ask for, and the option that answers it.
_ASKED = {PHONE_LAST4: "the last four digits of the phone", PHONE: "the full phone number"}
_OPTIONS = {PHONE_LAST4: "--phone-last4 DDDD", PHONE: "--phone NUMBER"}


def phone_options(phone_last4: str | None, phone: str | None) -> None:
    """Refuse a malformed phone option before the camera starts (the value is not echoed)."""
    if phone_last4 is not None and not is_last4(phone_last4):
        raise click.BadParameter("four digits", param_hint="--phone-last4")
    if phone is not None and not is_phone_number(phone):
        raise click.BadParameter(
            "7 to 15 digits; a leading +, spaces, dashes, dots or parentheses allowed "
            "(24 characters at most)",
            param_hint="--phone",
        )


def to_minor_units(amount: str, currency: str) -> int:
    """ "12.50" CAD -> 1250; refuses more decimals than the currency has."""
    minor = parse_amount(amount, currency)
    if minor is None:
        raise click.BadParameter(f"{amount!r} is not a positive amount in {currency.upper()}")
    return minor


@click.group("kiosk")
@click.option(
    "--home",
    envvar="FACEPAY_KIOSK_HOME",
    default=None,
    help="The kiosk's folder: keys, settings, outbox (default: the user's config folder).",
)
@click.pass_context
def kiosk_group(ctx: click.Context, home: str | None) -> None:
    """The kiosk at the till."""
    ctx.obj = home


@kiosk_group.command("register")
@click.option("--server", "server_url", required=True, help="The server's base URL (https://…).")
@click.option("--code", "pairing_code", required=True, help="The one-time pairing code.")
@click.option("--force", is_flag=True, help="Replace an existing registration.")
@json_option
@click.pass_obj
def register(
    home: str | None, server_url: str, pairing_code: str, force: bool, as_json: bool
) -> None:
    """Make this kiosk's key pair, register it, and pin the server's sealing key."""
    from kiosk.home import KioskHome
    from kiosk.home import register as register_home

    registration = register_home(KioskHome(home), server_url, pairing_code, force=force)
    data = {"kiosk_id": registration.kiosk_id, "store": registration.store, "server": server_url}
    _emit(as_json, data, f"registered kiosk {registration.kiosk_id} ({registration.store})")


@kiosk_group.command("enroll")
@source_option
@click.option("--name", required=True, help="The shopper's full name, typed as signature.")
@click.option("--email", required=True)
@click.option("--phone", required=True)
@click.option("--agree", is_flag=True, help="The shopper read the notice and agrees.")
@click.option(
    "--wallet", default="0", show_default=True, help="Sandbox wallet to open, e.g. 50.00."
)
@click.option("--currency", default="CAD", show_default=True)
@click.option("--locale", default="en", show_default=True, help="The notice's language shown.")
@liveness_option
@json_option
@click.pass_obj
def enroll(
    home: str | None,
    source: str,
    name: str,
    email: str,
    phone: str,
    agree: bool,
    wallet: str,
    currency: str,
    locale: str,
    liveness: str,
    as_json: bool,
) -> None:
    """Enroll a shopper from the good frames of SOURCE (3 to 5), after the notice is agreed."""
    if not agree:
        raise click.UsageError("enrollment needs the shopper's explicit --agree to the notice")
    wallet_minor = 0 if Decimal(wallet or "0") == 0 else to_minor_units(wallet, currency)
    with _session(home, liveness, source, locale=locale) as (flow, frames):
        flow.start_enrollment(
            email=email, phone=phone, wallet_amount=wallet_minor, currency=currency.upper()
        )
        if flow.state == "consent":
            notice = flow.screen.notice or {}
            logger.info("consent notice v%s shown and agreed", notice.get("version"))
            flow.agree(name)
        result = drive(flow, frames)
    _finish(result, as_json)


@kiosk_group.command("pay")
@source_option
@click.option("--amount", required=True, help="The amount due, e.g. 12.50.")
@click.option("--currency", default="CAD", show_default=True)
@click.option(
    "--phone-last4",
    default=None,
    help="Answers a step-up that asks for the last four digits of the phone.",
)
@click.option(
    "--phone", default=None, help="Answers a step-up that asks for the full phone number."
)
@liveness_option
@json_option
@click.pass_obj
def pay(
    home: str | None,
    source: str,
    amount: str,
    currency: str,
    phone_last4: str | None,
    phone: str | None,
    liveness: str,
    as_json: bool,
) -> None:
    """Pay AMOUNT by the face in SOURCE. The server may ask for a step-up: the last four
    digits of the phone or the full number; give the matching option (both may be given,
    only the one asked is sent)."""
    phone_options(phone_last4, phone)
    minor = to_minor_units(amount, currency)
    with _session(home, liveness, source) as (flow, frames):
        flow.start_payment(minor, currency.upper())
        result = drive(flow, frames, phone_last4=phone_last4, phone=phone)
    _finish(result, as_json)


@kiosk_group.command("delete-me")
@source_option
@click.option("--phone-last4", default=None, help="The last four digits of the phone enrolled.")
@click.option(
    "--phone",
    default=None,
    help="The full phone number enrolled, where the server finds four digits not enough.",
)
@liveness_option
@json_option
@click.pass_obj
def delete_me(
    home: str | None,
    source: str,
    phone_last4: str | None,
    phone: str | None,
    liveness: str,
    as_json: bool,
) -> None:
    """Delete the face data of the shopper in SOURCE, confirmed by their phone: its last four
    digits (--phone-last4) or, where the server asks for it, the full number (--phone)."""
    if (phone_last4 is None) == (phone is None):
        raise click.UsageError("give --phone-last4 DDDD or --phone NUMBER (one of the two)")
    phone_options(phone_last4, phone)
    with _session(home, liveness, source) as (flow, frames):
        flow.start_deletion(phone_last4, phone=phone)
        result = drive(flow, frames)
    _finish(result, as_json)


@kiosk_group.command("resolve")
@json_option
@click.pass_obj
def resolve(home: str | None, as_json: bool) -> None:
    """Learn the fate of payments left without an answer (after a crash or an outage)."""

    answers = _client(home).resolve_pending()
    data = {"resolved": [_plain(answer) for answer in answers]}
    _emit(as_json, data, f"{len(answers)} pending requests resolved")


@kiosk_group.command("run")
@click.option("--camera", default=None, help="A camera index (0) or /dev/videoN. [default: 0]")
@click.option(
    "--source",
    default=None,
    help="Instead of a camera: a video file, an image or a folder of images (demos, tests).",
)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@liveness_option
@click.option("--locale", type=click.Choice(["en", "fr"]), default="en", show_default=True)
@click.option(
    "--loop/--no-loop",
    default=True,
    show_default=True,
    help="A recorded source starts again when it ends during a session.",
)
@click.pass_obj
def run(
    home: str | None,
    camera: str | None,
    source: str | None,
    port: int,
    liveness: str,
    locale: str,
    loop: bool,
) -> None:
    """The customer screen: the flow on the camera, served at http://127.0.0.1:PORT/ for
    Chromium in kiosk mode (deploy/kiosk/), until Ctrl-C or SIGTERM."""
    import signal
    import threading

    from kiosk.camera import open_source
    from kiosk.errors import KioskError
    from kiosk.runner import AnnouncingServer, Runner
    from kiosk.ui import UiServer, create_ui

    if camera is not None and source is not None:
        raise click.UsageError("give --camera or --source, not both")
    spec = source if source is not None else (camera if camera is not None else "0")
    announcing: list[AnnouncingServer] = []

    def wrap(client: Any) -> AnnouncingServer:
        announcing.append(AnnouncingServer(client))
        return announcing[-1]

    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        with _session(home, liveness, spec, locale=locale, wrap_server=wrap) as (flow, frames):
            recorded = not frames.live
            runner = Runner(
                flow,
                frames,
                reopen=(lambda: open_source(spec)) if recorded else None,
                loop=loop,
                clock=time.monotonic,
                server=announcing[0],
            )
            screen = UiServer(create_ui(runner, locale=locale), port=port)
            with runner, screen:
                click.echo(f"facepay screen on {screen.url} ({frames.description})")
                while not stopping.wait(0.5):
                    if not runner.running:
                        raise KioskError("the kiosk flow stopped", code="runner_stopped")
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo("facepay screen stopped")


# ---------------------------------------------------------------- driving a session


@contextmanager
def _session(
    home: str | None,
    liveness: str,
    source: str,
    *,
    locale: str = "en",
    wrap_server: Callable[[Any], Any] | None = None,
) -> Iterator[tuple[Any, Any]]:
    """The flow with its real parts, and the open frame source; pending payments first.
    `wrap_server` wraps the server client the flow is given (`facepay kiosk run`)."""
    from kiosk.camera import open_source
    from kiosk.flow import Flow, FlowSettings
    from models import packs

    client = _client(home)
    if client.has_pending():
        resolved = client.resolve_pending()
        logger.info("resolved %d pending requests before a new one", len(resolved))
    frames = open_source(source)
    recorded = not frames.live
    settings = FlowSettings(locale=locale, enroll_spacing_s=0.0 if recorded else 0.3)
    engine = packs.open_engine()
    flow = Flow(
        engine=engine,
        server=wrap_server(client) if wrap_server is not None else client,
        liveness=_liveness_factory(liveness, recorded, engine.manifest),
        clock=time.monotonic,
        settings=settings,
    )
    try:
        yield flow, frames
    finally:
        frames.close()


def _client(home: str | None) -> Any:
    """The signed client of this kiosk. FACEPAY_KIOSK_TIMEOUT_S bounds one request (default
    10 s) and FACEPAY_KIOSK_RETRY_S all the retries of one call (default 30 s)."""
    from kiosk.client import RetryPolicy, ServerClient
    from kiosk.home import KioskHome

    timeout = _seconds("FACEPAY_KIOSK_TIMEOUT_S", 10.0)
    retry = RetryPolicy(total_s=_seconds("FACEPAY_KIOSK_RETRY_S", 30.0))
    return ServerClient.from_home(KioskHome(home), timeout_s=timeout, retry=retry)


def _seconds(variable: str, default: float) -> float:
    raw = os.environ.get(variable, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise click.UsageError(f"{variable} must be a number of seconds") from None
    if not value > 0:
        raise click.UsageError(f"{variable} must be positive")
    return value


def _liveness_factory(mode: str, recorded: bool, manifest: Any) -> Callable[[], Any] | None:
    """One check for the whole run (it resets at each start; a model loads once)."""
    if mode == "off":
        if not recorded:
            logger.warning("liveness is off for a live camera: only for tests and demos")
        return None
    from kiosk.liveness import LandmarkScheme, choose_check

    # The engine's landmarks: dlib's 5 points, or insightface's for a pack aligned like ArcFace.
    scheme: LandmarkScheme = (
        "arcface-5" if manifest.preprocessing.alignment == "arcface" else "dlib-5"
    )
    check = choose_check(mode, landmarks=scheme)
    return lambda: check


def drive(
    flow: Any, frames: Any, *, phone_last4: str | None = None, phone: str | None = None
) -> Any:
    """Feed frames until the session ends. A step-up is answered once, with whichever of
    `phone_last4` and `phone` it asks for (the other is never sent). When the one asked was
    not given, or the server asks again after a wrong answer, the session ends as "pay another
    way", and the result says why (for a missing answer: code ``phone_required`` or
    ``phone_last4_required``, and the option to give). A deletion the server will not confirm
    by four digits ends ``full_phone_required``, its explanation naming ``--phone``."""
    answers = {PHONE_LAST4: phone_last4, PHONE: phone}
    answered = False
    while flow.state != "done":
        if flow.state == "step_up":
            asked = flow.screen.step_up_ask
            typed = answers.get(asked)
            if answered:  # one answer only: a wrong one is not retried blindly
                flow.pay_another_way(explanation="the step-up answer given was not accepted")
            elif typed is None:
                flow.pay_another_way(
                    code=f"{asked}_required",
                    explanation=f"the server asks for {_ASKED[asked]}: give {_OPTIONS[asked]}",
                )
            else:
                flow.enter_digits(typed)
                answered = True
            continue
        try:
            frame = frames.read(timeout=1.0)
        except SourceError as error:
            if error.code != "camera_lost":
                raise
            logger.warning("%s; waiting for it to come back", error)  # the flow's limits hold
            flow.tick()
            continue
        if frame is None:
            if not frames.live:
                flow.end_of_source()
                if flow.state in ("looking", "liveness"):
                    flow.cancel()
            flow.tick()
            continue
        flow.on_frame(frame)
    result = flow.result
    if result is not None and result.outcome == "full_phone_required":
        return replace(result, explanation=f"{result.explanation}: give {_OPTIONS[PHONE]}")
    return result


def _finish(result: Any, as_json: bool) -> None:
    data = _plain(result)
    text = f"{result.outcome}" + (f" [{result.code}]" if result.code != result.outcome else "")
    if result.shopper_label:
        text += f": {result.shopper_label}"
    if result.wallet_balance is not None:
        text += f", balance {result.wallet_balance}"
    if result.payment_id:
        text += f" (charge {result.payment_id})"
    if result.explanation:
        text += f" — {result.explanation}"
    _emit(as_json, data, text)
    if result.ok:
        return
    sys.exit(1 if result.outcome in _NO else 2)


def _plain(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    return {k: v for k, v in asdict(value).items() if not k.startswith("_")}


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(data, sort_keys=True, default=_json_default) if as_json else text)


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)
