"""
HorizontalPodAutoscalers: stored as ``autoscaling/v2`` (the catalogue's
generic kind), also served as ``autoscaling/v1``, converted as kube-apiserver
converts: v1 knows only a CPU utilization target, so everything else (other
metrics, their statuses, conditions, behaviour) rides in kube's
``autoscaling.alpha.kubernetes.io/*`` annotations, in v1's own shapes, and a
v1 client's read-modify-write loses none of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from k3stw.apiserver.catalogue.rules import LazyRules
from k3stw.apiserver.registry import Conversion, ResourceType
from k3stw.apiserver.strategy import Strategy
from k3stw.apiserver.tables import Printer
from k3stw.machinery.objects import Object

METRICS = "autoscaling.alpha.kubernetes.io/metrics"
CURRENT_METRICS = "autoscaling.alpha.kubernetes.io/current-metrics"
CONDITIONS = "autoscaling.alpha.kubernetes.io/conditions"
BEHAVIOR = "autoscaling.alpha.kubernetes.io/behavior"

_CPU = "cpu"

# v2 metric source <-> v1 metric source.  Each v1 source is flat: a metric's
# identity and one target or current value, under v1's own field names.


def _identity(source: Mapping[str, Any], name: str, selector: str) -> dict[str, Any]:
    metric = source.get("metric") or {}
    found = {name: metric.get("name")}
    if metric.get("selector") is not None:
        found[selector] = metric["selector"]
    return found


def _values(values: Mapping[str, Any] | None, names: Mapping[str, str]) -> dict[str, Any]:
    """C{values}' fields renamed by C{names}, where set."""
    return {new: values[old] for old, new in names.items() if values and old in values}


_TARGETS = {
    "averageUtilization": "targetAverageUtilization",
    "averageValue": "targetAverageValue",
    "value": "targetValue",
}
_CURRENTS = {
    "averageUtilization": "currentAverageUtilization",
    "averageValue": "currentAverageValue",
    "value": "currentValue",
}


