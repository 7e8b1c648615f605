"""Per-application services (database, keys, gallery, metrics), attached with `init_app` and found
through `services()` inside a request or an app context."""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass, field

from flask import Flask, current_app
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from server.config import ConfigError, Settings
from server.db import make_engine, make_session_factory
from server.keys import InstanceKeys, load_keys
from server.matching.service import FeedFollower, Gallery, GalleryUnavailable
from server.observability import LOG_FORMATS, Metrics
from server.observability import init_app as init_observability
from server.shoppers import service as shoppers

logger = logging.getLogger(__name__)

# A serving process whose gallery could not be loaded tries again this often (seconds).
GALLERY_RETRY_S = 2.0

# Every form the server renders (console, shopper pages) carries a token; a POST without it
# is refused. The kiosk API blueprints are exempted in create_app.
csrf = CSRFProtect()


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    keys: InstanceKeys
    gallery: Gallery
    metrics: Metrics
    follower: FeedFollower | None = field(default=None)
    # Why the gallery is not loaded, while a serving process waits for it (see `serve`).
    not_ready_reason: str | None = field(default=None)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)

    def start(self) -> None:
        """Load the gallery and follow the change feed (serving processes only, not CLI tools)."""
        if self.gallery.loaded:
            return
        with self.sessions() as session:
            if shoppers.hash_missing_phones(session, self.keys):
                session.commit()  # rows enrolled before the full-number step-up existed
            self.gallery.load(session)
        self.follower = FeedFollower(
            self.gallery, self.sessions, self.settings.database, self.settings.change_poll_s
        )
        self.follower.start()

    def serve(self, retry_s: float = GALLERY_RETRY_S) -> None:
        """`start`, for a serving process: when the gallery cannot be loaded (the key store
        unreadable, a shopper's key missing, the database down) the process serves anyway,
        not ready: /readyz answers 503 with the reason, and every request that needs a match
        is refused with 503 (`open_templates`), never matched against an empty or partial
        gallery. It tries again every `retry_s` seconds until the gallery loads."""
        if self._try_start():
            return
        threading.Thread(
            target=self._keep_trying, args=(retry_s,), name="facepay-gallery-retry", daemon=True
        ).start()

    def _try_start(self) -> bool:
        try:
            self.start()
        except (GalleryUnavailable, SQLAlchemyError) as exc:
            reason = str(exc) if isinstance(exc, GalleryUnavailable) else "the database fails"
            if reason != self.not_ready_reason:
                logger.error("not ready: %s; the gallery is not loaded, trying again", reason)
            self.not_ready_reason = reason
            return False
        if self.not_ready_reason is not None:
            logger.warning("ready: the gallery is loaded after all")
        self.not_ready_reason = None
        return True

    def _keep_trying(self, retry_s: float) -> None:
        while not self._stopping.wait(retry_s):
            if self._try_start():
                return

    def stop(self) -> None:
        self._stopping.set()
        if self.follower is not None:
            self.follower.stop()
            self.follower.join(timeout=5)
        self.engine.dispose()


def init_app(app: Flask, settings: Settings) -> Services:
    if settings.is_production and not settings.secret_key:
        raise ConfigError("production mode needs FACEPAY_SECRET_KEY")
    if settings.log_format not in LOG_FORMATS:
        raise ConfigError("FACEPAY_LOG_FORMAT must be text or json")
    settings.instance.mkdir(parents=True, exist_ok=True)
    keys = load_keys(settings)
    app.secret_key = settings.secret_key or _development_secret(settings)
    csrf.init_app(app)
    engine = make_engine(settings.database)
    gallery = Gallery(settings, keys.masters, keys.key_store)
    services = Services(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        keys=keys,
        gallery=gallery,
        metrics=init_observability(app, gallery),
    )
    app.extensions["facepay"] = services
    return services


def services() -> Services:
    found: Services = current_app.extensions["facepay"]
    return found


def _development_secret(settings: Settings) -> str:
    path = settings.keys_dir / "secret_key"
    if not path.exists():
        settings.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48), encoding="utf-8")
        logger.warning(
            "DEVELOPMENT MODE: created a session secret at %s; never use it in production", path
        )
    return path.read_text(encoding="utf-8").strip()
