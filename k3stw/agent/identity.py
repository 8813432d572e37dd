"""
A node's identity on disk, as k3s keeps it: ``/etc/rancher/node/password``
(and ``id`` with ``--with-node-id``), and the node name derived from them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from k3stw.files import write_atomically
from k3stw.lifecycle import StartupError


@dataclass(frozen=True)
class NodeIdentity:
    """Who this node is: its final name and the password it proves it with."""

    name: str
    password: str
    password_file: Path


def _read_or_create(path: Path, make: str, mode: int) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    except OSError as e:
        raise StartupError(f"cannot read {path}: {e.strerror}") from None
    if text:
        return text
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomically(path, (make + "\n").encode("ascii"), mode)
    except OSError as e:
        raise StartupError(f"cannot write {path}: {e.strerror}") from None
    return make


def load_identity(directory: Path, node_name: str, with_node_id: bool) -> NodeIdentity:
    """
    Load or create the password (16 random bytes in hex, mode 0600) and, with
    C{with_node_id}, the id (4 random bytes in hex, mode 0644) appended to the
    lowercased node name.

    :raises StartupError: the directory or a file cannot be used.
    """
    password_file = directory / "password"
    password = _read_or_create(password_file, secrets.token_hex(16), 0o600)
    name = node_name.lower()
    if with_node_id:
        name = f"{name}-{_read_or_create(directory / 'id', secrets.token_hex(4), 0o644)}"
    return NodeIdentity(name, password, password_file)
