"""`make bench`: run every benchmark script and rewrite docs/benchmarks.md with their figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = [
    "bench_engine.py",
    "bench_accuracy.py",
    "bench_matching.py",
    "bench_gallery.py",
    "bench_payments.py",
    "bench_kiosk.py",
]
HEADER = """# Benchmarks

Written by `make bench` (`bench/run_all.py`), which runs every script in `bench/` and
replaces this file. Each section names the machine and the date it was measured on; figures
are medians unless a column says otherwise. Tests never assert on time.

Galleries are simulated: shoppers and probes come from the gallery simulator calibrated to the
default pack (`bench/simulated.py`, `models/simulate.py`), whose faces collide as real ones do
(two people: cosine 0.83 +/- 0.034), where random unit vectors never did (cosine 0 +/- 0.09).
"""


def main() -> None:
    sections = [HEADER]
    for script in SCRIPTS:
        result = subprocess.run(
            [sys.executable, str(ROOT / "bench" / script), *sys.argv[1:]],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
            raise SystemExit(f"{script} failed with status {result.returncode}")
        sections.append(result.stdout.strip() + "\n")
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(sections), encoding="utf-8")


if __name__ == "__main__":
    main()
