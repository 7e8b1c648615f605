"""The production entry point: `gunicorn 'server.wsgi:app'`.

Each gunicorn worker imports this module, so each builds its own application, loads its own
gallery and follows the change feed. Run `facepay server init` (migrations) before starting.
Logs go to stderr, as JSON lines with FACEPAY_LOG_FORMAT=json (server.observability).
"""

from __future__ import annotations

from server import create_app, settings_of
from server.extensions import services
from server.observability import configure_logging

app = create_app()
configure_logging(settings_of(app).log_format)
with app.app_context():
    services().serve()  # not ready (503) until the gallery loads, never a crash loop
