"""`facepay demo` (and `make demo`): the whole story on one machine, in about a minute.

It builds the default model pack, starts a server (SQLite, development keys, a temporary
instance folder), registers a kiosk, and plays a day at the till with real faces: the people
of insightface's bundled group photo, each cropped out as a separate shopper. Three enroll with
consent; each pays and the right wallet is charged (every payment asks for the phone's last
four digits: no gallery is small enough for a face alone at the default risk targets); a
fourth, never enrolled, types the first shopper's digits and is not charged; one shopper
deletes their face data and is not charged afterwards; the ledger and the audit chain verify.
The frames of each person are the crop moved, scaled and lit a little differently, as a camera
would see them.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import click
import numpy as np

logger = logging.getLogger(__name__)

GROUP_PHOTO = "t1.jpg"  # insightface/data/images: six people side by side
# The people of the photo who face the camera (two turn their heads: the kiosk's quality gate
# would ask them to face it), left to right; the last one never enrolls.
PEOPLE = [
    ("Marie Tremblay", "+1 514 555 0101"),
    ("Paul Gagnon", "+1 514 555 0202"),
    ("Ana Lopes", "+1 514 555 0303"),
    ("Sam Nguyen", "+1 514 555 0404"),
]
WALLET = "200.00"
# A face that fails the step-up is declined, or the till offers another way to pay (the
# command-line till gives one answer, not three): either way nobody is charged.
NOT_CHARGED = ("declined", "other_way")


@dataclass
class Step:
    who: str
    action: str
    outcome: str
    code: str
    label: str = ""
    balance: str = ""
    ok: bool = True


def group_photo() -> Path:
    path = Path(str(files("insightface") / "data" / "images" / GROUP_PHOTO))
    if not path.is_file():
        raise click.ClickException(f"insightface's sample photo is missing at {path}")
    return path


def crop_people(engine: Any, photo: np.ndarray) -> list[np.ndarray]:
    """Each face of the photo that faces the camera, with room around it, left to right,
    scaled to a camera's view."""
    import cv2

    from kiosk.flow import QualityGate

    gate = QualityGate()
    faces = sorted(engine.analyse(photo), key=lambda face: face.box[0])
    crops = []
    for face in faces:
        if abs(face.quality.yaw) > gate.max_yaw:
            continue
        left, top, right, bottom = face.box
        side = max(right - left, bottom - top)
        cx, cy = (left + right) // 2, (top + bottom) // 2
        half = int(side * 1.3)
        box = (max(0, cx - half), max(0, cy - half), cx + half, cy + half)
        crop = photo[box[1] : box[3], box[0] : box[2]]
        crops.append(cv2.resize(crop, (400, 400), interpolation=cv2.INTER_CUBIC))
    return crops


