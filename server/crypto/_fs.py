"""Small filesystem helpers for private (0600) files with atomic writes."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from server.crypto.errors import InsecureKeyFileError

__all__ = ["PRIVATE_FILE_MODE", "check_private_file", "fsync_dir", "write_private_file"]

PRIVATE_FILE_MODE = 0o600
_GROUP_OTHER_BITS = stat.S_IRWXG | stat.S_IRWXO


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry change (rename, link, unlink) to disk (POSIX only)."""
    if os.name != "posix":  # pragma: no cover - Windows has no directory fds
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_file(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Atomically write ``data`` to ``path`` with mode 0600.

    The data goes to a fresh temporary file in the same directory (created 0600
    with ``O_EXCL``, fsynced), which is then either renamed over ``path``
    (``overwrite=True``) or hard-linked to ``path`` (``overwrite=False``; the link
    fails with :class:`FileExistsError` if ``path`` exists, so an existing key is
    never clobbered, even by a concurrent writer). Readers therefore see either
    the old complete file or the new complete file, never a partial one.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, PRIVATE_FILE_MODE)
    try:
        try:
            if os.name == "posix":
                os.fchmod(fd, PRIVATE_FILE_MODE)  # independent of the umask
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(directory)


def check_private_file(path: Path) -> None:
    """Raise :class:`InsecureKeyFileError` if ``path`` is accessible by group/others.

    Mirrors what OpenSSH does for private keys. POSIX only; a no-op elsewhere.
    """
    if os.name != "posix":  # pragma: no cover
        return
    mode = os.stat(path).st_mode
    if mode & _GROUP_OTHER_BITS:
        raise InsecureKeyFileError(
            f"key file permissions {stat.S_IMODE(mode):04o} are too open; expected 0600"
        )
