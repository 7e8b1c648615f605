"""The customer screen: a page served by the kiosk process on this machine only, shown full
screen by Chromium in kiosk mode (deploy/kiosk/). `create_ui` makes the Flask app over a
`kiosk.runner.Runner`; `UiServer` serves it on 127.0.0.1."""

from __future__ import annotations

from kiosk.ui.app import TOKEN_HEADER, create_ui
from kiosk.ui.server import UiServer

__all__ = ["TOKEN_HEADER", "UiServer", "create_ui"]
