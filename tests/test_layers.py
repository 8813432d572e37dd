"""
The rooms of the house import downwards only: read from the source, every
import (at any depth of a module, lazy ones included) is checked against the
rooms each room may use.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "k3stw"

#: For each room, the rooms it must never import (directly or lazily).
FORBIDDEN: dict[str, frozenset[str]] = {
    # The shared floor stands below both halves.
    "machinery": frozenset(
        {"apiserver", "controllers", "kubelet", "agent", "supervisor", "server", "tap", "datastore"}
    ),
    # The API server is below the loops that use it.
    "apiserver": frozenset({"controllers", "kubelet", "agent", "supervisor", "server", "tap"}),
    "controllers": frozenset({"kubelet", "agent", "supervisor", "server", "tap"}),
    "datastore": frozenset(
        {"apiserver", "controllers", "kubelet", "agent", "supervisor", "server", "tap"}
    ),
    # The node half never loads the server half.
    "kubelet": frozenset({"apiserver", "controllers", "supervisor", "server", "datastore", "tap"}),
    "agent": frozenset({"apiserver", "controllers", "supervisor", "server", "datastore", "tap"}),
    "tunnel": frozenset({"apiserver", "controllers", "kubelet", "agent", "supervisor", "server"}),
    "loadbalancer": frozenset({"apiserver", "controllers", "kubelet", "supervisor", "server"}),
    "pki": frozenset({"apiserver", "controllers", "kubelet", "agent", "supervisor", "server"}),
}


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "k3stw" else None


def imports_of(path: Path) -> set[str]:
    """Every k3stw module C{path} imports, wherever the import statement stands."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("k3stw")}


class LayerTests(SynchronousTestCase):
    def test_no_import_runs_backwards(self) -> None:
        wrong = []
        for path in sorted(PACKAGE.rglob("*.py")):
            room = room_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
            if room not in FORBIDDEN:
                continue
            for module in imports_of(path):
                if room_of(module) in FORBIDDEN[room]:
                    wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
        self.assertEqual(wrong, [])

    def test_the_checker_sees_lazy_imports(self) -> None:
        """An import inside a function counts as much as one at the top."""
        path = PACKAGE / "tap" / "server.py"
        self.assertIn("k3stw.server.service", imports_of(path))
