from __future__ import annotations

from apiflask import Schema
from apiflask.fields import DateTime, Integer, Nested, String
from apiflask.validators import OneOf, Regexp

from server.enrollment.schemas import SealedTemplateIn


class KioskDeletionIn(Schema):
    probe = Nested(SealedTemplateIn, required=True)
    phone_last4 = String(required=True, validate=Regexp(r"^[0-9]{4}$"))


class DeletionOut(Schema):
    status = String(
        required=True,
        validate=OneOf(("deleted", "not_found")),
        metadata={"description": "not_found: no enrolled shopper has this face and phone ending"},
    )
    request_id = String(metadata={"description": "the receipt's id, when deleted"})
    done_at = DateTime(metadata={"description": "when everything was deleted"})
    templates_deleted = Integer()
