"""The facepay server: `create_app()` builds a configured Flask (APIFlask) application."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from server.config import Settings, load_settings

if TYPE_CHECKING:
    from apiflask import APIFlask

logger = logging.getLogger(__name__)

API_TITLE = "facepay"
API_VERSION = "1.0.0"


def create_app(config: Mapping[str, Any] | None = None) -> APIFlask:
    """Build the application from FACEPAY_* settings, with `config` overriding them (tests)."""
    # Imported here so that the kiosk can use server.crypto without Flask installed.
    from apiflask import APIFlask

    settings = load_settings(config)
    app = APIFlask(
        __name__,
        title=API_TITLE,
        version=API_VERSION,
        instance_path=str(settings.instance),
        template_folder="web/templates",  # console/ and shopper/ pages share layout.html
        static_folder="web/static",
    )
    app.config["FACEPAY"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["SYNC_LOCAL_SPEC"] = False
    # The console and the shopper pages use a signed session cookie; the JSON API does not.
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.is_production,
        PERMANENT_SESSION_LIFETIME=settings.session_hours * 3600,
    )
    app.info = {
        "description": "Pay by face with privacy first: sealed templates, consent, audit.",
        "license": {"name": "Apache-2.0"},
    }

    from server import errors, extensions, ratelimit
    from server.consent.routes import bp as consent_bp
    from server.enrollment.routes import bp as enrollment_bp
    from server.health.routes import bp as health_bp
    from server.kiosks.routes import bp as kiosks_bp
    from server.payments.routes import bp as payments_bp
    from server.privacy.routes import bp as privacy_bp

    app.security_schemes = {
        "KioskSignature": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Facepay-Signature",
            "description": "Ed25519 signature over method, path, body sha256, "
            "X-Facepay-Timestamp, X-Facepay-Nonce and X-Facepay-Kiosk",
        }
    }
    errors.register_error_handlers(app)
    app.before_request(errors.refuse_deep_json)
    extensions.init_app(app, settings)
    api_blueprints = (health_bp, kiosks_bp, consent_bp, enrollment_bp, payments_bp, privacy_bp)
    for blueprint in api_blueprints:
        # Kiosk requests carry a signature, not a cookie: CSRF tokens are for the HTML forms.
        extensions.csrf.exempt(blueprint)
        app.register_blueprint(blueprint)
    from server.console.routes import bp as console_bp

    app.register_blueprint(console_bp)  # HTML forms: CSRF stays on; not in the OpenAPI document
    from server.shopper_web.routes import bp as shopper_web_bp

    app.register_blueprint(shopper_web_bp)  # the shopper's privacy pages: CSRF on, not in OpenAPI
    ratelimit.init_app(
        app,
        settings,
        kiosk_blueprints=(kiosks_bp, enrollment_bp, payments_bp, privacy_bp),
        form_blueprints=(console_bp, shopper_web_bp),
    )
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    return app


def settings_of(app: Any) -> Settings:
    settings: Settings = app.config["FACEPAY"]
    return settings
