"""
Whether a pod may go to a node, as far as the node itself decides: its
``nodeSelector`` and required node affinity against the node's labels and
name, and its tolerations against the node's taints (kube's
``component-helpers`` ``nodeaffinity`` and ``v1helper`` taint rules).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from k3stw.machinery.labels import LabelSelectorError, Operator, Requirement
from k3stw.machinery.objects import get_path, metadata

#: The node field a ``matchFields`` requirement may name.
NAME_FIELD = "metadata.name"

_OPERATORS = {
    "In": Operator.IN,
    "NotIn": Operator.NOT_IN,
    "Exists": Operator.EXISTS,
    "DoesNotExist": Operator.DOES_NOT_EXIST,
    "Gt": Operator.GREATER_THAN,
    "Lt": Operator.LESS_THAN,
}


def _requirement_matches(requirement: Mapping[str, Any], values: Mapping[str, str]) -> bool:
    operator = _OPERATORS.get(str(requirement.get("operator", "")))
    if operator is None:
        return False
    try:
        built = Requirement.create(
            str(requirement.get("key", "")),
            operator,
            [str(v) for v in requirement.get("values") or ()],
        )
    except LabelSelectorError:
        return False
    return built.matches(values)


def _term_matches(term: Mapping[str, Any], labels: Mapping[str, str], name: str) -> bool:
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False  # an empty term selects no node
    if not all(_requirement_matches(e, labels) for e in expressions):
        return False
    for field in fields:
        if field.get("key") != NAME_FIELD:
            return False
        if not _requirement_matches({**field, "key": "name"}, {"name": name}):
            return False
    return True


def matches_node_selector(selector: Mapping[str, Any] | None, node: Mapping[str, Any]) -> bool:
    """Whether a ``NodeSelector`` (terms ORed) selects C{node}; C{None} selects every node."""
    if selector is None:
        return True
    labels = metadata(node).get("labels") or {}
    name = str(metadata(node).get("name") or "")
    return any(
        _term_matches(term, labels, name) for term in selector.get("nodeSelectorTerms") or []
    )


def fits_node(pod_spec: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """Whether C{node} satisfies the pod's ``nodeSelector`` and required node affinity."""
    labels = metadata(node).get("labels") or {}
    wanted = pod_spec.get("nodeSelector") or {}
    if any(labels.get(key) != value for key, value in wanted.items()):
        return False
    required = get_path(
        pod_spec, "affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution"
    )
    return matches_node_selector(required, node)


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Whether one toleration tolerates one taint (``Toleration.ToleratesTaint``)."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    if operator == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return False


def untolerated_taint(
    taints: Iterable[Mapping[str, Any]],
    tolerations: Iterable[Mapping[str, Any]],
    effects: Iterable[str],
) -> Mapping[str, Any] | None:
    """The first taint with one of C{effects} that no toleration tolerates, if any."""
    wanted = set(effects)
    tolerations = list(tolerations)
    for taint in taints:
        if taint.get("effect") in wanted and not any(tolerates(t, taint) for t in tolerations):
            return taint
    return None
