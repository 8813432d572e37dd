"""
What the kinds that carry a pod spec share: its defaults, and the columns
and selector cells of the workload printers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from k3stw.apiserver.patch.rules import RuleTable
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Strategy
from k3stw.apiserver.tables import (
    Column,
    Printed,
    Printer,
    mapping,
    mappings,
    text,
)
from k3stw.machinery.labels import (
    LabelSelectorError,
    format_label_selector,
    label_selector_from_spec,
)
from k3stw.machinery.objects import Object, get_path

#: The workload printers' ``-o wide`` columns.
CONTAINERS_COLUMN = Column(
    "Containers", priority=1, description="Names of each container in the template."
)
IMAGES_COLUMN = Column(
    "Images", priority=1, description="Images referenced by each container in the template."
)


def workload_parts(obj: Printed) -> tuple[Mapping[str, Any], Mapping[str, Any], str, str]:
    """A workload's spec and status, and its template's container names and images."""
    spec = mapping(obj.get("spec"))
    containers = mappings(get_path(spec, "template", "spec", "containers"))
    return (
        spec,
        mapping(obj.get("status")),
        ",".join(text(c.get("name")) for c in containers),
        ",".join(text(c.get("image")) for c in containers),
    )


def selector_text(spec: Any) -> str:
    # The Deployment printer shows the bare selector string, "" when empty.
    try:
        return str(label_selector_from_spec(spec if isinstance(spec, Mapping) else None))
    except LabelSelectorError:
        return "<invalid>"


def format_selector(spec: Any) -> str:
    return format_label_selector(spec if isinstance(spec, Mapping) else None)


def default_ports(ports: list[Any] | None) -> None:
    """A port's protocol is TCP unless it says otherwise."""
    for port in ports or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def _default_containers(spec: Object) -> None:
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            if isinstance(container, dict):
                default_ports(container.get("ports"))
                container.setdefault("terminationMessagePath", "/dev/termination-log")
                container.setdefault("terminationMessagePolicy", "File")
                image = str(container.get("image", ""))
                latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
                container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")


def default_pod_spec(spec: Object) -> None:
    """The defaults of a ``PodSpec``, in place: a pod's, or a workload's template's."""
    _default_containers(spec)
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)


def template_owner_defaults(replicas: bool) -> Callable[[Object], None]:
    """The defaults of a workload with a pod template (and ``replicas``, unless a DaemonSet)."""

    def default(obj: Object) -> None:
        spec = obj.setdefault("spec", {})
        if replicas:
            spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        template = spec.setdefault("template", {})
        if isinstance(template, dict):
            default_pod_spec(template.setdefault("spec", {}))

    return default


def default_rolling_update(spec: Object, field: str, **rolling: Any) -> None:
    """A workload's update strategy, RollingUpdate unless it says otherwise, with C{rolling}."""
    strategy = spec.setdefault(field, {})
    if isinstance(strategy, dict):
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            settings = strategy.setdefault("rollingUpdate", {})
            for name, value in rolling.items():
                settings.setdefault(name, value)


def workload(
    kind: str,
    short_name: str,
    printer: Printer,
    rules: RuleTable,
    replicas: bool = True,
    defaults: Callable[[Object], None] | None = None,
) -> ResourceType:
    """
    An apps/v1 workload: namespaced, in ``all``, a status subresource (and
    ``scale`` with C{replicas}), generations counted, a pod template (and
    C{replicas}) defaulted, then the kind's own C{defaults}.
    """
    template_defaults = template_owner_defaults(replicas)

    def default(obj: Object) -> None:
        template_defaults(obj)
        if defaults is not None:
            defaults(obj)

    return ResourceType(
        "apps",
        "v1",
        kind,
        kind.lower() + "s",
        kind.lower(),
        namespaced=True,
        short_names=(short_name,),
        categories=("all",),
        subresources=("status", "scale") if replicas else ("status",),
        strategy=Strategy(
            printer=printer,
            merge_rules=rules,
            counts_generation=True,
            default=default,
        ),
    )
