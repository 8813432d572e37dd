"""
What the kubelet keeps of its containers' ends and logs on the node's disk:

- the termination message file: an empty file per container instance,
  ``<kubelet root>/pods/<uid>/containers/<name>/<8 hex digits>`` (mode 0666),
  mounted at the container's ``terminationMessagePath``; once the container
  has exited, its last 4096 bytes are the terminated state's message, or,
  with ``terminationMessagePolicy: FallbackToLogsOnError``, a failed
  container's empty file gives way to the last 80 lines (at most 2048 bytes)
  of its log;
- the legacy log symlinks ``/var/log/containers/<pod>_<namespace>_<container>-<id>.log``
  that point at the container's log under ``/var/log/pods``, made once the
  container started, removed with the container, and those whose log is
  gone removed at start.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from k3stw.kubelet.cri import api_pb2 as api

__all__ = [
    "CONTAINER_LOGS",
    "legacy_symlink",
    "read_termination_message",
    "remove_dead_symlinks",
    "tail_of_log",
    "termination_message_file",
]

#: Where the kubelet links every container's log (``legacyContainerLogsDir``).
CONTAINER_LOGS = "/var/log/containers"
#: kube's ``MaxContainerTerminationMessageLength``.
MAX_MESSAGE = 4096
#: kube's ``MaxContainerTerminationMessageLogLines`` and ``...LogLength``.
MAX_LOG_LINES = 80
MAX_LOG_BYTES = 2048
#: The longest file name ext4 takes.
MAX_NAME = 255
#: How much of a log's end is read to find its last lines.
LOG_WINDOW = 64 * 1024


def termination_message_file(kubelet_root: str, pod_uid: str, container: str) -> Path:
    """A new empty termination message file for one instance of C{container}."""
    directory = Path(kubelet_root) / "pods" / pod_uid / "containers" / container
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{secrets.randbits(32):08x}"
    path.touch()
    # Any user the container runs as may write its message.
    path.chmod(0o666)
    return path


def _read_end(path: str, size: int) -> bytes:
    with open(path, "rb") as file:
        file.seek(0, os.SEEK_END)
        file.seek(max(0, file.tell() - size))
        return file.read()


def read_termination_message(status: api.ContainerStatus, path: str, fallback: bool) -> str:
    """
    The termination message of the exited container C{status} (kube's
    ``getTerminationMessage``): the end of the file mounted at C{path}, else,
    if C{fallback}, the end of its log.
    """
    if path:
        for mount in status.mounts:
            if mount.container_path != path:
                continue
            try:
                data = _read_end(mount.host_path, MAX_MESSAGE)
            except FileNotFoundError:
                break
            except OSError as e:
                return f"Error on reading termination log {mount.host_path}: {e}"
            if data or not fallback:
                return data.decode("utf-8", "replace")
            break
    return tail_of_log(status.log_path) if fallback and status.log_path else ""


def tail_of_log(log_path: str) -> str:
    """
    What the container wrote in the last 80 lines of its CRI log (at most
    the last 2048 bytes), as kube's ``readLastStringFromContainerLogs``.
    """
    try:
        raw = _read_end(log_path, LOG_WINDOW)
    except OSError as e:
        return f"Error on reading termination message from logs: {e}"
    lines = raw.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    content = bytearray()
    for line in lines[-MAX_LOG_LINES:]:
        # <RFC 3339 time> <stdout|stderr> <P|F> <content>: P, a partial line, goes on.
        parts = line.split(b" ", 3)
        if len(parts) < 3:
            continue
        content += parts[3] if len(parts) == 4 else b""
        if parts[2] != b"P":
            content += b"\n"
    return bytes(content[-MAX_LOG_BYTES:]).decode("utf-8", "replace")


def legacy_symlink(
    directory: str, pod_name: str, namespace: str, container: str, container_id: str
) -> Path:
    """The symlink's path (kube's ``logSymlink``: cut to fit ext4's 255 characters)."""
    name = f"{pod_name}_{namespace}_{container}-{container_id}"
    suffix = ".log"
    return Path(directory) / (name[: MAX_NAME - len(suffix)] + suffix)


def remove_dead_symlinks(directory: str) -> None:
    """Remove the symlinks in C{directory} whose log is gone (the kubelet's log GC)."""
    try:
        links = list(Path(directory).glob("*.log"))
    except OSError:
        return
    for link in links:
        if link.is_symlink() and not link.exists():
            link.unlink(missing_ok=True)
