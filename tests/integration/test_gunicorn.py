"""The production entry point starts under gunicorn and serves requests."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.processes import base_env, facepay, free_port


def test_gunicorn_serves_the_app(tmp_path: Path) -> None:
    env = base_env(tmp_path / "instance", f"sqlite:///{tmp_path / 'facepay.db'}")
    facepay(env, "server", "init")
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                "2",
                "--bind",
                f"127.0.0.1:{port}",
                "server.wsgi:app",
            ],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/readyz", timeout=2
                ) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/policy", timeout=5) as response:
            assert response.status == 200
    finally:
        process.terminate()
        process.wait(timeout=15)
