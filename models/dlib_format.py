"""Reader for dlib's binary serialization primitives (see dlib/serialize.h).

Only what is needed to read dlib's DNN model files is implemented:

* packed integers: one control byte whose low nibble is the number of magnitude
  bytes (1-8) and whose bit 0x80 marks a negative value; the magnitude follows,
  little-endian. Zero is written as ``01 00``. Bits 0x70 are reserved (must be 0).
* float/double: a packed int64 mantissa followed by a packed int16 exponent,
  ``value = mantissa * 2**exponent``. Exponents 32000/32001/32002 encode
  +inf/-inf/NaN.
* strings: packed length, then the raw bytes.
* bool: one ASCII byte, ``'0'`` or ``'1'``.
* tensors: int version 2, then n, k, nr, nc, then ``n*k*nr*nc`` raw little-endian
  float32 values. Shape-only (alias) tensors: int version 1 then four ints.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "DlibFormatError",
    "DlibReader",
    "TensorShape",
]

logger = logging.getLogger(__name__)

_EXP_POS_INF = 32000
_EXP_NEG_INF = 32001
_EXP_NAN = 32002

_TENSOR_VERSION = 2
_ALIAS_TENSOR_VERSION = 1


class DlibFormatError(ValueError):
    """Raised on truncated, malformed or unexpected dlib-serialized data."""


@dataclass(frozen=True)
class TensorShape:
    """The (n, k, nr, nc) shape of a dlib tensor."""

    n: int
    k: int
    nr: int
    nc: int

    @property
    def size(self) -> int:
        return self.n * self.k * self.nr * self.nc

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.n, self.k, self.nr, self.nc)


class DlibReader:
    """Sequential reader over an in-memory dlib-serialized byte string."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        if not 0 <= pos <= len(data):
            raise DlibFormatError(f"start position {pos} outside data of length {len(data)}")
        self._data = memoryview(data)
        self._pos = pos

    @property
    def pos(self) -> int:
        """Offset of the next unread byte."""
        return self._pos

    @property
    def size(self) -> int:
        """Total length of the underlying data."""
        return len(self._data)

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def expect_end(self) -> None:
        """Raise unless every byte has been consumed."""
        if not self.at_end():
            raise DlibFormatError(
                f"{self.remaining} trailing bytes after offset {self._pos} (size {self.size})"
            )

    def read_bytes(self, count: int) -> bytes:
        if count < 0:
            raise DlibFormatError(f"negative byte count {count} at offset {self._pos}")
        if count > self.remaining:
            raise DlibFormatError(
                f"truncated data: need {count} bytes at offset {self._pos}, "
                f"only {self.remaining} left"
            )
        start = self._pos
        self._pos += count
        return bytes(self._data[start : self._pos])

    def peek_byte(self) -> int:
        if self.remaining < 1:
            raise DlibFormatError(f"truncated data: no byte to peek at offset {self._pos}")
        return int(self._data[self._pos])

    # ----------------------------------------------------------------- integers

    def read_int(self, min_value: int | None = None, max_value: int | None = None) -> int:
        """Read one packed integer; optionally range-check it."""
        start = self._pos
        control = self.read_bytes(1)[0]
        size = control & 0x0F
        if control & 0x70 or size == 0 or size > 8:
            raise DlibFormatError(f"invalid packed-int control byte 0x{control:02x} at {start}")
        magnitude = int.from_bytes(self.read_bytes(size), "little")
        value = -magnitude if control & 0x80 else magnitude
        if (min_value is not None and value < min_value) or (
            max_value is not None and value > max_value
        ):
            raise DlibFormatError(
                f"integer {value} at offset {start} outside [{min_value}, {max_value}]"
            )
        return value

    def expect_int(self, expected: int, what: str) -> None:
        start = self._pos
        value = self.read_int()
        if value != expected:
            raise DlibFormatError(f"{what}: expected {expected}, got {value} at offset {start}")

    def read_uint(self) -> int:
        """Read a packed integer that must be non-negative (e.g. a size_t)."""
        return self.read_int(min_value=0)

    # ------------------------------------------------------------------- floats

    def read_float(self) -> float:
        """Read a dlib float/double (packed mantissa + packed exponent)."""
        mantissa = self.read_int(-(2**63), 2**63 - 1)
        exponent = self.read_int(-(2**15), 2**15 - 1)
        if exponent == _EXP_POS_INF:
            return math.inf
        if exponent == _EXP_NEG_INF:
            return -math.inf
        if exponent == _EXP_NAN:
            return math.nan
        try:
            return math.ldexp(float(mantissa), exponent)
        except OverflowError as exc:
            raise DlibFormatError(f"float {mantissa}*2^{exponent} overflows") from exc

    # ------------------------------------------------------------ strings, bool

    def read_string(self, max_length: int = 1 << 20) -> str:
        start = self._pos
        length = self.read_int(0, max_length)
        raw = self.read_bytes(length)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DlibFormatError(f"non-ASCII string at offset {start}") from exc

    def expect_string(self, expected: str) -> None:
        start = self._pos
        value = self.read_string()
        if value != expected:
            raise DlibFormatError(f"expected {expected!r}, got {value!r} at offset {start}")

    def read_bool(self) -> bool:
        start = self._pos
        byte = self.read_bytes(1)
        if byte == b"1":
            return True
        if byte == b"0":
            return False
        raise DlibFormatError(f"invalid bool byte {byte!r} at offset {start}")

    # ------------------------------------------------------------------ tensors

    def _read_shape(self) -> TensorShape:
        dims = [self.read_int(0, 2**31 - 1) for _ in range(4)]
        return TensorShape(*dims)

    def read_tensor(self) -> npt.NDArray[np.float32]:
        """Read a dlib tensor (version 2) as a float32 array of shape (n, k, nr, nc)."""
        start = self._pos
        self.expect_int(_TENSOR_VERSION, f"tensor version at {start}")
        shape = self._read_shape()
        raw = self.read_bytes(4 * shape.size)
        array = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        return array.reshape(shape.as_tuple())

    def read_alias_tensor(self) -> TensorShape:
        """Read a shape-only (alias) tensor: version 1 and four dimensions."""
        start = self._pos
        self.expect_int(_ALIAS_TENSOR_VERSION, f"alias tensor version at {start}")
        return self._read_shape()
