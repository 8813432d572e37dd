"""
What the kinds that carry a pod spec share: its defaults, and the columns
and selector cells of the workload printers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from k3stw.apiserver.patch.rules import RuleTable
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Cause, Strategy
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
    go_quote,
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


def _go_labels(labels: Mapping[str, Any]) -> str:
    """A label map as Go's ``%#v`` prints it in kube-apiserver's messages."""
    pairs = ", ".join(f"{go_quote(k)}:{go_quote(str(v))}" for k, v in sorted(labels.items()))
    return "map[string]string{" + pairs + "}"


def containers_causes(spec: Any, path: str) -> list[Cause]:
    """A pod spec's containers: there must be some, each name once."""
    if not isinstance(spec, Mapping):
        return []
    containers = spec.get("containers")
    if not containers:
        return [(f"{path}.containers", "Required value")]
    causes: list[Cause] = []
    seen: set[str] = set()
    for key in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(key) or []):
            name = container.get("name") if isinstance(container, Mapping) else None
            if isinstance(name, str) and name in seen:
                causes.append((f"{path}.{key}[{index}].name", f"Duplicate value: {go_quote(name)}"))
            if isinstance(name, str):
                seen.add(name)
    return causes


def validate_workload(obj: Object) -> list[Cause]:
    """
    The rules kube-apiserver enforces on every workload that users hit most:
    a selector, which its pod template's labels match, and containers named once.
    """
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        return [("spec.selector", "Required value")]
    selector = spec.get("selector")
    if selector is None:
        return [("spec.selector", "Required value")]
    labels = get_path(spec, "template", "metadata", "labels") or {}
    causes: list[Cause] = []
    try:
        matches = label_selector_from_spec(selector).matches(labels)
    except LabelSelectorError as e:
        return [("spec.selector", f"Invalid value: {e}")]
    if not matches:
        causes.append(
            (
                "spec.template.metadata.labels",
                f"Invalid value: {_go_labels(labels)}: `selector` does not match template `labels`",
            )
        )
    return causes + containers_causes(get_path(spec, "template", "spec"), "spec.template.spec")


def immutable_selector(new: Object, old: Object) -> list[Cause]:
    """An apps/v1 workload's selector never changes once created."""
    before, after = get_path(old, "spec", "selector"), get_path(new, "spec", "selector")
    if before is None or after == before:
        return []
    return [("spec.selector", "Invalid value: the selector: field is immutable")]


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
            validate=validate_workload,
            validate_update=immutable_selector,
        ),
    )
