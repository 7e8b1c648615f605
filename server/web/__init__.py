"""What the server's HTML pages share: the layout (templates/layout.html), the style sheet
and the headers every page gets."""

from __future__ import annotations

from flask import Response

# No script runs on these pages, nothing is framed and nothing loads from elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def secure_page(response: Response) -> Response:
    """Headers for an HTML page (blueprints register this as their after_request)."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response
