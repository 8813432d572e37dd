"""
What checking a body against its kind's 1.32 schema costs (fieldValidation's
unknown-field walk), next to what every write costs anyway in the same run:
decoding and encoding the body as JSON.

    python bench/validation.py
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from k3stw.apiserver.catalogue.unknown import kind_node, unknown_fields

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "labels": {"app": "web"}},
    "spec": {
        "replicas": 3,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "containers": [
                    {
                        "name": "web",
                        "image": "nginx:1.27",
                        "ports": [{"containerPort": 80}],
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        "readinessProbe": {"httpGet": {"path": "/", "port": 80}},
                    }
                ]
            },
        },
    },
}
CONFIGMAP: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "settings"},
    "data": {f"key{i}": "x" * 64 for i in range(16)},
}


def per_call(work: Callable[[], object], rounds: int = 2000, repeats: int = 7) -> list[float]:
    """Microseconds per call, one figure per repeat."""
    figures = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(rounds):
            work()
        figures.append((time.perf_counter() - start) / rounds * 1e6)
    return figures


def cell(figures: list[float]) -> str:
    return f"{statistics.median(figures):.1f} ({min(figures):.1f}-{max(figures):.1f})"


def main() -> None:
    compile_start = time.perf_counter()
    kind_node("apps", "v1", "Deployment")
    kind_node("", "v1", "ConfigMap")
    compiled = (time.perf_counter() - compile_start) * 1000
    print("# fieldValidation's schema check against the JSON work of every write\n")
    print(
        f"CPython {platform.python_version()}, {platform.machine()}; schemas compiled in "
        f"{compiled:.1f} ms (once per group version, at the first write)\n"
    )
    print("| object | schema check, us | peer: JSON decode + encode, us |")
    print("|---|---:|---:|")
    for name, obj, group, version, kind in (
        ("Deployment (670 B)", DEPLOYMENT, "apps", "v1", "Deployment"),
        ("ConfigMap, 16 keys", CONFIGMAP, "", "v1", "ConfigMap"),
    ):
        text = json.dumps(obj)
        check = per_call(lambda: unknown_fields(group, version, kind, obj))  # noqa: B023
        peer = per_call(lambda: json.dumps(json.loads(text)))  # noqa: B023
        print(f"| {name} | {cell(check)} | {cell(peer)} |")


if __name__ == "__main__":
    main()