def camera_views(crop: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The crop as a camera would show it over a few moments: moved, scaled, lit differently."""
    import cv2

    views = []
    for _ in range(count):
        scale = rng.uniform(0.95, 1.05)
        dx, dy = rng.uniform(-8, 8, size=2)
        matrix = cv2.getRotationMatrix2D((200, 200), rng.uniform(-3, 3), scale)
        matrix[:, 2] += (dx, dy)
        view = cv2.warpAffine(crop, matrix, (400, 400), borderMode=cv2.BORDER_REFLECT)
        light = rng.uniform(0.9, 1.1)
        views.append(np.clip(view.astype(np.float32) * light, 0, 255).astype(np.uint8))
    return views


def write_views(folder: Path, views: list[np.ndarray]) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for number, view in enumerate(views):
        cv2.imwrite(str(folder / f"frame{number:02d}.png"), cv2.cvtColor(view, cv2.COLOR_RGB2BGR))
    return folder


@contextmanager
def running_server(env: dict[str, str], log: Path) -> Iterator[str]:
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "facepay_cli", "server", "run", "--port", str(port)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise click.ClickException(
                        f"the server did not start:\n{log.read_text()}"
                    ) from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


def facepay(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "facepay_cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode not in (0, 1):
        raise click.ClickException(f"facepay {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def console_accounts(env: dict[str, str], url: str) -> str:
    """One operator per console role, with a fresh password each, for a person to sign in."""
    import secrets

    lines = [f"Operator console: {url}/console (a demo account per role, passwords new each run)"]
    for role in ("auditor", "privacy_officer", "admin"):
        name, password = f"demo-{role.replace('_', '-')}", secrets.token_urlsafe(12)
        facepay(
            env,
            "server",
            "operator",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
            stdin=password + "\n",
        )
        lines.append(f"  {role:<16} {name:<22} {password}")
    return "\n".join(lines)


def money(minor: int | None) -> str:
    return "" if minor is None else f"${minor / 100:,.2f}"


class Till:
    """The kiosk's flow, driven by frame folders, as `facepay kiosk …` would."""

    def __init__(self, engine: Any, client: Any) -> None:
        from kiosk.flow import Flow, FlowSettings

        self.flow = Flow(
            engine=engine,
            server=client,
            liveness=None,  # recorded frames: the liveness challenge needs a live person
            clock=time.monotonic,
            settings=FlowSettings(enroll_spacing_s=0.0),
        )

    def run(self, source: Path, start: Any, phone_last4: str | None = None) -> Any:
        from kiosk.camera import open_source
        from kiosk.cli import drive

        start(self.flow)
        with open_source(str(source)) as frames:
            return drive(self.flow, frames, phone_last4=phone_last4)


def play(workdir: Path, env: dict[str, str], url: str, steps: list[Step]) -> None:
    from kiosk.client import ServerClient
    from kiosk.home import KioskHome, register
    from models import packs
    from models.detect import THOROUGH_HOG_PASSES
    from models.images import load_image

    code = facepay(env, "server", "kiosk", "add", "till-1", "--store", "Montreal 01")
    home = KioskHome(workdir / "kiosk")
    register(home, url, code.strip().splitlines()[-1])
    client = ServerClient.from_home(home)
    engine = packs.open_engine()
    finder = packs.open_engine(hog_passes=THOROUGH_HOG_PASSES)  # small faces in a group photo
    crops = crop_people(finder, load_image(group_photo()))
    if len(crops) < len(PEOPLE):
        raise click.ClickException(
            f"found {len(crops)} people facing the camera, not {len(PEOPLE)}"
        )
    rng = np.random.default_rng(7)
    till = Till(engine, client)

    def record(who: str, action: str, result: Any, expected: tuple[str, ...]) -> None:
        steps.append(
            Step(
                who,
                action,
                result.outcome,
                result.code,
                result.shopper_label or "",
                money(result.wallet_balance),
                ok=result.outcome in expected,
            )
        )

    wallet = int(float(WALLET) * 100)
    shoppers = PEOPLE[:-1]
    for number, (name, phone) in enumerate(shoppers):
        folder = write_views(workdir / f"enroll-{number}", camera_views(crops[number], 4, rng))

        def enroll(flow: Any, name: str = name, phone: str = phone, number: int = number) -> None:
            flow.start_enrollment(
                email=f"shopper{number}@example.com",
                phone=phone,
                wallet_amount=wallet,
                currency="CAD",
            )
            flow.agree(name)  # the notice was shown in full; the shopper typed their name

        result = till.run(folder, enroll)
        record(name, "enroll with consent", result, ("enrolled",))

    for number, (name, phone) in enumerate(shoppers):
        amount = 1_250 + 100 * number
        folder = write_views(workdir / f"pay-{number}", camera_views(crops[number], 3, rng))
        result = till.run(
            folder,
            lambda flow, amount=amount: flow.start_payment(amount, "CAD"),
            phone_last4=phone[-4:],
        )
        record(name, f"pay {money(amount)}", result, ("approved",))

    # A stranger types an enrolled shopper's digits: the face is judged among the shoppers
    # they name and fails; the till offers another way to pay, and nobody is charged.
    stranger, _ = PEOPLE[-1]
    victim_phone = PEOPLE[0][1]
    folder = write_views(workdir / "pay-stranger", camera_views(crops[len(shoppers)], 3, rng))
    result = till.run(
        folder, lambda flow: flow.start_payment(500, "CAD"), phone_last4=victim_phone[-4:]
    )
    record(
        f"{stranger} (not enrolled)",
        "pay $5.00 with Marie's digits",
        result,
        NOT_CHARGED,
    )

    name, phone = PEOPLE[0]
    folder = write_views(workdir / "pay-large", camera_views(crops[0], 3, rng))
    result = till.run(
        folder, lambda flow: flow.start_payment(15_000, "CAD"), phone_last4=phone[-4:]
    )
    asked = till.flow.screen.tries_left is not None  # the step-up prompt was shown
    record(
        name,
        "pay $150.00 (asks for the phone's digits)" if asked else "pay $150.00",
        result,
        ("approved",),
    )

    name, phone = PEOPLE[1]
    folder = write_views(workdir / "delete", camera_views(crops[1], 3, rng))
    result = till.run(folder, lambda flow: flow.start_deletion(phone[-4:]))
    record(name, "delete my face data", result, ("deleted",))
    folder = write_views(workdir / "pay-after-delete", camera_views(crops[1], 3, rng))
    result = till.run(folder, lambda flow: flow.start_payment(300, "CAD"), phone_last4=phone[-4:])
    record(name, "pay $3.00 after deleting", result, NOT_CHARGED)


def checks(env: dict[str, str], steps: list[Step]) -> None:
    ledger = json.loads(facepay(env, "server", "ledger", "check", "--json"))
    audit = json.loads(facepay(env, "server", "audit", "verify", "--json"))
    steps.append(
        Step(
            "server",
            "ledger check",
            "verified" if ledger["ok"] else "broken",
            f"{ledger['transfers']} transfers",
            ok=ledger["ok"],
        )
    )
    steps.append(
        Step(
            "server",
            "audit chain verify",
            "verified" if audit["ok"] else "broken",
            f"{audit['last_good_seq']} records",
            ok=audit["ok"],
        )
    )


def table(steps: list[Step]) -> str:
    headers = ("", "who", "what", "outcome", "code", "label", "wallet")
    rows = [
        ("ok" if s.ok else "!!", s.who, s.action, s.outcome, s.code, s.label, s.balance)
        for s in steps
    ]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@click.command("demo")
@click.option("--keep", is_flag=True, help="Leave the server running and print its URLs.")
def demo_command(keep: bool) -> None:
    """Play the whole story end to end on this machine and print what happened."""
    import os

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="facepay-demo-") as folder:
        workdir = Path(folder)
        env = dict(os.environ)
        env.update(
            {
                "FACEPAY_INSTANCE": str(workdir / "instance"),
                "FACEPAY_DATABASE_URL": f"sqlite:///{workdir / 'facepay.db'}",
                "FACEPAY_ENV": "development",
                "FACEPAY_KIOSK_HOME": str(workdir / "kiosk"),
            }
        )
        click.echo("facepay demo: building the model pack (once), starting a server …")
        from models import packs

        packs.open_engine()  # builds and verifies the default pack, offline, if not cached
        facepay(env, "server", "init")
        steps: list[Step] = []
        with running_server(env, workdir / "server.log") as url:
            click.echo(f"server at {url}; a kiosk registers and the day at the till begins\n")
            play(workdir, env, url, steps)
            checks(env, steps)
            click.echo(table(steps))
            elapsed = time.monotonic() - started
            click.echo(
                f"\n{sum(s.ok for s in steps)} of {len(steps)} as expected in {elapsed:.0f} s"
            )
            if keep:
                click.echo(f"\nThe server stays up at {url} (instance {workdir / 'instance'}).")
                click.echo(console_accounts(env, url))
                click.echo(
                    f"Shopper pages (policy, delete or export): {url}/privacy\n"
                    f"Customer screen: FACEPAY_KIOSK_HOME={workdir / 'kiosk'} "
                    "facepay kiosk run --camera 0   (then open the URL it prints)\n"
                    "Press Ctrl-C to stop."
                )
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
    if not all(step.ok for step in steps):
        sys.exit(1)
