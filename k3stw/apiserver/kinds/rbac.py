"""
Roles, ClusterRoles, RoleBindings and ClusterRoleBindings
(rbac.authorization.k8s.io/v1): the Tables kubectl prints, the defaults and
checks of a binding's ``roleRef`` and subjects (immutable ``roleRef``), and
escalation prevention: who writes a role must hold what it grants (or have
``escalate`` on it), who writes a binding must hold what its role grants (or
have ``bind`` on that role), as kube-apiserver's RBAC storage checks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

from k3stw.apiserver.catalogue.rules import LazyRules
from k3stw.apiserver.fielderrors import go_value, invalid, not_supported, required
from k3stw.apiserver.objectmeta import path_segment_name
from k3stw.apiserver.rbacrules import (
    FULL_AUTHORITY,
    Rule,
    compact,
    compact_string,
    go_strings,
    uncovered,
)
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.strategy import Cause, Strategy
from k3stw.apiserver.tables import (
    AGE_COLUMN,
    NAME_COLUMN,
    Column,
    Printer,
    age_cell,
    name_cell,
)
from k3stw.machinery.identity import MASTERS, User
from k3stw.machinery.objects import Object, get_path, name_of

GROUP = "rbac.authorization.k8s.io"
SUBJECT_KINDS = ("ServiceAccount", "User", "Group")


def subject_strings(binding: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """A binding's users, groups and service accounts (``namespace/name``), as printed."""
    users, groups, accounts = [], [], []
    for subject in binding.get("subjects") or ():
        kind, name = subject.get("kind"), str(subject.get("name", ""))
        if kind == "User":
            users.append(name)
        elif kind == "Group":
            groups.append(name)
        elif kind == "ServiceAccount":
            accounts.append(f"{subject.get('namespace', '')}/{name}")
    return users, groups, accounts


def _binding_printer(role_description: str) -> Printer:
    return Printer(
        (
            NAME_COLUMN,
            Column("Role", description=role_description),
            AGE_COLUMN,
            Column("Users", description="Users in the roleBinding", priority=1),
            Column("Groups", description="Groups in the roleBinding", priority=1),
            Column("ServiceAccounts", description="ServiceAccounts in the roleBinding", priority=1),
        ),
        lambda obj, now: [
            name_cell(obj),
            f"{get_path(obj, 'roleRef', 'kind') or ''}/{get_path(obj, 'roleRef', 'name') or ''}",
            age_cell(obj, now),
            *(", ".join(names) for names in subject_strings(obj)),
        ],
    )


def _default_binding(binding: Object) -> None:
    """kube's defaults: the RBAC group for a roleRef, users and groups."""
    role_ref = binding.get("roleRef")
    if isinstance(role_ref, dict) and not role_ref.get("apiGroup"):
        role_ref["apiGroup"] = GROUP
    for subject in binding.get("subjects") or ():
        kind = subject.get("kind") if isinstance(subject, dict) else None
        if kind in ("User", "Group") and not subject.get("apiGroup"):
            subject["apiGroup"] = GROUP


def _validate_role(role: Object) -> list[Cause]:
    """Each rule names its verbs, and applies to resources or to URLs, never both."""
    causes: list[Cause] = []
    for index, rule in enumerate(role.get("rules") or []):
        if isinstance(rule, Mapping) and rule.get("verbs") == []:
            detail = "verbs must contain at least one value"
            causes.append(required(f"rules[{index}].verbs", detail))
        if isinstance(rule, Mapping) and rule.get("nonResourceURLs") and rule.get("resources"):
            causes.append(
                invalid(
                    f"rules[{index}].nonResourceURLs",
                    rule["nonResourceURLs"],
                    "rules cannot apply to both regular resources and non-resource URLs",
                )
            )
    return causes


