from __future__ import annotations

from apiflask import Schema
from apiflask.fields import Boolean, Dict, Integer, Nested, String


class PolicyTextOut(Schema):
    text = String(required=True)
    sha256 = String(required=True)


class PolicyOut(Schema):
    version = Integer(required=True)
    purpose = String(required=True)
    retention_days = Integer(required=True)
    effective_at = String(required=True, metadata={"format": "date-time"})
    texts = Dict(keys=String(), values=Nested(PolicyTextOut), required=True)
    other_ways_to_pay = Boolean(required=True)
