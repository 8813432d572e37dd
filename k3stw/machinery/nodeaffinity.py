"""
Whether a pod may go to a node, as far as the node itself decides: its
``nodeSelector`` and required node affinity against the node's labels and
name, and its tolerations against the node's taints (kube's
``component-helpers`` ``nodeaffinity`` and ``v1helper`` taint rules).

The scheduler and the DaemonSet controller share these: a pod's selector
terms are parsed once (L{RequiredNodeAffinity.of}) and then matched
against each node's labels and name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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


def _requirement(expression: Mapping[str, Any], key: str) -> Requirement | None:
    operator = _OPERATORS.get(str(expression.get("operator", "")))
    if operator is None:
        return None
    try:
        return Requirement.create(key, operator, [str(v) for v in expression.get("values") or ()])
    except LabelSelectorError:
        return None


@dataclass(frozen=True)
class NodeSelectorTerm:
    """
    One parsed ``NodeSelectorTerm``: its label requirements and its
    requirements on the node's name (``matchFields``), all ANDed.  A term
    that is empty or does not parse selects no node, as kube's does.
    """

    labels: tuple[Requirement, ...]
    name: tuple[Requirement, ...]
    valid: bool

    @classmethod
    def of(cls, term: Mapping[str, Any]) -> NodeSelectorTerm:
        expressions = term.get("matchExpressions") or ()
        fields = term.get("matchFields") or ()
        labels = [_requirement(e, str(e.get("key", ""))) for e in expressions]
        name = [_requirement(f, "name") if f.get("key") == NAME_FIELD else None for f in fields]
        parsed = [r for r in (*labels, *name) if r is not None]
        valid = bool(parsed) and len(parsed) == len(labels) + len(name)
        return cls(
            tuple(r for r in labels if r is not None),
            tuple(r for r in name if r is not None),
            valid,
        )

    def matches(self, labels: Mapping[str, str], name: str) -> bool:
        if not self.valid:
            return False
        if not all(requirement.matches(labels) for requirement in self.labels):
            return False
        return not self.name or all(r.matches({"name": name}) for r in self.name)


def selector_terms(selector: Mapping[str, Any] | None) -> tuple[NodeSelectorTerm, ...] | None:
    """A ``NodeSelector``'s terms parsed (ORed); C{None} for no selector (every node)."""
    if selector is None:
        return None
    return tuple(NodeSelectorTerm.of(term) for term in selector.get("nodeSelectorTerms") or ())


@dataclass(frozen=True)
class RequiredNodeAffinity:
    """
    A pod's ``nodeSelector`` and required node affinity, parsed
    (kube's ``nodeaffinity.GetRequiredNodeAffinity``).
    """

    selector: Mapping[str, str]
    terms: tuple[NodeSelectorTerm, ...] | None

    @classmethod
    def of(cls, pod_spec: Mapping[str, Any]) -> RequiredNodeAffinity:
        required = get_path(
            pod_spec, "affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution"
        )
        return cls(pod_spec.get("nodeSelector") or {}, selector_terms(required))

    @property
    def anywhere(self) -> bool:
        """Whether every node matches (no selector, no required affinity)."""
        return not self.selector and self.terms is None

    def matches(self, labels: Mapping[str, str], name: str) -> bool:
        if any(labels.get(key) != value for key, value in self.selector.items()):
            return False
        return self.terms is None or any(term.matches(labels, name) for term in self.terms)


def _labels_and_name(node: Mapping[str, Any]) -> tuple[Mapping[str, str], str]:
    return metadata(node).get("labels") or {}, str(metadata(node).get("name") or "")


def matches_node_selector(selector: Mapping[str, Any] | None, node: Mapping[str, Any]) -> bool:
    """Whether a ``NodeSelector`` (terms ORed) selects C{node}; C{None} selects every node."""
    terms = selector_terms(selector)
    labels, name = _labels_and_name(node)
    return terms is None or any(term.matches(labels, name) for term in terms)


def fits_node(pod_spec: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """Whether C{node} satisfies the pod's ``nodeSelector`` and required node affinity."""
    return RequiredNodeAffinity.of(pod_spec).matches(*_labels_and_name(node))


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
