"""`kiosk_required`: the decorator that admits only signed requests from an active kiosk."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import g, request

from server.crypto import body_sha256_hex
from server.extensions import services
from server.kiosks.models import Kiosk
from server.kiosks.service import KioskAuthError, SignedRequest, authenticate

HEADER_KIOSK = "X-Facepay-Kiosk"
HEADER_TIMESTAMP = "X-Facepay-Timestamp"
HEADER_NONCE = "X-Facepay-Nonce"
HEADER_SIGNATURE = "X-Facepay-Signature"
SECURITY: list[str | dict[str, list[Any]]] = [{"KioskSignature": []}]

View = TypeVar("View", bound=Callable[..., Any])


def _signed_request() -> SignedRequest:
    headers = request.headers
    missing = [
        name
        for name in (HEADER_KIOSK, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
        if not headers.get(name)
    ]
    if missing:
        raise KioskAuthError(f"missing headers: {', '.join(missing)}", code="request_unsigned")
    try:
        timestamp = int(headers[HEADER_TIMESTAMP])
    except ValueError:
        raise KioskAuthError("the timestamp must be an integer", code="request_unsigned") from None
    return SignedRequest(
        kiosk_id=headers[HEADER_KIOSK],
        timestamp=timestamp,
        nonce=headers[HEADER_NONCE],
        signature=headers[HEADER_SIGNATURE],
    )


def signed_path() -> str:
    query = request.query_string.decode("latin-1")
    return request.path + (f"?{query}" if query else "")


def kiosk_required(view: View) -> View:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        svc = services()
        g.kiosk = authenticate(
            svc.sessions,
            _signed_request(),
            method=request.method,
            path=signed_path(),
            body_sha256_hex=body_sha256_hex(request.get_data(cache=True)),
            window_seconds=svc.settings.signature_window_s,
        )
        return view(*args, **kwargs)

    return cast(View, wrapper)


def current_kiosk() -> Kiosk:
    kiosk: Kiosk = g.kiosk
    return kiosk
