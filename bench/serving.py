"""The production server as the payments bench runs it: gunicorn's shape, gunicorn itself
(ready once every worker has loaded its gallery), and CPU accounting from /proc (Linux)."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- the server's shape


@dataclass(frozen=True)
class ServerShape:
    """A gunicorn set-up: `sync:3` (3 sync workers) or `gthread:2x4` (2 workers, 4 threads)."""

    worker_class: str
    workers: int
    threads: int = 1

    @classmethod
    def parse(cls, text: str) -> ServerShape:
        kind, _, size = text.partition(":")
        workers, _, threads = size.partition("x")
        if kind not in ("sync", "gthread") or not workers.isdigit():
            raise argparse.ArgumentTypeError(f"{text!r}: expected sync:N or gthread:NxT")
        return cls(kind, int(workers), int(threads or 1))

    @property
    def label(self) -> str:
        workers = f"{self.workers} {self.worker_class} worker{'s' if self.workers > 1 else ''}"
        return workers if self.worker_class == "sync" else f"{workers} x {self.threads} threads"

    def flags(self) -> list[str]:
        flags = ["--worker-class", self.worker_class, "--workers", str(self.workers)]
        return [*flags, "--threads", str(self.threads)] if self.worker_class == "gthread" else flags


# ---------------------------------------------------------------- CPU accounting (Linux /proc)


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of one process, 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _processes() -> Iterator[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process we can see."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        yield int(entry.name), parent, command


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


@dataclass(frozen=True)
class CpuSnapshot:
    server: float  # gunicorn master and workers
    database: float  # PostgreSQL backends serving the bench database
    machine_busy: float
    machine_total: float

    @classmethod
    def take(cls, gunicorn_pid: int, postgres_database: str | None) -> CpuSnapshot:
        server, database = _cpu_of(gunicorn_pid), 0.0
        for pid, parent, command in _processes():
            if parent == gunicorn_pid:
                server += _cpu_of(pid)
            elif (
                postgres_database
                and command.startswith("postgres:")
                and f" {postgres_database} " in command  # "postgres: [cluster:] user db host"
            ):
                database += _cpu_of(pid)
        busy, total = _machine_busy()
        return cls(server, database, busy, total)


# ---------------------------------------------------------------- gunicorn


@contextlib.contextmanager
def gunicorn(
    shape: ServerShape, environment: dict[str, str], log: Path
) -> Iterator[tuple[int, int]]:
    """gunicorn on `server.wsgi:app` with `shape`; yields (port, master pid) once every worker
    has loaded its gallery."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        *shape.flags(),
        "--bind",
        f"127.0.0.1:{port}",
        "--timeout",
        "300",  # a worker loads the whole gallery before it serves
        "server.wsgi:app",
    ]
    with log.open("a") as handle:
        process = subprocess.Popen(
            command, env=environment, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT
        )
    try:
        wait_until_loaded(port, process, shape.workers, log)
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_loaded(
    port: int, process: subprocess.Popen[bytes], workers: int, log: Path, timeout: float = 600
) -> None:
    """Ready when /readyz answers and every worker has gone quiet: each loads its gallery (and
    builds its quantised index) on its own, and one still loading would steal the timed run's CPU."""
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    previous: dict[int, float] = {}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text()[-4000:]}")
        time.sleep(0.5)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5):
                pass
        except OSError:
            continue
        children = {pid: _cpu_of(pid) for pid, parent, _ in _processes() if parent == process.pid}
        busy = len(children) < workers or any(
            cpu - previous.get(pid, 0.0) > 0.05 for pid, cpu in children.items()
        )
        previous = children
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 1.5:
            return
    raise RuntimeError(f"gunicorn not ready after {timeout:.0f} s: {log.read_text()[-4000:]}")