def _validate_binding(kinds: Sequence[str], namespaced: bool, binding: Object) -> list[Cause]:
    """``ValidateRoleBinding``: a roleRef kube can resolve, subjects it can match."""
    causes: list[Cause] = []
    role_ref = binding.get("roleRef") or {}
    if role_ref.get("apiGroup") != GROUP:
        causes.append(not_supported("roleRef.apiGroup", role_ref.get("apiGroup", ""), [GROUP]))
    if role_ref.get("kind") not in kinds:
        causes.append(not_supported("roleRef.kind", role_ref.get("kind", ""), kinds))
    if not role_ref.get("name"):
        causes.append(required("roleRef.name"))
    for index, subject in enumerate(binding.get("subjects") or ()):
        path = f"subjects[{index}]"
        if not subject.get("name"):
            causes.append(required(f"{path}.name"))
        kind, group = subject.get("kind"), subject.get("apiGroup", "")
        if kind == "ServiceAccount":
            if group:
                causes.append(not_supported(f"{path}.apiGroup", group, [""]))
            if not namespaced and not subject.get("namespace"):
                causes.append(required(f"{path}.namespace"))
        elif kind in ("User", "Group"):
            if group != GROUP:
                causes.append(not_supported(f"{path}.apiGroup", group, [GROUP]))
        else:
            causes.append(not_supported(f"{path}.kind", kind or "", SUBJECT_KINDS))
    return causes


def _role_ref_unchanged(new: Object, old: Object) -> list[Cause]:
    """A binding's roleRef never changes: a new binding is made instead."""
    if new.get("roleRef") == old.get("roleRef"):
        return []
    given = new.get("roleRef")
    ref: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    fields = ", ".join(
        f"{name}:{go_value(str(ref.get(key) or ''))}"
        for name, key in (("APIGroup", "apiGroup"), ("Kind", "kind"), ("Name", "name"))
    )
    return [("roleRef", f"Invalid value: rbac.RoleRef{{{fields}}}: cannot change roleRef")]


ROLE_REF_DESCRIPTION = (
    "RoleRef can reference a Role in the current namespace or a ClusterRole in the global "
    "namespace. If the RoleRef cannot be resolved, the Authorizer must return an error."
)
CLUSTER_ROLE_REF_DESCRIPTION = (
    "RoleRef can only reference a ClusterRole in the global namespace. If the RoleRef cannot "
    "be resolved, the Authorizer must return an error."
)


def _resource(kind: str, plural: str, namespaced: bool, strategy: Strategy) -> ResourceType:
    # RBAC names may hold colons (system:node): any URL path segment will do.
    strategy = replace(strategy, names=path_segment_name)
    return ResourceType(GROUP, "v1", kind, plural, kind.lower(), namespaced, strategy=strategy)


ROLES = _resource(
    "Role",
    "roles",
    True,
    Strategy(merge_rules=LazyRules(GROUP, "v1", "Role"), validate=_validate_role),
)
CLUSTER_ROLES = _resource(
    "ClusterRole",
    "clusterroles",
    False,
    Strategy(merge_rules=LazyRules(GROUP, "v1", "ClusterRole"), validate=_validate_role),
)
ROLE_BINDINGS = _resource(
    "RoleBinding",
    "rolebindings",
    True,
    Strategy(
        printer=_binding_printer(ROLE_REF_DESCRIPTION),
        merge_rules=LazyRules(GROUP, "v1", "RoleBinding"),
        default=_default_binding,
        validate=partial(_validate_binding, ("Role", "ClusterRole"), True),
        validate_update=_role_ref_unchanged,
    ),
)
CLUSTER_ROLE_BINDINGS = _resource(
    "ClusterRoleBinding",
    "clusterrolebindings",
    False,
    Strategy(
        printer=_binding_printer(CLUSTER_ROLE_REF_DESCRIPTION),
        merge_rules=LazyRules(GROUP, "v1", "ClusterRoleBinding"),
        default=_default_binding,
        validate=partial(_validate_binding, ("ClusterRole",), False),
        validate_update=_role_ref_unchanged,
    ),
)
RESOURCES = (ROLES, CLUSTER_ROLES, ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS)


# Escalation prevention


class RuleResolver(Protocol):
    """What the escalation checks ask of the authorizer (L{k3stw.apiserver.rbac.RBAC})."""

    def may(self, user: User, verb: str, resource: str, namespace: str, name: str) -> bool:
        "Whether RBAC lets C{user} C{verb} a resource of this group (``escalate``, ``bind``)."

    def rules_for(self, user: User, namespace: str) -> tuple[list[Rule], list[str]]:
        "The rules C{user} holds in C{namespace} ( for cluster-wide), and resolution errors."

    def role_rules(self, role_ref: Mapping[str, Any], namespace: str) -> list[Mapping[str, Any]]:
        "The rules a roleRef names (raising a 403 L{StatusError} if it names nothing)."


