"""The kiosk's home folder: its private key, its registration with a server, its outbox.

The folder is `FACEPAY_KIOSK_HOME`, by default the user's config folder for "facepay-kiosk"
(platformdirs), kept 0700::

    kiosk.key        the kiosk's Ed25519 private key (PKCS#8 PEM), 0600, written atomically;
                     it never leaves the kiosk
    kiosk.json       the server URL, the kiosk id and public key, the server's X25519 sealing
                     key pinned at registration, the registration time
    outbox.sqlite3   the outbox of requests waiting for their answer (kiosk.client.Outbox)

`register()` makes the key pair, registers it with a one-time pairing code, checks the key the
server answered against `/.well-known/facepay-server-key`, and pins it: from then on templates
are sealed to that key and no other, until the kiosk is registered again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import secrets
import stat
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.client import KioskIdentity, Outbox, Transport, request_json, urllib_transport
from kiosk.errors import KioskError, NotRegistered
from server.crypto import kiosk_public_key_bytes
from server.templates import b64decode, b64encode

logger = logging.getLogger(__name__)

__all__ = ["ENV_HOME", "KioskHome", "Registration", "default_home", "register"]

ENV_HOME: Final = "FACEPAY_KIOSK_HOME"
APP_NAME: Final = "facepay-kiosk"
KEY_FILE: Final = "kiosk.key"
CONFIG_FILE: Final = "kiosk.json"
OUTBOX_FILE: Final = "outbox.sqlite3"
FORMAT: Final = 1
_FOLDER_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_LOOPBACK_NAMES: Final = ("localhost",)


def default_home() -> Path:
    """`FACEPAY_KIOSK_HOME`, else the user's config folder for facepay-kiosk."""
    configured = os.environ.get(ENV_HOME)
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME))


