"""`make reliability`: run the adversarial suite (tests/adversarial) and rewrite
docs/reliability.md with what it tried and how much of it was handled correctly.

`--long` runs the long variants (FACEPAY_RELIABILITY_LONG=1: more cases, longer load).
PostgreSQL cases run when the machine's server answers (as in `make test`). The Faults part
restarts that server once (`pg_ctlcluster ... restart`, when it is local and this runs as
root; otherwise it cuts the test database's connections instead). Figures a test records
(the Load part's rate and latencies) are printed under the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe

ROOT = Path(__file__).resolve().parent.parent

HEADER = """# Reliability and security: the adversarial suite

Written by `make reliability` (`bench/reliability.py`), which runs `tests/adversarial` and
replaces this file. Every row is one attack or fault: the cases tried (summed over SQLite and
PostgreSQL where a test runs on both), how many the system handled correctly (refused with a
clear problem+json error and nothing changed, or survived the fault with no charge lost or
doubled and the ledger and audit checks passing), and the command that reproduces it. A test
fails unless every case it tries is handled, so the suite in `make test` keeps these figures
true. Long variants: `FACEPAY_RELIABILITY_LONG=1` (`make reliability ARGS=--long`).
"""


def run(long: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "results.json"
        env = {**os.environ, "FACEPAY_RELIABILITY_RESULTS": str(results)}
        if long:
            env["FACEPAY_RELIABILITY_LONG"] = "1"
        completed = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/adversarial"],
            cwd=ROOT,
            env=env,
            check=False,
        )
        if completed.returncode != 0:
            raise SystemExit(f"the adversarial suite failed (status {completed.returncode})")
        loaded: dict[str, object] = json.loads(results.read_text(encoding="utf-8"))
        return loaded


def render(report: dict[str, object]) -> str:
    results = report["results"]
    assert isinstance(results, dict)
    lines = [
        HEADER,
        f"Machine: {describe()}; variant: {'long' if report['long'] else 'CI (short)'}.",
        "",
        "| category | attack or fault | tried | handled | reproduce |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows = sorted(results.items(), key=lambda item: (item[1]["category"], item[0]))
    for attack, entry in rows:
        lines.append(
            f"| {entry['category']} | {attack} | {entry['tried']} | {entry['handled']} | "
            f"`{entry['command']}` |"
        )
    tried = sum(int(entry["tried"]) for entry in results.values())
    handled = sum(int(entry["handled"]) for entry in results.values())
    lines += ["", f"In all: {handled} of {tried} cases handled correctly.", ""]
    for attack, entry in rows:
        for figures in entry.get("figures", []):
            lines += [render_figures(entry["category"], attack, figures), ""]
    return "\n".join(lines)


def render_figures(category: str, attack: str, figures: dict[str, Any]) -> str:
    """A test's recorded figures (measured, never asserted) as a paragraph under the table."""
    if "requests" in figures and "kinds" in figures:  # tests/adversarial/test_load.py
        kinds = "; ".join(
            f"{kind} {k.get('cases', k.get('requests', 0)):,} (p50 {k['p50_ms']} ms, "
            f"p99 {k['p99_ms']} ms)"
            for kind, k in figures["kinds"].items()
        )
        step_up = ""
        if "step_up_asked" in figures:
            asked = ", ".join(
                f"{rung} {count:,}" for rung, count in figures["step_up_asked"].items()
            )
            step_up = (
                f" Honest payments approved: {figures['honest_payments_approved']:,} of "
                f"{figures['honest_payments']:,}; step-up asked: {asked}."
            )
        cases = f"{figures['cases']:,} cases, " if "cases" in figures else ""
        return (
            f"{category}: {cases}{figures['requests']:,} requests in {figures['seconds']} s "
            f"({figures['per_second']} requests/s; p50 {figures['p50_ms']} ms, p99 "
            f"{figures['p99_ms']} ms a case) against gunicorn ({figures['gunicorn_workers']} "
            f"workers) and {figures['database']} with {figures['shoppers']:,} enrolled shoppers "
            f"(simulated faces), from {figures['kiosks']} kiosks (rate limit "
            f"{figures['kiosk_rate_limit']} per kiosk and process): {kinds}. Unexpected answers: "
            f"{figures['unexpected']}.{step_up} Seeding took {figures['seed_s']} s, starting "
            f"gunicorn {figures['start_s']} s."
        )
    described = "; ".join(
        f"{name.replace('_', ' ')}: {_value(value)}" for name, value in figures.items()
    )
    return f"{category}, {attack}: {described}."


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{name} × {count}" for name, count in value.items()) or "none"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--long", action="store_true", help="run the long variants")
    args = parser.parse_args()
    report = run(args.long)
    (ROOT / "docs" / "reliability.md").write_text(render(report), encoding="utf-8")


if __name__ == "__main__":
    main()
