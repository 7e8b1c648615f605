"""The production entry point starts under gunicorn and serves requests."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.support.processes import base_env, facepay, free_port, wait_until_serving


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
        wait_until_serving(f"http://127.0.0.1:{port}/readyz", process, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/policy", timeout=5) as response:
            assert response.status == 200
    finally:
        process.terminate()
        process.wait(timeout=15)
