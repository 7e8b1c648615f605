"""The adversarial suite: every test counts the cases it tried and how many were handled
correctly, fails unless all were, and (with FACEPAY_RELIABILITY_RESULTS=<file>) writes the
counts for `bench/reliability.py`, which turns them into docs/reliability.md.

Long variants (more cases, longer load) run with FACEPAY_RELIABILITY_LONG=1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.unit.server.conftest import (
    FACE_ALONE_IN_SMALL_GALLERIES,
    app,
    client,
    database_url,
    kiosk,
    postgres_server,
)

__all__ = ["app", "client", "database_url", "kiosk", "postgres_server"]

LONG = os.environ.get("FACEPAY_RELIABILITY_LONG", "") not in ("", "0")
_RESULTS: dict[str, dict[str, object]] = {}


@pytest.fixture
def app_config(tmp_path: Path, database_url: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The server tests' settings, with a test's `@pytest.mark.settings(...)` on top."""
    marker = request.node.get_closest_marker("settings")
    return {
        "instance": str(tmp_path / "instance"),
        "database_url": database_url,
        "change_poll_s": 0.1,
        "currencies": "CAD,USD",
        "kiosk_rate_limit": "",  # on only where a test floods (test_request_floods)
        **FACE_ALONE_IN_SMALL_GALLERIES,  # test_impostors.py sets the default targets back
        **(marker.kwargs if marker else {}),
    }


@dataclass
class Tally:
    """One attack or fault: each case tried, and whether the system handled it correctly."""

    attack: str
    category: str
    command: str
    tried: int = 0
    handled: int = 0
    failures: list[str] = field(default_factory=list)
    # Measurements worth keeping beside the counts (a load test's rate and latencies): written
    # to the results file with them, never asserted on.
    figures: dict[str, Any] = field(default_factory=dict)

    def case(self, handled: bool, what: str) -> bool:
        self.tried += 1
        if handled:
            self.handled += 1
        else:
            self.failures.append(what)
        return handled


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """The test's tally: the attack is the test's docstring's first line, the category its
    module's, the command the pytest node without parameters."""
    node = request.node
    doc = (node.function.__doc__ or node.name).strip().splitlines()[0].rstrip(".")
    category = (node.module.__doc__ or "").strip().splitlines()[0].rstrip(".")
    command = f"pytest '{node.nodeid.split('[')[0]}'"
    found = Tally(doc, category, command)
    yield found
    if found.tried:
        entry = _RESULTS.setdefault(
            found.attack,
            {"category": category, "command": command, "tried": 0, "handled": 0},
        )
        entry["tried"] = int(str(entry["tried"])) + found.tried
        entry["handled"] = int(str(entry["handled"])) + found.handled
        if found.figures:
            figures = entry.setdefault("figures", [])
            assert isinstance(figures, list)
            figures.append(found.figures)
    assert found.tried > 0, "the test tried no case"
    assert found.handled == found.tried, "not handled: " + "; ".join(found.failures[:10])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("FACEPAY_RELIABILITY_RESULTS")
    if target and _RESULTS:
        Path(target).write_text(
            json.dumps({"long": LONG, "results": _RESULTS}, indent=2), encoding="utf-8"
        )
