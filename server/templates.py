"""Templates on the wire: sealed by the kiosk to the server's key, validated on arrival.

A template is a unit-length float32 vector (little-endian). It travels sealed (X25519, HKDF,
AES-GCM) with associated data that binds it to the kiosk, the pack, the purpose (enroll, pay,
delete) and the liveness check the kiosk says it passed, so none of these can be swapped by
whoever relays the request.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
import numpy.typing as npt

from server.crypto._encoding import encode_fields

UNIT_TOLERANCE = 1e-3
_DOMAIN = b"facepay/template-transport/v1"
PURPOSES = ("enroll", "pay", "delete")
LIVENESS_CHECKS = ("none", "active-challenge", "insightface")


class TemplateInvalid(ValueError):
    """Why a template was refused; `code` is stable. Never quotes the template's values."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def transport_associated_data(*, kiosk_id: str, pack: str, purpose: str, liveness: str) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}")
    return encode_fields(
        _DOMAIN, kiosk_id.encode(), pack.encode(), purpose.encode(), liveness.encode()
    )


def encode_vector(vector: npt.NDArray[np.float32]) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def decode_vector(raw: bytes, dimension: int) -> npt.NDArray[np.float32]:
    """The vector a kiosk sent, if it is finite, of the pack's dimension and unit length."""
    if len(raw) != 4 * dimension:
        raise TemplateInvalid(
            f"a template of this pack has {dimension} values", "template_wrong_length"
        )
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)):
        raise TemplateInvalid("a template holds NaN or infinite values", "template_not_finite")
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if abs(norm - 1.0) > UNIT_TOLERANCE:
        raise TemplateInvalid("a template must be unit length", "template_not_unit")
    return vector


def b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TemplateInvalid("a sealed template is not base64url", "template_malformed") from None
