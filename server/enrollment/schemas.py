from __future__ import annotations

from apiflask import Schema
from apiflask.fields import AwareDateTime, Email, Integer, List, Nested, String
from apiflask.validators import Length, OneOf, Range, Regexp

from server.templates import LIVENESS_CHECKS


class ConsentIn(Schema):
    policy_version = Integer(required=True, validate=Range(min=1))
    text_sha256 = String(required=True, validate=Regexp(r"^[0-9a-f]{64}$"))
    locale = String(required=True, validate=Length(min=2, max=16))
    signature_name = String(required=True, validate=Length(min=2, max=200))
    signed_at = AwareDateTime(required=True)


class SealedTemplateIn(Schema):
    pack = String(required=True, validate=Length(min=3, max=80))
    liveness = String(required=True, validate=OneOf(LIVENESS_CHECKS))
    sealed = String(
        required=True, validate=Length(min=16, max=8192), metadata={"description": "base64url"}
    )


class ContactIn(Schema):
    email = Email(required=True, validate=Length(max=254))
    phone = String(required=True, validate=Regexp(r"^\+?[0-9 ()-]{7,24}$"))


class WalletIn(Schema):
    amount = Integer(
        required=True,
        validate=Range(min=0, max=10_000_000),
        metadata={"description": "minor units"},
    )
    currency = String(required=True, validate=Regexp(r"^[A-Z]{3}$"))


class EnrollmentIn(Schema):
    consent = Nested(ConsentIn, required=True)
    templates = List(Nested(SealedTemplateIn), required=True, validate=Length(min=3, max=5))
    contact = Nested(ContactIn, required=True)
    wallet = Nested(WalletIn, required=True)


class EnrollmentOut(Schema):
    enrollment_id = String(required=True)
    shopper_id = String(required=True)
    masked_label = String(required=True)
    pack = String(required=True)
    wallet_balance = Integer(required=True)
    currency = String(required=True)
