"""Errors raised by the face engine, each with a stable code for callers and HTTP layers."""

from __future__ import annotations


class FaceEngineError(Exception):
    """Base class: `code` is stable and machine-readable; the message is for people."""

    code = "face_engine_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ImageError(FaceEngineError):
    """The input could not be read as a picture, or is not one we accept."""

    code = "bad_image"


class PackError(FaceEngineError):
    """A model pack is unknown, missing, corrupted or cannot be built."""

    code = "pack_error"


class ChecksumError(PackError):
    """A file's sha256 is not the one its manifest or lock file records."""

    code = "checksum_mismatch"
