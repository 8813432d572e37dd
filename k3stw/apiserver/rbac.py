"""
The RBAC authorizer: Roles, ClusterRoles and their bindings, read from the
server's shared informers (never the datastore, never blocking the reactor).

A user's grants (the rules every binding naming them brings, by namespace,
each with the words that say where it comes from) are worked out once and
cached by user and groups; so is each decision.  Any change to the four kinds
empties the cache: RBAC objects change seldom, requests come all the time.
Bindings are indexed by the subjects they name (a ServiceAccount subject by
its user name), so working out a user's grants reads only their bindings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from k3stw.apiserver.auth import Attributes, Decision
from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import rbac as kinds
from k3stw.apiserver.rbacrules import Rule
from k3stw.apiserver.status import StatusError
from k3stw.machinery.cache import Indexer
from k3stw.machinery.identity import User
from k3stw.machinery.informer import each_change
from k3stw.machinery.labels import aggregate
from k3stw.machinery.objects import Object, join_key, name_of, namespace_of

SUBJECT = "subject"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
#: Users whose grants are kept; past it the cache starts again (a bound on memory).
MAX_USERS = 4096
#: Decisions kept per user.
MAX_DECISIONS = 1024


def service_account_user(namespace: str, name: str) -> str:
    """A ServiceAccount's user name: ``system:serviceaccount:<namespace>:<name>``."""
    return f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"


def _subject_key(subject: Mapping[str, Any], binding_namespace: str) -> str | None:
    kind, name = subject.get("kind"), str(subject.get("name", ""))
    if kind == "User":
        return "user:" + name
    if kind == "Group":
        return "group:" + name
    if kind == "ServiceAccount":
        # A RoleBinding's ServiceAccount without a namespace is of the binding's namespace.
        namespace = subject.get("namespace") or binding_namespace
        return "user:" + service_account_user(namespace, name) if namespace else None
    return None


def subject_keys(binding: Object) -> list[str]:
    """The index values of a binding: a key per subject it names."""
    namespace = namespace_of(binding)
    keys = (_subject_key(s, namespace) for s in binding.get("subjects") or ())
    return [key for key in keys if key is not None]


def user_keys(user: User) -> list[str]:
    return ["user:" + user.name, *("group:" + group for group in user.groups)]


def describe_subject(subject: Mapping[str, Any], binding_namespace: str) -> str:
    """A subject as kube's reasons name it: ``User "bob"``, ``ServiceAccount "name/ns"``."""
    kind, name = subject.get("kind", ""), subject.get("name", "")
    if kind == "ServiceAccount":
        return f'{kind} "{name}/{subject.get("namespace") or binding_namespace}"'
    return f'{kind} "{name}"'


def not_found(kind: str, name: str) -> str:
    """How the role listers say a role is missing (singular resource, as kube's)."""
    return f'{kind.lower()}.{kinds.GROUP} "{name}" not found'


#: A granted rule and the words that say which binding grants it.
Granted = tuple[Rule, str]


