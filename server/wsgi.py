"""The production entry point: `gunicorn 'server.wsgi:app'`.

Each gunicorn worker imports this module, so each builds its own application, loads its own
gallery and follows the change feed. Run `facepay server init` (migrations) before starting.
"""

from __future__ import annotations

from server import create_app
from server.extensions import services

app = create_app()
with app.app_context():
    services().start()
