from __future__ import annotations

from typing import Any

from apiflask import Schema
from apiflask.fields import DateTime, Integer, Nested, String
from apiflask.validators import Length, OneOf, Range, Regexp
from marshmallow import ValidationError, validates_schema

from server.enrollment.schemas import SealedTemplateIn

MAX_AMOUNT = 100_000_000  # minor units; far above any limit a server would configure
PHONE_LAST4_PATTERN = r"^[0-9]{4}$"
# A whole phone number as typed: 7 to 15 digits (E.164's most), with the usual separators.
PHONE_PATTERN = r"^(?=(?:[^0-9]*[0-9]){7,15}[^0-9]*$)\+?[0-9 ().-]{7,24}$"


class IdempotencyHeaders(Schema):
    idempotency_key = String(
        data_key="Idempotency-Key",
        load_default=None,
        metadata={
            "description": "Required on every POST: a unique key (a UUID) the kiosk makes and "
            "stores before the first attempt and sends again with every retry."
        },
    )


class PaymentIn(Schema):
    amount = Integer(
        required=True,
        strict=True,
        validate=Range(min=1, max=MAX_AMOUNT),
        metadata={"description": "minor units (cents)"},
    )
    currency = String(required=True, validate=Regexp(r"^[A-Z]{3}$"))
    capture_method = String(
        load_default="automatic",
        validate=OneOf(("automatic", "manual")),
        metadata={"description": "automatic: charge now; manual: authorize, capture later"},
    )
    probe = Nested(SealedTemplateIn, required=True)


class StepUpIn(Schema):
    """The answer to a challenge: what its `step_up_ask` named, and only that."""

    challenge_id = String(required=True, validate=Length(min=1, max=64))
    phone_last4 = String(validate=Regexp(PHONE_LAST4_PATTERN))
    phone = String(
        validate=Regexp(PHONE_PATTERN),
        metadata={"description": "the whole number: 7 to 15 digits, may have + ( ) - . spaces"},
    )

    @validates_schema
    def one_answer(self, data: dict[str, Any], **_: Any) -> None:
        if ("phone" in data) == ("phone_last4" in data):
            raise ValidationError("send exactly one of phone_last4 and phone", "_schema")


class CaptureIn(Schema):
    amount = Integer(
        load_default=None,
        strict=True,
        validate=Range(min=1, max=MAX_AMOUNT),
        metadata={"description": "at most the authorized amount; default: all of it"},
    )


class PaymentOut(Schema):
    payment_id = String(required=True)
    status = String(
        required=True,
        validate=OneOf(("approved", "declined", "step_up_required")),
        metadata={"description": "the answer to the authorization"},
    )
    state = String(
        required=True,
        validate=OneOf(
            ("step_up_required", "declined", "authorized", "captured", "voided", "expired")
        ),
    )
    amount = Integer(required=True)
    currency = String(required=True)
    capture_method = String(required=True)
    captured_amount = Integer(required=True)
    refunded_amount = Integer(required=True)
    created_at = DateTime(required=True)
    decline_code = String(metadata={"description": "when declined: a stable code"})
    challenge_id = String(metadata={"description": "when step-up is required"})
    step_up_reason = String(validate=OneOf(("amount", "identity")))
    step_up_ask = String(
        validate=OneOf(("phone_last4", "phone")),
        metadata={"description": "what the challenge asks: the phone's last four digits or all"},
    )
    tries_left = Integer()
    expires_at = DateTime(metadata={"description": "an authorization's or a challenge's end"})
    shopper_label = String(metadata={"description": "first name and initial, when approved"})
    wallet_balance = Integer(metadata={"description": "what the wallet has left, when approved"})
