"""
kube's atomic writer: a volume's files (configMap, secret, downwardAPI,
projected) written so that a container never sees half an update.

The files live in a hidden directory named for the time it was written
(``..2026_12_06_17_00_49.123456``); ``..data`` is a symlink to it, and each
top-level entry the user sees is a symlink through ``..data``
(``key -> ..data/key``).  An update writes a new directory, points a new
``..data_tmp`` link at it and renames that over ``..data`` (one atomic step),
adds and removes the user-visible links, then deletes the old directory.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from k3stw.machinery.times import utc

DATA = "..data"
_DATA_TMP = "..data_tmp"
#: The longest path and path segment the writer accepts (kube's limits).
_MAX_PATH = 4096
_MAX_SEGMENT = 255


@dataclass(frozen=True)
class FileProjection:
    """One file of a volume: its bytes and permission bits."""

    data: bytes
    mode: int


class PayloadError(ValueError):
    """A payload path the writer refuses (kube's words)."""


def check_path(path: str) -> None:
    """Refuse a path that is absolute, climbs out, or hides behind ``..``, as kube does."""
    if len(path) > _MAX_PATH:
        raise PayloadError(f"invalid path: must be less than or equal to {_MAX_PATH} characters")
    if path.startswith("/"):
        raise PayloadError(f"invalid path: must be relative path: {path}")
    segments = path.split("/")
    if ".." in segments:
        raise PayloadError(f"invalid path: must not contain '..': {path}")
    if path.startswith(".."):
        raise PayloadError(f"invalid path: must not start with '..': {path}")
    if any(len(segment) > _MAX_SEGMENT for segment in segments):
        raise PayloadError(f"invalid path: must not contain segments longer than {_MAX_SEGMENT}")


def write_payload(
    target: Path,
    payload: Mapping[str, FileProjection],
    now: float,
    suffix: Callable[[], int] = lambda: random.randrange(1 << 32),
) -> bool:
    """
    Make C{target}'s visible files exactly C{payload}, atomically.

    :param now: the time that names the new data directory.
    :param suffix: the random number that ends its name.
    :return: whether anything was written (nothing is, when nothing changed).
    :raises PayloadError: for a path kube refuses.
    """
    for path in payload:
        check_path(path)
    target.mkdir(parents=True, exist_ok=True)
    old_dir = _current_dir(target)
    wanted_tops = {path.split("/", 1)[0] for path in payload}
    stale = {
        entry.name
        for entry in target.iterdir()
        if not entry.name.startswith("..") and entry.name not in wanted_tops
    }
    if old_dir is not None and not stale and _same(old_dir, payload):
        return False
    stamp = utc(now).strftime("..%Y_%m_%d_%H_%M_%S.")
    new_dir = target / f"{stamp}{suffix()}"
    while new_dir.exists():
        new_dir = target / f"{stamp}{suffix()}"
    new_dir.mkdir()
    new_dir.chmod(0o755)
    for path, projection in payload.items():
        file = new_dir / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(projection.data)
        file.chmod(projection.mode)
    temporary = target / _DATA_TMP
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(new_dir.name)
    temporary.rename(target / DATA)
    for top in wanted_tops:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(f"{DATA}/{top}")
    for name in stale:
        entry = target / name
        if entry.is_symlink() or entry.is_file():
            entry.unlink()
        else:
            shutil.rmtree(entry)
    if old_dir is not None and old_dir != new_dir:
        shutil.rmtree(old_dir, ignore_errors=True)
    return True


def _current_dir(target: Path) -> Path | None:
    """The data directory ``..data`` points at, if any."""
    link = target / DATA
    if not link.is_symlink():
        return None
    current = target / os.readlink(link)
    return current if current.is_dir() else None


def _same(directory: Path, payload: Mapping[str, FileProjection]) -> bool:
    """Whether C{directory} holds exactly C{payload}'s files, bytes and modes."""
    found = {
        str(file.relative_to(directory))
        for file in directory.rglob("*")
        if file.is_file() or file.is_symlink()
    }
    if found != set(payload):
        return False
    for path, projection in payload.items():
        file = directory / path
        if file.stat().st_mode & 0o7777 != projection.mode or file.read_bytes() != projection.data:
            return False
    return True
