"""Real server processes on loopback for integration tests, and a tiny signed HTTP client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
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
