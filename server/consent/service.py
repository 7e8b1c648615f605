"""The consent notice: versions, their texts per locale, and checking what a shopper agreed to."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.consent.models import PolicyText, PolicyVersion
from server.db import utcnow
from server.errors import ProblemError

logger = logging.getLogger(__name__)

DEFAULT_PURPOSE = (
    "Recognise an enrolled shopper at a kiosk to authorise a payment they ask for, or to delete "
    "their data at their request. No other use."
)
DEFAULT_RETENTION_DAYS = 365
DEFAULT_LOCALES = ("en", "fr")


class ConsentStale(ProblemError):
    status_code = 409
    code = "consent_stale"
    title = "The consent notice shown is not the current one"


class ConsentInvalid(ProblemError):
    status_code = 422
    code = "consent_invalid"
    title = "The consent does not match the published notice"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Policy:
    version: int
    purpose: str
    retention_days: int
    effective_at: dt.datetime
    texts: Mapping[str, str]  # locale -> text

    def as_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "purpose": self.purpose,
            "retention_days": self.retention_days,
            "effective_at": self.effective_at.isoformat(),
            "texts": {
                locale: {"text": text, "sha256": text_sha256(text)}
                for locale, text in self.texts.items()
            },
            "other_ways_to_pay": True,
        }


def default_texts() -> dict[str, str]:
    folder = resources.files("server.consent").joinpath("notices")
    return {
        locale: folder.joinpath(f"{locale}.txt").read_text(encoding="utf-8")
        for locale in DEFAULT_LOCALES
    }


def publish(
    session: Session,
    texts: Mapping[str, str],
    *,
    purpose: str = DEFAULT_PURPOSE,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    effective_at: dt.datetime | None = None,
) -> Policy:
    """Publish a new version of the notice; earlier versions stay as they were."""
    if not texts or any(not text.strip() for text in texts.values()):
        raise ValueError("a notice needs a non-empty text for each locale")
    if retention_days <= 0:
        raise ValueError("retention must be a positive number of days")
    latest = session.scalar(select(func.max(PolicyVersion.version))) or 0
    version = PolicyVersion(
        version=latest + 1,
        purpose=purpose,
        retention_days=retention_days,
        effective_at=effective_at or utcnow(),
    )
    session.add(version)
    session.flush()
    for locale, text in texts.items():
        session.add(
            PolicyText(version=version.version, locale=locale, text=text, sha256=text_sha256(text))
        )
    session.flush()
    return current(session)


def ensure_default(session: Session) -> Policy:
    """The current notice, publishing the shipped English and French one if none exists."""
    if session.scalar(select(func.count()).select_from(PolicyVersion)) == 0:
        logger.info("publishing the default consent notice (en, fr)")
        return publish(session, default_texts())
    return current(session)


def current(session: Session) -> Policy:
    now = utcnow()
    version = session.scalars(
        select(PolicyVersion)
        .where(PolicyVersion.effective_at <= now)
        .order_by(PolicyVersion.version.desc())
        .limit(1)
    ).first()
    if version is None:
        raise ProblemError("No consent notice is published yet", code="no_policy", status=503)
    texts = session.scalars(select(PolicyText).where(PolicyText.version == version.version))
    return Policy(
        version=version.version,
        purpose=version.purpose,
        retention_days=version.retention_days,
        effective_at=version.effective_at,
        texts={row.locale: row.text for row in texts},
    )


def check_agreement(session: Session, *, version: int, locale: str, sha256: str) -> Policy:
    """The shopper must have been shown the current notice, exactly, in a published locale."""
    policy = current(session)
    if version != policy.version:
        raise ConsentStale(
            f"notice version {version} was shown; the current one is {policy.version}"
        )
    if locale not in policy.texts:
        raise ConsentInvalid(f"the notice has no {locale!r} text", code="consent_locale_unknown")
    if sha256 != text_sha256(policy.texts[locale]):
        raise ConsentInvalid("the sha256 of the text shown is not the published text's")
    return policy
