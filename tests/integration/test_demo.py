"""`make demo` runs `facepay demo`: the whole story must play out as expected, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_demo_plays_the_whole_story() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "facepay_cli", "demo"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    table = [line for line in lines if line.startswith(("ok ", "!! "))]
    assert len(table) == 12 and all(line.startswith("ok ") for line in table), result.stdout
    for shown in ("enrolled", "approved", "not_approved", "deleted", "verified"):
        assert shown in result.stdout
    assert "12 of 12 as expected" in result.stdout
