"""
The pods' cgroups, as the kubelet's pod container manager keeps them under
the cgroupfs driver: runc makes ``<root>/kubepods[/<qos>]/pod<uid>`` (and a
cgroup per container inside it) in every hierarchy but never removes them;
the kubelet removes a pod's once its sandbox is removed, and at start those
of pods that no longer exist.

A cgroup directory is removed with ``rmdir`` alone (its control files go
with it); the containers' cgroups inside go first.  One that still holds a
process stays and is named in a warning; the next clean-up tries again.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from k3stw.logs import Logger

__all__ = ["PodCgroups"]

#: Where the cgroup hierarchies are mounted.
CGROUP_MOUNT = Path("/sys/fs/cgroup")
#: The QoS cgroups a pod's cgroup sits in, under ``<root>/kubepods``.
QOS_DIRECTORIES = ("", "burstable", "besteffort")


class PodCgroups:
    """
    The pod cgroups under C{root} (``--cgroup-root``) in every hierarchy
    mounted at C{mount}.
    """

    _log = Logger()

    def __init__(self, root: str = "/", mount: Path = CGROUP_MOUNT) -> None:
        self.root = root.strip("/")
        self.mount = mount

    def _hierarchies(self) -> list[Path]:
        """
        Each hierarchy once: cgroup v1's ``<mount>/<controllers>`` (their
        aliases, ``cpu`` for ``cpu,cpuacct``, resolve to the same one) and
        cgroup v2's ``unified`` beside them, or C{mount} itself on v2 alone.
        """
        if (self.mount / "cgroup.controllers").exists():
            return [self.mount]
        try:
            entries = sorted(self.mount.iterdir())
        except OSError:
            return []
        seen: dict[Path, Path] = {}
        for entry in entries:
            if entry.is_dir():
                seen.setdefault(entry.resolve(), entry)
        return list(seen.values())

    def _qos_directories(self) -> list[Path]:
        kubepods = Path(self.root) / "kubepods"
        return [
            hierarchy / kubepods / qos
            for hierarchy in self._hierarchies()
            for qos in QOS_DIRECTORIES
        ]

    def pod_uids(self) -> set[str]:
        """The UIDs of the pods that have a cgroup in some hierarchy."""
        found: set[str] = set()
        for directory in self._qos_directories():
            try:
                names = [entry.name for entry in directory.iterdir() if entry.is_dir()]
            except OSError:
                continue
            found.update(name[3:] for name in names if name.startswith("pod") and len(name) > 3)
        return found

    def remove(self, pod_uid: str) -> None:
        """Remove the cgroups of C{pod_uid} (its containers' first) in every hierarchy."""
        if not pod_uid:
            return
        for directory in self._qos_directories():
            cgroup = directory / f"pod{pod_uid}"
            if cgroup.is_dir():
                self._remove_tree(cgroup)

    def remove_all_but(self, pod_uids: set[str]) -> None:
        """Remove the cgroups of every pod not in C{pod_uids} (the kubelet's orphan clean-up)."""
        for uid in sorted(self.pod_uids() - pod_uids):
            self._log.info("Removing the cgroups of pod {uid}, which no longer exists", uid=uid)
            self.remove(uid)

    def _remove_tree(self, cgroup: Path) -> None:
        for top, directories, _ in os.walk(cgroup, topdown=False):
            for name in directories:
                self._rmdir(Path(top) / name)
        self._rmdir(cgroup)

    def _rmdir(self, path: Path) -> None:
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            # EBUSY: a process is still in it (the sandbox stop left one behind).
            reason = "it still holds processes" if e.errno == errno.EBUSY else e.strerror
            self._log.warn("Cannot remove cgroup {path}: {reason}", path=str(path), reason=reason)
