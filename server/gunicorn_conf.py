"""gunicorn settings for the production server: `gunicorn -c python:server.gunicorn_conf
server.wsgi:app` (the container's command; flags given on the command line win).

With PROMETHEUS_MULTIPROC_DIR set, every worker writes its counters and histograms to files
there and `/metrics` sums them over all workers (server.observability). The folder must start
empty: a worker's files from an earlier run would be counted again.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def on_starting(server: Any) -> None:
    folder = os.environ.get(_MULTIPROC_DIR)
    if not folder:
        return
    path = Path(folder)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o700)
    logger.info("metrics: summed over workers in %s", path)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get(_MULTIPROC_DIR):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
