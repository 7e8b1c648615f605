"""Serving the screen: werkzeug's threaded server on a loopback address, on its own thread.

Requests are not logged: the page polls its state and the preview several times a second, and
the preview is a picture of the shopper's face.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from types import TracebackType
from typing import Self

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from kiosk.errors import KioskError

logger = logging.getLogger(__name__)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


class UiServer:
    """`app` served at http://`host`:`port`/ (port 0: any free one) until `stop()`."""

    def __init__(self, app: Flask, *, port: int = 8080, host: str = "127.0.0.1") -> None:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise KioskError(
                f"the screen is served on a loopback address only, not {host!r}",
                code="ui_not_local",
            )
        try:
            self._server: BaseWSGIServer = make_server(
                host, port, app, threaded=True, request_handler=_QuietHandler
            )
        except OSError as exc:
            raise KioskError(
                f"cannot serve the screen on {host}:{port}: {exc.strerror or exc}",
                code="ui_port_unavailable",
            ) from exc
        self.host = host
        self.port = int(self._server.server_port)
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="facepay-screen", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and close the socket; idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._server.shutdown()
            thread.join()
        self._server.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
