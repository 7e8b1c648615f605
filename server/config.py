"""Server settings, read from FACEPAY_* environment variables (or a mapping, in tests)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from server.guesses.service import GuessLimits

Mode = Literal["development", "production"]


class ConfigError(RuntimeError):
    """The server cannot start with these settings."""


@dataclass(frozen=True)
class Settings:
    mode: Mode = "development"
    instance: Path = Path("instance")
    database_url: str = ""  # default: SQLite file in the instance folder
    secret_key: str = ""
    master_key_file: Path | None = None  # default: <instance>/keys/master.key in development
    audit_key_file: Path | None = None
    phone_key_file: Path | None = None
    sealing_key_file: Path | None = None
    key_store: Path | None = None  # shopper data keys, apart from the main database
    signature_window_s: int = 300
    # Matching policy: no threshold below the pack's point at this FMR; the best shopper must
    # lead the next by the margin. The risk rule (server.matching.risk) sets each step-up
    # rung's threshold and chooses the rung from these targets.
    match_fmr: float = 1e-3
    match_margin: float = 0.05
    risk_wrong_wallet: float = 1e-5  # an honest payment charged to another wallet
    risk_stranger: float = 1e-4  # a stranger's face with random digits, per attempt
    risk_targeted: float = 1e-2  # someone who knows a victim's phone number, per day
    risk_false_duplicate: float = 1e-3  # a new shopper's face declared a duplicate
    risk_min_completion: float = 0.98  # honest payments approved at a rung, or the next rung
    risk_mistype_rate: float = 0.01  # digits mistyped by an honest shopper (an assumption)
    risk_phone_space: int = 1_000_000_000  # numbers a random full phone number comes from
    step_up_failures_per_day: int = 10  # failed step-ups a shopper's record allows a day
    step_up_failures_per_kiosk_day: int = 100  # and a kiosk, over all shoppers
    require_liveness: bool | None = None  # default: required in production only
    change_poll_s: float = 0.25
    # Payments. Amounts in minor units of the payment's currency.
    currencies: str = "CAD"  # comma-separated ISO 4217 codes this server accepts
    limit_per_payment: int = 50_000
    limit_per_day: int = 100_000  # per shopper, over the last 24 hours
    step_up_above: int = 10_000  # a larger payment always asks for the phone's last digits
    step_up_ttl_s: int = 120
    # One answer per challenge: with retries, a stranger's wrong face would get "try again"
    # where an enrolled face refused for its limits gets a decline, and the two would differ.
    step_up_tries: int = 1
    authorization_ttl_s: int = 3600  # an uncaptured authorization expires after this
    # Authorize-then-void probes a face without moving money: past this many voids a day at a
    # kiosk (or its store), manual authorizations there are refused.
    voids_per_kiosk_day: int = 10
    voids_per_store_day: int = 50
    idempotency_ttl_h: int = 24  # idempotency keys are kept at least this long
    idempotency_lease_s: float = 10.0  # a retry may take over a claim its owner left this long
    log_format: str = "text"  # "json": one JSON object per line (server.observability)
    # Privacy operations. Shoppers with no activity for this many days are purged (BIPA's
    # ceiling is three years); one-time codes for web deletion and export.
    retention_days: int = 365
    code_ttl_s: int = 600
    code_tries: int = 5
    smtp_url: str = ""  # smtp[s]://user:password@host:port; empty: codes go to <instance>/outbox
    mail_from: str = "facepay <privacy@localhost>"
    # Console sign-in: this many failures in a row lock the operator out for lockout_s.
    login_tries: int = 5
    lockout_s: int = 900
    session_hours: int = 8
    # Hostile clients: the largest request body accepted (413 above it), and the request rate
    # per kiosk (per server process; "" turns it off) in Flask-Limiter's notation.
    max_body_bytes: int = 256 * 1024
    kiosk_rate_limit: str = "30/second;600/minute"
    form_rate_limit: str = "20/minute;200/hour"  # POSTs per client address on the HTML forms
    trusted_proxies: int = 0  # proxies in front whose X-Forwarded-For/-Proto are believed
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_production(self) -> bool:
        return self.mode == "production"

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{(self.instance / 'facepay.db').resolve()}"

    @property
    def accepted_currencies(self) -> frozenset[str]:
        return frozenset(
            code.strip().upper() for code in self.currencies.split(",") if code.strip()
        )

    @property
    def keys_dir(self) -> Path:
        return self.instance / "keys"

    @property
    def guess_limits(self) -> GuessLimits:
        from server.guesses.service import GuessLimits

        return GuessLimits(self.step_up_failures_per_day, self.step_up_failures_per_kiosk_day)

    @property
    def liveness_required(self) -> bool:
        return self.is_production if self.require_liveness is None else self.require_liveness


_ENV_NAMES = {
    "mode": "FACEPAY_ENV",
    "instance": "FACEPAY_INSTANCE",
    "database_url": "FACEPAY_DATABASE_URL",
    "secret_key": "FACEPAY_SECRET_KEY",
    "master_key_file": "FACEPAY_MASTER_KEY_FILE",
    "audit_key_file": "FACEPAY_AUDIT_KEY_FILE",
    "phone_key_file": "FACEPAY_PHONE_KEY_FILE",
    "sealing_key_file": "FACEPAY_SEALING_KEY_FILE",
    "key_store": "FACEPAY_KEY_STORE",
    "signature_window_s": "FACEPAY_SIGNATURE_WINDOW_S",
    "match_fmr": "FACEPAY_MATCH_FMR",
    "match_margin": "FACEPAY_MATCH_MARGIN",
    "risk_wrong_wallet": "FACEPAY_RISK_WRONG_WALLET",
    "risk_stranger": "FACEPAY_RISK_STRANGER",
    "risk_targeted": "FACEPAY_RISK_TARGETED",
    "risk_false_duplicate": "FACEPAY_RISK_FALSE_DUPLICATE",
    "risk_min_completion": "FACEPAY_RISK_MIN_COMPLETION",
    "risk_mistype_rate": "FACEPAY_RISK_MISTYPE_RATE",
    "risk_phone_space": "FACEPAY_RISK_PHONE_SPACE",
    "step_up_failures_per_day": "FACEPAY_STEP_UP_FAILURES_PER_DAY",
    "step_up_failures_per_kiosk_day": "FACEPAY_STEP_UP_FAILURES_PER_KIOSK_DAY",
    "require_liveness": "FACEPAY_REQUIRE_LIVENESS",
    "change_poll_s": "FACEPAY_CHANGE_POLL_S",
    "currencies": "FACEPAY_CURRENCIES",
    "limit_per_payment": "FACEPAY_LIMIT_PER_PAYMENT",
    "limit_per_day": "FACEPAY_LIMIT_PER_DAY",
    "step_up_above": "FACEPAY_STEP_UP_ABOVE",
    "step_up_ttl_s": "FACEPAY_STEP_UP_TTL_S",
    "step_up_tries": "FACEPAY_STEP_UP_TRIES",
    "authorization_ttl_s": "FACEPAY_AUTHORIZATION_TTL_S",
    "voids_per_kiosk_day": "FACEPAY_VOIDS_PER_KIOSK_DAY",
    "voids_per_store_day": "FACEPAY_VOIDS_PER_STORE_DAY",
    "idempotency_ttl_h": "FACEPAY_IDEMPOTENCY_TTL_H",
    "idempotency_lease_s": "FACEPAY_IDEMPOTENCY_LEASE_S",
    "log_format": "FACEPAY_LOG_FORMAT",
    "retention_days": "FACEPAY_RETENTION_DAYS",
    "code_ttl_s": "FACEPAY_CODE_TTL_S",
    "code_tries": "FACEPAY_CODE_TRIES",
    "smtp_url": "FACEPAY_SMTP_URL",
    "mail_from": "FACEPAY_MAIL_FROM",
    "login_tries": "FACEPAY_LOGIN_TRIES",
    "lockout_s": "FACEPAY_LOCKOUT_S",
    "session_hours": "FACEPAY_SESSION_HOURS",
    "max_body_bytes": "FACEPAY_MAX_BODY_BYTES",
    "kiosk_rate_limit": "FACEPAY_KIOSK_RATE_LIMIT",
    "form_rate_limit": "FACEPAY_FORM_RATE_LIMIT",
    "trusted_proxies": "FACEPAY_TRUSTED_PROXIES",
}


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the environment, then `overrides` (by field name) on top."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    types = {f.name: f.type for f in fields(Settings)}
    for name, variable in _ENV_NAMES.items():
        if variable in env and env[variable] != "":
            values[name] = _convert(name, str(types[name]), env[variable])
    for name, value in (overrides or {}).items():
        if name not in types:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _convert(name, str(types[name]), value) if isinstance(value, str) else value
    settings = replace(Settings(), **values)
    if settings.mode not in ("development", "production"):
        raise ConfigError("FACEPAY_ENV must be development or production")
    _check_ranges(settings)
    if not settings.instance.is_absolute():
        settings = replace(settings, instance=settings.instance.resolve())
    return settings


def _check_ranges(settings: Settings) -> None:
    if not settings.accepted_currencies or not all(
        re.fullmatch(r"[A-Z]{3}", code) for code in settings.accepted_currencies
    ):
        raise ConfigError("FACEPAY_CURRENCIES must list ISO 4217 codes, e.g. CAD,USD")
    positive = (
        "limit_per_payment",
        "limit_per_day",
        "step_up_ttl_s",
        "step_up_tries",
        "authorization_ttl_s",
        "idempotency_ttl_h",
        "idempotency_lease_s",
        "step_up_failures_per_day",
        "step_up_failures_per_kiosk_day",
        "risk_phone_space",
        "voids_per_kiosk_day",
        "voids_per_store_day",
    )
    for name in positive:
        if not getattr(settings, name) > 0:
            raise ConfigError(f"setting {name} must be positive")
    if settings.idempotency_ttl_h < 24:
        raise ConfigError("idempotency keys are kept at least 24 hours")
    shares = (
        "risk_wrong_wallet",
        "risk_stranger",
        "risk_targeted",
        "risk_false_duplicate",
        "risk_min_completion",
        "risk_mistype_rate",
    )
    for name in shares:
        if not 0 <= getattr(settings, name) <= 1:
            raise ConfigError(f"setting {name} must be a share between 0 and 1")
    if settings.step_up_above < 0:
        raise ConfigError("setting step_up_above must not be negative")
    if not 0 <= settings.trusted_proxies <= 5:
        raise ConfigError("FACEPAY_TRUSTED_PROXIES must be between 0 and 5")
    if not 4096 <= settings.max_body_bytes <= 16 * 1024 * 1024:
        raise ConfigError("FACEPAY_MAX_BODY_BYTES must be between 4096 and 16777216")
    for name in ("code_ttl_s", "code_tries", "login_tries", "lockout_s", "session_hours"):
        if not getattr(settings, name) > 0:
            raise ConfigError(f"setting {name} must be positive")
    if not 1 <= settings.retention_days <= 3 * 365:
        raise ConfigError("FACEPAY_RETENTION_DAYS must be between 1 and 1095 (three years)")


def _convert(name: str, kind: str, raw: Any) -> Any:
    text = str(raw)
    try:
        if "Path" in kind:
            return Path(text).expanduser()
        if kind.startswith("bool"):
            lowered = text.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(text)
            return lowered in ("1", "true", "yes", "on")
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError as exc:
        raise ConfigError(f"setting {name}: {text!r} is not valid") from exc
    return text
