"""
RBAC's policy rules as kube-apiserver reads them: whether a rule allows a
request (``rbac.RuleAllows``), whether one set of rules covers another (the
escalation check's ``Covers``), and a rule in kube's compact words
(``{APIGroups:[""], Resources:["pods"], Verbs:["get"]}``).

Pure functions over the rules' JSON; the authorizer compiles each rule once
into a L{Rule} of frozensets so that a decision is a few set lookups.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from k3stw.machinery.labels import go_quote

ALL = "*"
#: Every permission there is: what the aggregation rule of a ClusterRole requires.
FULL_AUTHORITY: tuple[Mapping[str, Any], ...] = (
    {"verbs": [ALL], "apiGroups": [ALL], "resources": [ALL]},
    {"verbs": [ALL], "nonResourceURLs": [ALL]},
)


def _strings(rule: Mapping[str, Any], field: str) -> tuple[str, ...]:
    values = rule.get(field) or ()
    return tuple(str(value) for value in values) if isinstance(values, list) else ()


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule, compiled for matching; C{raw} is the rule as stored."""

    verbs: frozenset[str]
    groups: frozenset[str]
    resources: frozenset[str]
    names: frozenset[str]
    urls: tuple[str, ...]
    raw: Mapping[str, Any]

    @classmethod
    def of(cls, rule: Mapping[str, Any]) -> Rule:
        return cls(
            frozenset(_strings(rule, "verbs")),
            frozenset(_strings(rule, "apiGroups")),
            frozenset(_strings(rule, "resources")),
            frozenset(_strings(rule, "resourceNames")),
            _strings(rule, "nonResourceURLs"),
            rule,
        )

    def allows_resource(
        self, verb: str, group: str, resource: str, subresource: str | None, name: str | None
    ) -> bool:
        """Whether the rule allows C{verb} on a resource (``RuleAllows``, resource half)."""
        if ALL not in self.verbs and verb not in self.verbs:
            return False
        if ALL not in self.groups and group not in self.groups:
            return False
        resources = self.resources
        if ALL not in resources:
            combined = f"{resource}/{subresource}" if subresource else resource
            if combined not in resources and not (subresource and f"*/{subresource}" in resources):
                return False
        return not self.names or (bool(name) and name in self.names)

    def allows_path(self, verb: str, path: str) -> bool:
        """Whether the rule allows C{verb} on a non-resource URL (``RuleAllows``, URL half)."""
        if ALL not in self.verbs and verb not in self.verbs:
            return False
        return any(url_covers(url, path) for url in self.urls)


def url_covers(owner: str, path: str) -> bool:
    """A rule's URL covers a path: ``*``, the same path, or a prefix ending in ``*``."""
    if owner in (ALL, path):
        return True
    return owner.endswith("*") and path.startswith(owner.rstrip("*"))


# Covering: the escalation check


def breakdown(rule: Mapping[str, Any]) -> list[dict[str, list[str]]]:
    """One rule as the simple rules it grants: one group, resource, verb and name each."""
    verbs, names = _strings(rule, "verbs"), _strings(rule, "resourceNames")
    simple: list[dict[str, list[str]]] = []
    for group in _strings(rule, "apiGroups"):
        for resource in _strings(rule, "resources"):
            for verb in verbs:
                base = {"apiGroups": [group], "resources": [resource], "verbs": [verb]}
                if names:
                    simple += [{**base, "resourceNames": [name]} for name in names]
                else:
                    simple.append(base)
    for url in _strings(rule, "nonResourceURLs"):
        simple += [{"nonResourceURLs": [url], "verbs": [verb]} for verb in verbs]
    return simple


def _resources_cover(owned: frozenset[str], wanted: Iterable[str]) -> bool:
    if ALL in owned:
        return True
    for resource in wanted:
        if resource in owned:
            continue
        _, slash, subresource = resource.partition("/")
        if not slash or f"*/{subresource}" not in owned:
            return False
    return True


def _rule_covers(owner: Rule, simple: Mapping[str, list[str]]) -> bool:
    verbs = owner.verbs
    if ALL not in verbs and not set(simple["verbs"]) <= verbs:
        return False
    groups = set(simple.get("apiGroups", ()))
    if ALL not in owner.groups and not groups <= owner.groups:
        return False
    if not _resources_cover(owner.resources, simple.get("resources", ())):
        return False
    urls = simple.get("nonResourceURLs", ())
    if not all(any(url_covers(mine, url) for mine in owner.urls) for url in urls):
        return False
    names = simple.get("resourceNames", ())
    if not names:
        return not owner.names
    return not owner.names or set(names) <= owner.names


def uncovered(owned: Sequence[Rule], wanted: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The simple rules of C{wanted} that no rule of C{owned} covers (none: covered)."""
    return [
        simple
        for rule in wanted
        for simple in breakdown(rule)
        if not any(_rule_covers(owner, simple) for owner in owned)
    ]


def compact(rules: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Simple rules of one group and resource (and name) merged into one, as ``CompactRules``."""
    merged: dict[tuple[str, str, str | None], dict[str, Any]] = {}
    others: list[dict[str, Any]] = []
    for rule in rules:
        groups, resources = rule.get("apiGroups", []), rule.get("resources", [])
        names = rule.get("resourceNames", [])
        if rule.get("nonResourceURLs") or len(groups) != 1 or len(resources) != 1 or len(names) > 1:
            others.append(dict(rule))
            continue
        key = (groups[0], resources[0], names[0] if names else None)
        if key in merged:
            merged[key]["verbs"] = merged[key]["verbs"] + list(rule.get("verbs", []))
        else:
            merged[key] = {**rule, "verbs": list(rule.get("verbs", []))}
    return others + list(merged.values())


def go_strings(values: Iterable[str]) -> str:
    """A Go ``%q`` of a string slice: ``["a" "b"]``."""
    return "[" + " ".join(go_quote(value) for value in values) + "]"


def compact_string(rule: Mapping[str, Any]) -> str:
    """A rule as kube's ``CompactString`` writes it: ``{APIGroups:[""], Verbs:["get"]}``."""
    parts = [
        f"{label}:{go_strings(rule[field])}"
        for label, field in (
            ("APIGroups", "apiGroups"),
            ("Resources", "resources"),
            ("NonResourceURLs", "nonResourceURLs"),
            ("ResourceNames", "resourceNames"),
            ("Verbs", "verbs"),
        )
        if rule.get(field)
    ]
    return "{" + ", ".join(parts) + "}"
