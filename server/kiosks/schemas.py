from __future__ import annotations

from apiflask import Schema
from apiflask.fields import Integer, String
from apiflask.validators import Length


class RegisterIn(Schema):
    pairing_code = String(required=True, validate=Length(min=4, max=32))
    public_key = String(
        required=True,
        validate=Length(min=40, max=64),
        metadata={"description": "Ed25519 public key, base64url"},
    )


class RegisterOut(Schema):
    kiosk_id = String(required=True)
    store = String(required=True)
    server_key_id = String(required=True)
    server_public_key = String(
        required=True, metadata={"description": "X25519 sealing key, base64url"}
    )
    signature_window_s = Integer(required=True)


class ServerKeyOut(Schema):
    key_id = String(required=True)
    public_key = String(required=True)
    algorithm = String(required=True)
