"""Crash-safe file writes: a reader sees the old content or the new, never half of either."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """
    Replace C{path} with C{data}, created with C{mode}, surviving a crash at any point.

    The temporary file is made with C{mode} from the start, so a key is never
    readable by others, not even for a moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_if_changed(path: Path, data: bytes, mode: int) -> bool:
    """Write C{data} unless C{path} already holds it; always leave C{mode} set."""
    try:
        if path.read_bytes() == data:
            if path.stat().st_mode & 0o7777 != mode:
                path.chmod(mode)
            return False
    except FileNotFoundError:
        pass
    write_atomically(path, data, mode)
    return True