@dataclass(frozen=True)
class Registration:
    """What kiosk.json holds: nothing secret (the private key has its own file)."""

    server_url: str
    kiosk_id: str
    store: str
    public_key: str  # this kiosk's Ed25519 public key, base64url
    server_key_id: str
    server_public_key: str  # the pinned X25519 sealing key, base64url
    signature_window_s: int
    registered_at: str  # ISO 8601, UTC

    @property
    def server_public_key_bytes(self) -> bytes:
        return b64decode(self.server_public_key)

    def to_json(self) -> bytes:
        return (json.dumps({"format": FORMAT, **asdict(self)}, indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> Registration:
        try:
            data = json.loads(raw)
            if data.pop("format") != FORMAT:
                raise ValueError("unknown format")
            registration = cls(**data)
            if len(registration.server_public_key_bytes) != 32:
                raise ValueError("the pinned key is not 32 bytes")
        except (ValueError, TypeError, KeyError, AttributeError):
            raise KioskError(
                f"{CONFIG_FILE} is not readable: register the kiosk again",
                code="kiosk_home_corrupt",
            ) from None
        return registration


class KioskHome:
    """One kiosk home folder (`path`, default `default_home()`)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_home()

    def __repr__(self) -> str:
        return f"KioskHome({str(self.path)!r})"

    @property
    def key_path(self) -> Path:
        return self.path / KEY_FILE

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def outbox_path(self) -> Path:
        return self.path / OUTBOX_FILE

    def create(self) -> None:
        """The folder, made (or tightened to) 0700."""
        self.path.mkdir(mode=_FOLDER_MODE, parents=True, exist_ok=True)
        if os.name == "posix":
            os.chmod(self.path, _FOLDER_MODE)

    def is_registered(self) -> bool:
        return self.config_path.exists()

    def registration(self) -> Registration:
        try:
            raw = self.config_path.read_bytes()
        except FileNotFoundError:
            raise NotRegistered(
                f"no kiosk registration in {self.path}: run `facepay kiosk register`"
            ) from None
        return Registration.from_json(raw)

    def private_key(self) -> Ed25519PrivateKey:
        """The kiosk's private key; refuses a key file others can read."""
        try:
            mode = os.stat(self.key_path).st_mode
        except FileNotFoundError:
            raise NotRegistered(f"no kiosk key in {self.path}: register the kiosk") from None
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KioskError(
                f"{self.key_path} is readable by others ({stat.S_IMODE(mode):04o}); "
                "it must be 0600",
                code="key_file_insecure",
            )
        try:
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        except (ValueError, TypeError):
            raise KioskError(
                f"{self.key_path} is not a PEM key", code="kiosk_home_corrupt"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KioskError(f"{self.key_path} is not an Ed25519 key", code="kiosk_home_corrupt")
        return key

    def identity(self) -> KioskIdentity:
        """The registration and the key, checked to belong together."""
        registration = self.registration()
        key = self.private_key()
        if b64encode(kiosk_public_key_bytes(key)) != registration.public_key:
            raise NotRegistered(
                "the key and the registration in this home do not belong together "
                "(a registration was interrupted): register the kiosk again"
            )
        return KioskIdentity(
            server_url=registration.server_url,
            kiosk_id=registration.kiosk_id,
            private_key=key,
            server_public_key=registration.server_public_key_bytes,
        )

    def outbox(self) -> Outbox:
        return Outbox(self.outbox_path)


def register(
    home: KioskHome | str | os.PathLike[str] | None,
    server_url: str,
    pairing_code: str,
    *,
    transport: Transport | None = None,
    force: bool = False,
    clock: Callable[[], float] = time.time,
    timeout_s: float = 10.0,
    allow_plain_http: bool = False,
) -> Registration:
    """Register this kiosk with the server at `server_url` using a one-time pairing code.

    Refuses a home already registered unless `force`, and in any case while its outbox holds
    a request without its answer (its keys belong to the current registration). The server's
    sealing key from the registration answer must equal the one it publishes at
    `/.well-known/facepay-server-key`. Plain http is accepted only for a loopback host (or
    with `allow_plain_http`): the server's answers are protected by TLS alone.

    The pairing code is spent once the server accepts it: if anything fails after that (the
    files cannot be written), ask for a new code.
    """
    home = home if isinstance(home, KioskHome) else KioskHome(home)
    base = _server_base(server_url, allow_plain_http=allow_plain_http)
    if home.is_registered() and not force:
        raise KioskError(
            f"{home.path} is already registered; register with force to replace it",
            code="kiosk_already_registered",
        )
    if home.outbox_path.exists() and home.outbox().has_pending():
        raise KioskError(
            "payments in the outbox still wait for their answer: resolve them first "
            "(`facepay kiosk resolve`)",
            code="outbox_pending",
        )
    home.create()
    send = transport or urllib_transport
    published = request_json(
        send, "GET", base + "/.well-known/facepay-server-key", timeout=timeout_s
    )
    private_key = Ed25519PrivateKey.generate()
    public_key = b64encode(kiosk_public_key_bytes(private_key))
    answer = request_json(
        send,
        "POST",
        base + "/v1/kiosks/register",
        {"pairing_code": pairing_code, "public_key": public_key},
        timeout=timeout_s,
    )
    try:
        pinned = str(answer["server_public_key"])
        registration = Registration(
            server_url=base,
            kiosk_id=str(answer["kiosk_id"]),
            store=str(answer["store"]),
            public_key=public_key,
            server_key_id=str(answer["server_key_id"]),
            server_public_key=pinned,
            signature_window_s=int(answer["signature_window_s"]),
            registered_at=dt.datetime.fromtimestamp(clock(), dt.UTC).isoformat(),
        )
    except (KeyError, TypeError, ValueError):
        raise KioskError("the registration answer is incomplete", code="bad_answer") from None
    if (
        published.get("public_key") != pinned
        or published.get("key_id") != registration.server_key_id
        or len(registration.server_public_key_bytes) != 32
    ):
        raise KioskError(
            "the server's sealing key differs from the one it publishes: not registered",
            code="server_key_mismatch",
        )
    # The key first, then the registration naming it: interrupted in between, the home
    # fails `identity()` (the keys disagree) rather than signing with the wrong key.
    key_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(home.key_path, key_pem)
    _write_private(home.config_path, registration.to_json())
    logger.info(
        "kiosk %s registered with %s (server key %s)",
        registration.kiosk_id,
        base,
        registration.server_key_id,
    )
    return registration


def _server_base(url: str, *, allow_plain_http: bool) -> str:
    """scheme://host[:port]: the API's paths are signed as sent, so no path prefix."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("the server URL is https://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("the server URL has no path, query or fragment")
    if parts.scheme == "http" and not allow_plain_http and not _loopback(parts.hostname):
        raise ValueError("use https (plain http only for a server on this machine)")
    return f"{parts.scheme}://{parts.netloc}"


def _loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (a 0600 temporary file, fsynced, renamed over it)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, _FILE_MODE)
    try:
        try:
            if os.name == "posix":
                os.fchmod(fd, _FILE_MODE)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if os.name == "posix":
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