def _v1_source(kind: str, source: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """One v2 metric source (a target or a current status) in v1's shape."""
    values = source.get("target") or source.get("current")
    if kind in ("Resource", "ContainerResource"):
        flat = {"name": source.get("name"), **_values(values, names)}
        if kind == "ContainerResource":
            flat["container"] = source.get("container")
        return flat
    if kind == "Pods":
        return {**_identity(source, "metricName", "selector"), **_values(values, names)}
    if kind == "Object":
        # v1's Object source keeps its average under the v2 name.
        flat = {"target": source.get("describedObject")}
        flat.update(_identity(source, "metricName", "selector"))
        flat.update(_values(values, {"value": names["value"], "averageValue": "averageValue"}))
        return flat
    return {**_identity(source, "metricName", "metricSelector"), **_values(values, names)}


def _v2_source(kind: str, flat: Mapping[str, Any], names: Mapping[str, str], key: str) -> Object:
    """One v1 metric source back in v2's shape; C{key} is ``target`` or ``current``."""
    values = {old: flat[new] for old, new in names.items() if new in flat}
    if key == "target" and values:
        kinds = {"averageUtilization": "Utilization", "averageValue": "AverageValue"}
        values["type"] = next((kinds[k] for k in kinds if k in values), "Value")
    if kind in ("Resource", "ContainerResource"):
        source: Object = {"name": flat.get("name"), key: values}
        if kind == "ContainerResource":
            source["container"] = flat.get("container")
        return source
    selector = "metricSelector" if kind == "External" else "selector"
    metric = {"name": flat.get("metricName")}
    if flat.get(selector) is not None:
        metric["selector"] = flat[selector]
    if kind == "Object":
        if "averageValue" in flat:
            values["averageValue"] = flat["averageValue"]
            if key == "target":
                values["type"] = "AverageValue"
        return {"describedObject": flat.get("target"), "metric": metric, key: values}
    return {"metric": metric, key: values}


def _field(kind: str) -> str:
    """A metric type's field name: ``ContainerResource`` -> ``containerResource``."""
    return kind[0].lower() + kind[1:]


def _to_v1_metrics(metrics: list[Any], names: Mapping[str, str]) -> list[Any]:
    converted = []
    for metric in metrics:
        kind = metric.get("type", "")
        if not kind:
            # The autoscaler's status of a metric it could not get: a bare, empty type.
            converted.append({"type": kind})
            continue
        source = metric.get(_field(kind)) or {}
        converted.append({"type": kind, _field(kind): _v1_source(kind, source, names)})
    return converted


def _to_v2_metrics(metrics: list[Any], names: Mapping[str, str], key: str) -> list[Any]:
    converted = []
    for metric in metrics:
        kind = metric.get("type", "")
        if not kind:
            converted.append({"type": kind})
            continue
        flat = metric.get(_field(kind)) or {}
        converted.append({"type": kind, _field(kind): _v2_source(kind, flat, names, key)})
    return converted


def _is_cpu_utilization(metric: Mapping[str, Any], key: str) -> bool:
    resource = metric.get("resource") or {}
    return (
        metric.get("type") == "Resource"
        and resource.get("name") == _CPU
        and "averageUtilization" in (resource.get(key) or {})
    )


def _split_cpu(metrics: list[Any], key: str) -> tuple[int | None, list[Any]]:
    """The CPU utilization (a target or a current one) and every other metric."""
    cpu = None
    others = []
    for metric in metrics:
        if cpu is None and _is_cpu_utilization(metric, key):
            cpu = metric["resource"][key]["averageUtilization"]
        else:
            others.append(metric)
    return cpu, others


def _annotate(annotations: dict[str, str], name: str, value: Any) -> None:
    if value:
        annotations[name] = json.dumps(value, separators=(",", ":"))


def to_v1(hpa: Object) -> Object:
    """A stored ``autoscaling/v2`` HPA as ``autoscaling/v1`` shows it."""
    spec = dict(hpa.get("spec") or {})
    status = dict(hpa.get("status") or {})
    metadata = dict(hpa.get("metadata") or {})
    annotations = dict(metadata.get("annotations") or {})
    cpu, others = _split_cpu(spec.pop("metrics", None) or [], "target")
    _annotate(annotations, METRICS, _to_v1_metrics(others, _TARGETS))
    _annotate(annotations, BEHAVIOR, spec.pop("behavior", None))
    if cpu is not None:
        spec["targetCPUUtilizationPercentage"] = cpu
    current, other_statuses = _split_cpu(status.pop("currentMetrics", None) or [], "current")
    _annotate(annotations, CURRENT_METRICS, _to_v1_metrics(other_statuses, _CURRENTS))
    _annotate(annotations, CONDITIONS, status.pop("conditions", None))
    if current is not None:
        status["currentCPUUtilizationPercentage"] = current
    # Go writes v1's replica counts even when zero (v2 leaves out currentReplicas).
    status.setdefault("currentReplicas", 0)
    status.setdefault("desiredReplicas", 0)
    if annotations:
        metadata["annotations"] = annotations
    converted = {**hpa, "apiVersion": "autoscaling/v1", "metadata": metadata, "spec": spec}
    if hpa.get("status") is not None:
        converted["status"] = status
    return converted


def _annotation(annotations: dict[str, str], name: str) -> list[Any] | Any:
    """An annotation's JSON, taken out of C{annotations}; unreadable ones stay as they are."""
    text = annotations.get(name)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    del annotations[name]
    return value


def to_v2(hpa: Object) -> Object:
    """An ``autoscaling/v1`` HPA as it is stored (``autoscaling/v2``)."""
    spec = dict(hpa.get("spec") or {})
    status = dict(hpa.get("status") or {})
    metadata = dict(hpa.get("metadata") or {})
    annotations = dict(metadata.get("annotations") or {})
    metrics = _to_v2_metrics(_annotation(annotations, METRICS) or [], _TARGETS, "target")
    cpu = spec.pop("targetCPUUtilizationPercentage", None)
    if cpu is not None:
        target = {"type": "Utilization", "averageUtilization": cpu}
        metrics.insert(0, {"type": "Resource", "resource": {"name": _CPU, "target": target}})
    if metrics:
        spec["metrics"] = metrics
    behavior = _annotation(annotations, BEHAVIOR)
    if behavior:
        spec["behavior"] = behavior
    currents = _to_v2_metrics(_annotation(annotations, CURRENT_METRICS) or [], _CURRENTS, "current")
    current = status.pop("currentCPUUtilizationPercentage", None)
    if current is not None:
        value = {"averageUtilization": current}
        currents.insert(0, {"type": "Resource", "resource": {"name": _CPU, "current": value}})
    if currents:
        status["currentMetrics"] = currents
    if not status.get("currentReplicas"):
        status.pop("currentReplicas", None)
    conditions = _annotation(annotations, CONDITIONS)
    if conditions:
        status["conditions"] = conditions
    if annotations:
        metadata["annotations"] = annotations
    else:
        metadata.pop("annotations", None)
    converted = {**hpa, "apiVersion": "autoscaling/v2", "metadata": metadata, "spec": spec}
    if hpa.get("status") is not None:
        converted["status"] = status
    return converted


def _printed_as_stored(printer: Printer, to_stored: Callable[[Object], Object]) -> Printer:
    return Printer(printer.columns, lambda obj, now: printer.cells(to_stored(dict(obj)), now))


def v1_resource(stored: ResourceType) -> ResourceType:
    """``autoscaling/v1`` HorizontalPodAutoscalers, kept as C{stored}'s (``v2``) objects."""
    return ResourceType(
        "autoscaling",
        "v1",
        stored.kind,
        stored.plural,
        stored.singular,
        namespaced=True,
        short_names=stored.short_names,
        categories=stored.categories,
        subresources=stored.subresources,
        verbs=stored.verbs,
        strategy=Strategy(
            printer=_printed_as_stored(stored.strategy.printer, to_v2),
            merge_rules=LazyRules("autoscaling", "v1", stored.kind),
        ),
        conversion=Conversion(stored, to_v2, to_v1),
    )