@dataclass
class Grants:
    """
    What one user (name and groups) may do: rules from ClusterRoleBindings,
    from RoleBindings by namespace, the errors met resolving them, and the
    decisions made so far.
    """

    cluster: list[Granted] = field(default_factory=list)
    namespaced: dict[str, list[Granted]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    decisions: dict[Attributes, Decision] = field(default_factory=dict)

    def in_namespace(self, namespace: str) -> Iterable[Granted]:
        yield from self.cluster
        if namespace:
            yield from self.namespaced.get(namespace, ())

    def errors_in(self, namespace: str) -> list[str]:
        return self.errors.get("", []) + (self.errors.get(namespace, []) if namespace else [])


class RBAC:
    """
    kube-apiserver's RBAC authorizer over the shared informers of the four
    kinds (the informers run with the server's control plane).
    """

    def __init__(self, informers: ServerInformers) -> None:
        self.roles = informers.for_resource(kinds.ROLES)
        self.cluster_roles = informers.for_resource(kinds.CLUSTER_ROLES)
        self.role_bindings = informers.for_resource(kinds.ROLE_BINDINGS)
        self.cluster_role_bindings = informers.for_resource(kinds.CLUSTER_ROLE_BINDINGS)
        self._grants: dict[tuple[str, tuple[str, ...]], Grants] = {}
        self._compiled: dict[str, list[Rule]] = {}
        forget = each_change(self._changed)
        for informer in (self.roles, self.cluster_roles):
            informer.add_handler(forget)
        for informer in (self.role_bindings, self.cluster_role_bindings):
            informer.add_index(SUBJECT, subject_keys)
            informer.add_handler(forget)

    @property
    def synced(self) -> bool:
        """Whether every cache holds its first list (until then RBAC allows nothing)."""
        return all(
            informer.synced
            for informer in (
                self.roles,
                self.cluster_roles,
                self.role_bindings,
                self.cluster_role_bindings,
            )
        )

    def _changed(self, obj: Object) -> None:
        self._grants.clear()
        self._compiled.clear()

    # Deciding

    def decide(self, user: User, attributes: Attributes) -> Decision:
        """Allowed, with the binding that allows it, or not, with the errors met."""
        grants = self.grants(user)
        decision = grants.decisions.get(attributes)
        if decision is not None:
            return decision
        decision = self._decide(grants, attributes)
        if len(grants.decisions) >= MAX_DECISIONS:
            grants.decisions.clear()
        grants.decisions[attributes] = decision
        return decision

    def _decide(self, grants: Grants, a: Attributes) -> Decision:
        namespace = a.namespace or ""
        for rule, source in grants.in_namespace(namespace):
            if (
                rule.allows_path(a.verb, a.path)
                if a.path is not None
                else rule.allows_resource(a.verb, a.group, a.resource, a.subresource, a.name)
            ):
                return Decision(True, f"RBAC: allowed by {source}")
        errors = grants.errors_in(namespace)
        return Decision(False, f"RBAC: {aggregate(errors)}" if errors else "")

    def may(self, user: User, verb: str, resource: str, namespace: str, name: str) -> bool:
        """Whether RBAC lets C{user} C{verb} an RBAC object (``escalate``, ``bind``)."""
        attributes = Attributes(verb, kinds.GROUP, resource, namespace or None, name or None)
        return self.decide(user, attributes).allowed

    def rules_for(self, user: User, namespace: str) -> tuple[list[Rule], list[str]]:
        """The rules C{user} holds in C{namespace} ("": cluster-wide only), and errors met."""
        grants = self.grants(user)
        return [rule for rule, _ in grants.in_namespace(namespace)], grants.errors_in(namespace)

    def role_rules(self, role_ref: Mapping[str, Any], namespace: str) -> list[Mapping[str, Any]]:
        """The rules of the role a roleRef names, for a binding in C{namespace}."""
        rules = self._role(str(role_ref.get("kind", "")), str(role_ref.get("name", "")), namespace)
        if isinstance(rules, str):
            raise StatusError(403, rules)
        return [rule.raw for rule in rules]

    # Grants

    def grants(self, user: User) -> Grants:
        key = (user.name, user.groups)
        found = self._grants.get(key)
        if found is None:
            if len(self._grants) >= MAX_USERS:
                self._grants.clear()
            found = self._grants[key] = self._resolve(user)
        return found

    def _resolve(self, user: User) -> Grants:
        grants = Grants()
        keys = user_keys(user)
        for binding in self._bindings(self.cluster_role_bindings.cache, keys):
            self._grant(grants, user, binding, "")
        for binding in self._bindings(self.role_bindings.cache, keys):
            self._grant(grants, user, binding, namespace_of(binding))
        return grants

    @staticmethod
    def _bindings(cache: Indexer, keys: list[str]) -> list[Object]:
        found: set[str] = set()
        for key in keys:
            found |= cache.index_keys(SUBJECT, key)
        return [obj for key in sorted(found) if (obj := cache.get(key)) is not None]

    def _grant(self, grants: Grants, user: User, binding: Object, namespace: str) -> None:
        subject = next(
            (
                s
                for s in binding.get("subjects") or ()
                if _subject_key(s, namespace) in user_keys(user)
            ),
            None,
        )
        if subject is None:
            return
        ref = binding.get("roleRef") or {}
        kind, role = str(ref.get("kind", "")), str(ref.get("name", ""))
        rules = self._role(kind, role, namespace)
        if isinstance(rules, str):
            grants.errors.setdefault(namespace, []).append(rules)
            return
        if namespace:
            source = (
                f'RoleBinding "{name_of(binding)}/{namespace}" of {kind} "{role}" '
                f"to {describe_subject(subject, namespace)}"
            )
            granted = grants.namespaced.setdefault(namespace, [])
        else:
            source = (
                f'ClusterRoleBinding "{name_of(binding)}" of {kind} "{role}" '
                f"to {describe_subject(subject, '')}"
            )
            granted = grants.cluster
        granted += [(rule, source) for rule in rules]

    def _role(self, kind: str, name: str, namespace: str) -> list[Rule] | str:
        """A role's compiled rules, or why there are none (kube's words)."""
        if kind == "ClusterRole":
            key, informer = name, self.cluster_roles
        elif kind == "Role" and namespace:
            key, informer = join_key(namespace, name), self.roles
        else:
            return f"unsupported role reference kind: {kind!r}"
        compiled = self._compiled.get(kind + "/" + key)
        if compiled is None:
            role = informer.get(key)
            if role is None:
                return not_found(kind, name)
            compiled = [Rule.of(rule) for rule in role.get("rules") or () if isinstance(rule, dict)]
            self._compiled[kind + "/" + key] = compiled
        return compiled
