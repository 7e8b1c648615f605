from __future__ import annotations

import base64
from typing import Any

from apiflask import APIBlueprint

from server.db import transaction
from server.extensions import services
from server.kiosks import service
from server.kiosks.schemas import RegisterIn, RegisterOut, ServerKeyOut

bp = APIBlueprint("kiosks", __name__, tag="Kiosks")

SEALING_ALGORITHM = "X25519-HKDF-SHA256-AES256GCM"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def server_key() -> dict[str, str]:
    sealing = services().keys.sealing
    return {
        "key_id": sealing.key_id,
        "public_key": _b64(sealing.public_bytes()),
        "algorithm": SEALING_ALGORITHM,
    }


@bp.get("/.well-known/facepay-server-key")
@bp.output(ServerKeyOut)
@bp.doc(summary="The server's public key that kiosks seal templates to (pinned at registration)")
def well_known_key() -> dict[str, str]:
    return server_key()


@bp.post("/v1/kiosks/register")
@bp.input(RegisterIn, arg_name="body")
@bp.output(RegisterOut, status_code=201)
@bp.doc(summary="Register a kiosk's Ed25519 public key with its one-time pairing code")
def register(body: dict[str, Any]) -> dict[str, Any]:
    svc = services()
    with transaction(svc.sessions) as session:
        kiosk = service.register(
            session,
            svc.keys.audit_key,
            pairing_code=body["pairing_code"],
            public_key_b64=body["public_key"],
        )
        key = server_key()
        return {
            "kiosk_id": kiosk.id,
            "store": kiosk.store,
            "server_key_id": key["key_id"],
            "server_public_key": key["public_key"],
            "signature_window_s": svc.settings.signature_window_s,
        }
