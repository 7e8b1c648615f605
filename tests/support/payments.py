"""Synthetic shoppers for payment tests: each has a random direction in embedding space, and
their templates and probes are that direction plus a little noise (cosine about 0.99 to it,
about 0 to anyone else), so a probe matches its shopper at the strictest calibrated point."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from tests.support.kiosk import SigningKiosk

DIMENSION = 128


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


class SyntheticFace:
    def __init__(self, rng: np.random.Generator, noise: float = 0.01) -> None:
        self._rng = rng
        self._noise = noise
        self.direction = unit(rng.standard_normal(DIMENSION))

    def sample(self) -> np.ndarray:
        return unit(self.direction + self._noise * self._rng.standard_normal(DIMENSION))

    def templates(self, count: int = 3) -> list[np.ndarray]:
        return [self.sample() for _ in range(count)]


def payment_payload(
    kiosk: SigningKiosk,
    probe: np.ndarray,
    amount: int,
    *,
    currency: str = "CAD",
    capture_method: str = "automatic",
) -> dict[str, Any]:
    return {
        "amount": amount,
        "currency": currency,
        "capture_method": capture_method,
        "probe": kiosk.seal(probe, purpose="pay"),
    }


def new_key() -> str:
    return str(uuid.uuid4())
