"""Request floods: a rate limit per kiosk on the kiosk API and per client address on the HTML
forms (Flask-Limiter), answered with 429 and a Retry-After header before any signature is
checked or database touched.

The count is kept in each server process's memory: with W gunicorn workers a kiosk may send
up to W times the limit in all, which still bounds a flood. A kiosk is known by the id it
claims and the address it comes from, so a forged id cannot use up a real kiosk's allowance
from elsewhere.
"""

from __future__ import annotations

import re

from flask import Flask, Response, request
from flask.blueprints import Blueprint
from flask_limiter import Limiter
from limits import parse_many

from server.config import ConfigError, Settings

# Behind the TLS proxy, the client's address comes from X-Forwarded-For
# (FACEPAY_TRUSTED_PROXIES, applied with werkzeug's ProxyFix in create_app).

_KIOSK_ID = re.compile(r"[0-9a-f-]{36}")


def kiosk_key() -> str:
    claimed = request.headers.get("X-Facepay-Kiosk", "")
    kiosk = claimed if _KIOSK_ID.fullmatch(claimed) else "-"
    return f"kiosk:{kiosk}@{request.remote_addr or '-'}"


def _wait_at_least_a_second(response: Response) -> Response:
    if response.status_code == 429 and response.headers.get("Retry-After", "0") in ("", "0"):
        response.headers["Retry-After"] = "1"
    return response


def web_key() -> str:
    return f"web:{request.remote_addr or '-'}"


def _checked(name: str, limit: str) -> str:
    try:
        parse_many(limit)
    except ValueError as exc:
        raise ConfigError(f"{name}: {limit!r} is not a rate limit") from exc
    return limit


def init_app(
    app: Flask,
    settings: Settings,
    *,
    kiosk_blueprints: tuple[Blueprint, ...],
    form_blueprints: tuple[Blueprint, ...],
) -> Limiter | None:
    """A limiter of this app's own (tests build many apps in one process): per kiosk on the
    kiosk API, and per client address on the forms people post (console sign-in, the shopper's
    code requests), so that guessing and flooding are slowed before any work is done."""
    kiosk_limit = settings.kiosk_rate_limit.strip()
    form_limit = settings.form_rate_limit.strip()
    if not kiosk_limit and not form_limit:
        return None
    # Registered before the limiter's own hook, so it runs after it (Flask runs after_request
    # functions last-registered first): a 429 always says to wait at least a second.
    app.after_request(_wait_at_least_a_second)
    limiter = Limiter(
        kiosk_key,
        app=app,
        storage_uri="memory://",
        strategy="moving-window",
        headers_enabled=True,
    )
    if kiosk_limit:
        _checked("FACEPAY_KIOSK_RATE_LIMIT", kiosk_limit)
        for blueprint in kiosk_blueprints:
            limiter.limit(kiosk_limit, key_func=kiosk_key)(blueprint)
    if form_limit:
        _checked("FACEPAY_FORM_RATE_LIMIT", form_limit)
        for blueprint in form_blueprints:
            limiter.limit(form_limit, key_func=web_key, methods=["POST"])(blueprint)
    return limiter
