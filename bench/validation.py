"""
What validating a create costs: checking the body against its kind's 1.32
schema (fieldValidation's unknown-field walk, and the value walk: JSON types,
required fields, quantities and times), then the kind's rules (metadata,
names, and its own, on the defaulted object), next to what every write costs
anyway in the same run: decoding and encoding the body as JSON.

    python bench/validation.py
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from k3stw.apiserver.catalogue.types import schema_errors
from k3stw.apiserver.catalogue.unknown import kind_node, unknown_fields
from k3stw.apiserver.kinds import configmaps, deployments
from k3stw.apiserver.objectmeta import metadata_causes
from k3stw.apiserver.registry import ResourceType

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
    schema_errors("apps", "v1", "Deployment", {})
    schema_errors("", "v1", "ConfigMap", {})
    kind_node("apps", "v1", "Deployment")
    compiled = (time.perf_counter() - compile_start) * 1000
    print("# Validating a create against the JSON work of every write\n")
    print(
        f"CPython {platform.python_version()}, {platform.machine()}; schemas compiled in "
        f"{compiled:.1f} ms (once per group version, both walks from one parse, at the "
        "first write)\n"
    )
    print(
        "| object | unknown fields, us | values, us | kind's rules, us "
        "| peer: JSON decode + encode, us |"
    )
    print("|---|---:|---:|---:|---:|")
    cases: tuple[tuple[str, dict[str, Any], ResourceType], ...] = (
        ("Deployment (670 B)", DEPLOYMENT, deployments.RESOURCE),
        ("ConfigMap, 16 keys", CONFIGMAP, configmaps.RESOURCE),
    )
    for name, obj, resource in cases:
        group, version, kind, strategy = (
            resource.group,
            resource.version,
            resource.kind,
            resource.strategy,
        )
        defaulted = copy.deepcopy(obj)
        strategy.default(defaulted)
        text = json.dumps(obj)
        unknown = per_call(lambda: unknown_fields(group, version, kind, obj))  # noqa: B023
        values = per_call(lambda: schema_errors(group, version, kind, obj))  # noqa: B023
        rules = per_call(
            lambda: metadata_causes(defaulted, strategy.names) + strategy.validate(defaulted)  # noqa: B023
        )
        peer = per_call(lambda: json.dumps(json.loads(text)))  # noqa: B023
        print(f"| {name} | {cell(unknown)} | {cell(values)} | {cell(rules)} | {cell(peer)} |")


if __name__ == "__main__":
    main()
