"""Imports every model module so that `metadata` holds the whole schema (Alembic, tests)."""

from __future__ import annotations

from server.audit import models as audit_models
from server.consent import models as consent_models
from server.db import Base
from server.enrollment import models as enrollment_models
from server.guesses import models as guess_models
from server.idempotency import models as idempotency_models
from server.kiosks import models as kiosk_models
from server.ledger import models as ledger_models
from server.matching import models as matching_models
from server.operators import models as operator_models
from server.payments import models as payment_models
from server.privacy import models as privacy_models
from server.shoppers import models as shopper_models

metadata = Base.metadata

__all__ = [
    "audit_models",
    "consent_models",
    "enrollment_models",
    "guess_models",
    "idempotency_models",
    "kiosk_models",
    "ledger_models",
    "matching_models",
    "metadata",
    "operator_models",
    "payment_models",
    "privacy_models",
    "shopper_models",
]
