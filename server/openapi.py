"""The OpenAPI document, generated from the code and committed as server/openapi.yaml."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

COMMITTED = Path(__file__).resolve().parent / "openapi.yaml"


def render() -> str:
    from server import create_app

    with tempfile.TemporaryDirectory() as instance:
        app = create_app({"instance": instance})
        with app.app_context():
            spec = app._get_spec("json", force_update=True)
        app.extensions["facepay"].engine.dispose()
    text: str = yaml.safe_dump(spec, sort_keys=True, allow_unicode=True)
    return text