#: Checks a write of an RBAC object by C{user} at C{namespace}: the new object and the
#: stored one (None on create); raises a 403 L{StatusError} to refuse.
Admission = Callable[[User, str | None, Object, Object | None], None]


def _forbidden(resource: ResourceType, name: str, message: str) -> StatusError:
    return StatusError(
        403,
        f'{resource.plural}.{GROUP} "{name}" is forbidden: {message}',
        {"name": name, "group": GROUP, "kind": resource.plural},
    )


def _gc_only(new: Object, old: Object | None) -> bool:
    """Whether an update changes only what the garbage collector needs (owners, finalizers)."""
    if old is None:
        return False
    ignored = ("ownerReferences", "finalizers", "managedFields", "resourceVersion")

    def rest(obj: Object) -> Object:
        meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in ignored}
        return {**obj, "metadata": meta}

    return rest(new) == rest(old)


def confirm_no_escalation(
    resolver: RuleResolver,
    resource: ResourceType,
    user: User,
    namespace: str,
    name: str,
    rules: Sequence[Mapping[str, Any]],
    message: str | None = None,
) -> None:
    """Refuse (403) unless C{user} already holds every permission of C{rules}."""
    owned, errors = resolver.rules_for(user, namespace)
    missing = uncovered(owned, rules)
    if not missing:
        return
    if message is None:
        held = "\n".join(sorted({compact_string(rule) for rule in compact(missing)}))
        message = (
            f'user "{user.name}" (groups={go_strings(user.groups)}) is attempting to grant '
            f"RBAC permissions not currently held:\n{held}"
        )
        if errors:
            message += f"; resolution errors: [{' '.join(errors)}]"
    raise _forbidden(resource, name, message)


def _admit(
    resolver: RuleResolver,
    resource: ResourceType,
    user: User,
    namespace: str | None,
    new: Object,
    old: Object | None,
) -> None:
    """kube's RBAC storage: system:masters and garbage collection pass; the rest is checked."""
    if MASTERS in user.groups or _gc_only(new, old):
        return
    if resource in (ROLES, CLUSTER_ROLES):
        _admit_role(resolver, resource, user, namespace or "", new, old)
    else:
        _admit_binding(resolver, resource, user, namespace or "", new)


def _admit_role(
    resolver: RuleResolver,
    resource: ResourceType,
    user: User,
    namespace: str,
    new: Object,
    old: Object | None,
) -> None:
    name = name_of(new)
    # A create's URL names no object: ``escalate`` limited to names never covers one.
    if resolver.may(user, "escalate", resource.plural, namespace, name if old else ""):
        return
    confirm_no_escalation(resolver, resource, user, namespace, name, new.get("rules") or [])
    aggregated = new.get("aggregationRule") is not None or (
        old is not None and old.get("aggregationRule") is not None
    )
    if resource is CLUSTER_ROLES and aggregated:
        message = "must have cluster-admin privileges to use the aggregationRule"
        confirm_no_escalation(resolver, resource, user, "", name, FULL_AUTHORITY, message)


def _admit_binding(
    resolver: RuleResolver, resource: ResourceType, user: User, namespace: str, new: Object
) -> None:
    ref = new.get("roleRef") or {}
    target = {"ClusterRole": "clusterroles", "Role": "roles"}.get(ref.get("kind", ""))
    if target and resolver.may(user, "bind", target, namespace, str(ref.get("name", ""))):
        return
    rules = resolver.role_rules(ref, namespace)
    confirm_no_escalation(resolver, resource, user, namespace, name_of(new), rules)


def admission(resolver: RuleResolver) -> dict[tuple[str, str], Admission]:
    """The escalation checks of the four kinds, by (group, plural)."""
    return {(GROUP, kind.plural): partial(_admit, resolver, kind) for kind in RESOURCES}
