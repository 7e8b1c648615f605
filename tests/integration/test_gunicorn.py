"""The production entry point starts under gunicorn and serves requests."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.processes import Gunicorn, base_env, facepay, free_port, wait_until_serving


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


def test_metrics_sum_over_every_worker(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (as the container sets it), a scrape counts the requests
    of every worker, whichever worker answers it; a restart starts the counts afresh."""
    metrics_dir = tmp_path / "metrics"
    env = {
        **base_env(tmp_path / "instance", f"sqlite:///{tmp_path / 'facepay.db'}"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    facepay(env, "server", "init")
    requests = 40
    for run in range(2):
        server = Gunicorn(env, free_port(), tmp_path / f"gunicorn-{run}.log", workers=2)
        server.start()
        try:
            wait_for_files_of_both_workers(metrics_dir)
            for _ in range(requests):
                with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as response:
                    assert response.status == 200
            for _ in range(6):  # several scrapes: each may land on another worker
                with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
                    text = response.read().decode()
                counted = re.search(
                    r'facepay_http_requests_total\{method="GET",route="/healthz",status="200"\}'
                    r" (\S+)",
                    text,
                )
                assert counted is not None, text
                assert float(counted.group(1)) == requests
        finally:
            server.stop()


def wait_for_files_of_both_workers(metrics_dir: Path) -> None:
    """Each worker writes its own count files once its app is built: wait for both, so that
    the requests spread over two workers."""
    deadline = time.monotonic() + 30
    while len({path.stem.split("_")[-1] for path in metrics_dir.glob("counter_*.db")}) < 2:
        assert time.monotonic() < deadline, "the second worker never started"
        time.sleep(0.05)
