"""Server settings, read from FACEPAY_* environment variables (or a mapping, in tests)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

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
    # Matching policy: threshold at this FMR, margin over the best other shopper, and the
    # false-positive identification risk (N x FMR) above which the server asks for step-up.
    match_fmr: float = 1e-3
    match_margin: float = 0.05
    target_fpir: float = 1e-4
    require_liveness: bool | None = None  # default: required in production only
    change_poll_s: float = 0.25
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_production(self) -> bool:
        return self.mode == "production"

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{(self.instance / 'facepay.db').resolve()}"

    @property
    def keys_dir(self) -> Path:
        return self.instance / "keys"

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
    "target_fpir": "FACEPAY_TARGET_FPIR",
    "require_liveness": "FACEPAY_REQUIRE_LIVENESS",
    "change_poll_s": "FACEPAY_CHANGE_POLL_S",
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
    if not settings.instance.is_absolute():
        settings = replace(settings, instance=settings.instance.resolve())
    return settings


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
