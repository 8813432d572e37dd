"""
A volume given to a pod's ``securityContext.fsGroup``, as the kubelet's
``SetVolumeOwnership``: every file and directory of it gets the group; files
become group-readable (and group-writable unless the volume is read-only);
directories group-searchable and setgid, so what containers make in them
keeps the group.  With ``fsGroupChangePolicy: OnRootMismatch`` a volume whose
root has the group and those permissions already is left alone.  Symlinks
(the atomic writer's ``..data``) change group, never mode: their target's
mode is the volume's ``defaultMode``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_READ_WRITE = 0o660
_READ_ONLY = 0o440
_SEARCH = 0o110


def _mask(read_only: bool) -> int:
    return _READ_ONLY if read_only else _READ_WRITE


def owned(root: Path, group: int, read_only: bool) -> bool:
    """Whether the volume's root has the group, its permissions and setgid (kube's check)."""
    info = root.stat()
    wanted = _mask(read_only) | _SEARCH
    return (
        info.st_gid == group
        and stat.S_ISDIR(info.st_mode)
        and info.st_mode & wanted == wanted
        and bool(info.st_mode & stat.S_ISGID)
    )


def set_volume_ownership(root: Path, group: int, read_only: bool, policy: str = "Always") -> None:
    """Give the volume at C{root} to C{group}, unless C{policy} and its root say it has it."""
    if policy == "OnRootMismatch" and owned(root, group, read_only):
        return
    mask = _mask(read_only)
    for directory, subdirectories, files in os.walk(root):
        here = Path(directory)
        for path in [here, *(here / name for name in (*subdirectories, *files))]:
            if path != here and path.is_dir() and not path.is_symlink():
                continue  # walked into next, as a directory of its own
            info = path.lstat()
            os.lchown(path, -1, group)
            if stat.S_ISLNK(info.st_mode):
                continue
            extra = stat.S_ISGID | _SEARCH if stat.S_ISDIR(info.st_mode) else 0
            os.chmod(path, stat.S_IMODE(info.st_mode) | mask | extra)
