"""
What the kinds that carry a pod spec share: its defaults, and the columns
and selector cells of the workload printers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from k3stw.apiserver.defaulting import child, each, fill, fill_at, unset
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


def default_ports(ports: Any) -> None:
    """A port's protocol is TCP unless it says otherwise."""
    for port in ports if isinstance(ports, list) else ():
        fill(port, protocol="TCP")


def pull_policy(image: str) -> str:
    """An image's pull policy by its tag: Always for ``latest`` (or none and no digest)."""
    name, at, _ = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.partition(":")[2] or ("" if at else "latest")
    return "Always" if tag == "latest" else "IfNotPresent"


#: A probe's thresholds; 0 counts as unset (plain integers in Go).
_PROBE_DEFAULTS = {
    "timeoutSeconds": 1,
    "periodSeconds": 10,
    "successThreshold": 1,
    "failureThreshold": 3,
}


def _default_handler(handler: Any) -> None:
    fill(get_path(handler, "httpGet"), path="/", scheme="HTTP")


def _default_container(container: Object) -> None:
    default_ports(container.get("ports"))
    fill(
        container,
        imagePullPolicy=pull_policy(str(container.get("image") or "")),
        terminationMessagePath="/dev/termination-log",
        terminationMessagePolicy="File",
        resources={},
    )
    for key in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = container.get(key)
        if isinstance(probe, dict):
            for name, value in _PROBE_DEFAULTS.items():
                if not probe.get(name):
                    probe[name] = value
            _default_handler(probe)
    for key in ("postStart", "preStop"):
        _default_handler(get_path(container, "lifecycle", key))
    fill_at(container, "env[].valueFrom.fieldRef", apiVersion="v1")


#: A volume's sources that carry a file mode, defaulted to 0644.
_MODE_SOURCES = ("secret", "configMap", "downwardAPI", "projected")


def _default_volume(volume: Object) -> None:
    if all(unset(value) for key, value in volume.items() if key != "name"):
        volume["emptyDir"] = {}
    for key in _MODE_SOURCES:
        fill(volume.get(key), defaultMode=420)
    fill(volume.get("hostPath"), type="")
    fill_at(volume, "downwardAPI.items[].fieldRef", apiVersion="v1")
    fill_at(volume, "projected.sources[].serviceAccountToken", expirationSeconds=3600)
    fill_at(volume, "projected.sources[].downwardAPI.items[].fieldRef", apiVersion="v1")
    default_claim_spec(get_path(volume, "ephemeral", "volumeClaimTemplate", "spec"))


def default_claim_spec(spec: Any) -> None:
    """A PersistentVolumeClaimSpec's defaults, wherever one is (a claim, a template)."""
    fill(spec, volumeMode="Filesystem")


def default_pod_spec(spec: Any) -> None:
    """
    The defaults of a ``PodSpec``, in place: a pod's, or a workload's
    template's (what only pods get is L{k3stw.apiserver.kinds.pods}').
    """
    if not isinstance(spec, dict):
        return
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for container in each(spec, key + "[]"):
            _default_container(container)
    for volume in each(spec, "volumes[]"):
        _default_volume(volume)
    fill(
        spec,
        dnsPolicy="ClusterFirst",
        restartPolicy="Always",
        securityContext={},
        terminationGracePeriodSeconds=30,
        schedulerName="default-scheduler",
    )
    # The deprecated serviceAccount mirrors serviceAccountName (kube's conversion).
    account = spec.get("serviceAccountName") or spec.get("serviceAccount")
    if account:
        spec["serviceAccountName"] = spec["serviceAccount"] = account


def default_template(owner: Any) -> None:
    """The pod template's defaults of an object's spec (a workload's, a PodTemplate's)."""
    template = child(owner, "template")
    if template is not None:
        default_pod_spec(child(template, "spec"))


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
    strategy = child(spec, field)
    fill(strategy, type="RollingUpdate")
    if strategy is not None and strategy["type"] == "RollingUpdate":
        fill(child(strategy, "rollingUpdate"), **rolling)


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

    def default(obj: Object) -> None:
        spec = child(obj, "spec")
        default_template(spec)
        if replicas:
            fill(spec, replicas=1)
        if defaults is not None and spec is not None:
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
