from __future__ import annotations

from typing import Any

from apiflask import Schema
from apiflask.fields import DateTime, Integer, Nested, String
from apiflask.validators import OneOf, Regexp
from marshmallow import ValidationError, validates_schema

from server.enrollment.schemas import SealedTemplateIn
from server.payments.schemas import PHONE_LAST4_PATTERN, PHONE_PATTERN


class KioskDeletionIn(Schema):
    """The face, and the phone's last four digits or the whole number (the server answers
    `full_phone_required` when four digits are not enough at its gallery's size)."""

    probe = Nested(SealedTemplateIn, required=True)
    phone_last4 = String(validate=Regexp(PHONE_LAST4_PATTERN))
    phone = String(validate=Regexp(PHONE_PATTERN))

    @validates_schema
    def one_answer(self, data: dict[str, Any], **_: Any) -> None:
        if ("phone" in data) == ("phone_last4" in data):
            raise ValidationError("send exactly one of phone_last4 and phone", "_schema")


class DeletionOut(Schema):
    status = String(
        required=True,
        validate=OneOf(("deleted", "not_found")),
        metadata={"description": "not_found: no enrolled shopper has this face and phone ending"},
    )
    request_id = String(metadata={"description": "the receipt's id, when deleted"})
    done_at = DateTime(metadata={"description": "when everything was deleted"})
    templates_deleted = Integer()
