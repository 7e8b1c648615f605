"""Real server processes on loopback for integration tests, and a tiny signed HTTP client."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.kiosk import SigningKiosk


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def facepay(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "facepay_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextmanager
def server_process(env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "facepay_cli", "server", "run", "--port", str(port)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_serving(f"{url}/healthz", process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_until_serving(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60
) -> None:
    """Poll `url` until it answers 2xx; fail with the process's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text()}") from None
            time.sleep(0.1)


def base_env(instance: Path, database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "FACEPAY_INSTANCE": str(instance),
            "FACEPAY_DATABASE_URL": database_url,
            "FACEPAY_CHANGE_POLL_S": "0.2",
            # The tests' galleries hold a handful of shoppers: with this stranger target
            # (not the default 1e-4) a face alone pays in them (tests/unit/server/conftest.py).
            "FACEPAY_RISK_STRANGER": "1e-2",
        }
    )
    return env


def http(
    method: str,
    url: str,
    payload: Any = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, Any]:
    data = (
        body
        if body is not None
        else (json.dumps(payload).encode() if payload is not None else None)
    )
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def signed_post(kiosk: SigningKiosk, base: str, path: str, payload: Any) -> tuple[int, Any]:
    body, headers = kiosk.signed("POST", path, payload)
    return http("POST", base + path, headers=headers, body=body)


class Gunicorn:
    """The production server (gunicorn, several workers) in its own process group, so that a
    test can kill every process of it at once, as a power cut or an OOM kill would."""

    def __init__(
        self,
        env: dict[str, str],
        port: int,
        log: Path,
        workers: int = 3,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.env, self.port, self.log, self.workers = env, port, log, workers
        self.extra_args = extra_args  # more gunicorn flags, e.g. ("--timeout", "300")
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_path: str = "/readyz", timeout: float = 60) -> str:
        """Start it and wait until `ready_path` answers 2xx (`/healthz`: serving, even while
        not ready)."""
        with self.log.open("a") as handle:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "-c",
                    "python:server.gunicorn_conf",
                    "--workers",
                    str(self.workers),
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    *self.extra_args,
                    "server.wsgi:app",
                ],
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until_serving(f"{self.url}{ready_path}", self.process, self.log, timeout)
        return self.url

    def signal(self, number: int) -> None:
        """Send a signal to the master and every worker (SIGSTOP: up, but never answering)."""
        if self.process is not None:
            os.killpg(self.process.pid, number)

    def kill(self) -> None:
        """SIGKILL the master and every worker: nothing gets to clean up."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None


def wait_for_gallery(
    base: str, size: int, *, pack: str = "dlib-resnet-v1@1", reads: int = 30, timeout: float = 20
) -> None:
    """Until every process behind `base` holds `size` shoppers: each /readyz answer comes from
    whichever worker took the connection, so wait for many answers in a row to agree."""
    deadline, agreeing = time.monotonic() + timeout, 0
    while agreeing < reads:
        assert time.monotonic() < deadline, f"the gallery never reached {size} in every process"
        agreeing = agreeing + 1 if http("GET", f"{base}/readyz")[1]["gallery"][pack] == size else 0
        time.sleep(0.01)


def register_kiosk_http(env: dict[str, str], base: str, name: str = "till-1") -> SigningKiosk:
    """Add a kiosk with the CLI and register a fresh key pair with its pairing code."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from server.crypto import kiosk_public_key_bytes
    from server.templates import b64decode, b64encode

    code = facepay(env, "server", "kiosk", "add", name, "--store", "Montreal 01")
    key = Ed25519PrivateKey.generate()
    status, registered = http(
        "POST",
        f"{base}/v1/kiosks/register",
        {
            "pairing_code": code.strip().splitlines()[-1],
            "public_key": b64encode(kiosk_public_key_bytes(key)),
        },
    )
    assert status == 201, registered
    return SigningKiosk(registered["kiosk_id"], key, b64decode(registered["server_public_key"]))


def signed_call(
    kiosk: SigningKiosk,
    base: str,
    method: str,
    path: str,
    payload: Any = None,
    *,
    idempotency_key: str | None = None,
) -> tuple[int, Any]:
    body = b"" if payload is None else json.dumps(payload).encode()
    headers = kiosk.headers(method, path, body)
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return http(method, base + path, headers=headers, body=body if payload is not None else None)


@dataclass(frozen=True)
class Reply:
    """An HTTP answer as it came: status, media type and the raw body."""

    status: int
    mimetype: str
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        """The body as JSON (None if it is not JSON)."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    @property
    def is_problem(self) -> bool:
        """A problem+json document with a code: a clean error, not a stack trace or a proxy page."""
        document = self.json()
        return (
            self.mimetype == "application/problem+json"
            and isinstance(document, dict)
            and bool(document.get("code"))
        )


def exchange(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30,
) -> Reply:
    """One request; every HTTP answer comes back as a `Reply` (errors included). No answer at all
    (refused, reset, timed out) raises OSError."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(
                response.status,
                response.headers.get_content_type(),
                response.read(),
                dict(response.headers.items()),
            )
    except urllib.error.HTTPError as error:
        with error:
            return Reply(
                error.code,
                error.headers.get_content_type(),
                error.read(),
                dict(error.headers.items()),
            )


def signed_exchange(
    kiosk: SigningKiosk,
    base: str,
    method: str,
    path: str,
    payload: Any = None,
    *,
    idempotency_key: str | None = None,
    timeout: float = 30,
) -> Reply:
    """Like `signed_call`, but the raw `Reply` (status, media type, body, headers)."""
    body = b"" if payload is None else json.dumps(payload).encode()
    headers = kiosk.headers(method, path, body)
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return exchange(
        method,
        base + path,
        headers=headers,
        body=body if payload is not None else None,
        timeout=timeout,
    )
