"""
The bootstrap RBAC policy: the roles and bindings kube-apiserver creates at
every start (``cluster-admin``, ``admin``, ``edit``, ``view``, the ``system:``
roles), and those k3s adds, reconciled as kube's ``rbac/bootstrap-roles``
hook reconciles them: a missing object is created; one annotated
``rbac.authorization.kubernetes.io/autoupdate: "true"`` gets back what it
lacks (rules, aggregation selectors, subjects, labels, annotations), never
losing what a user added; one annotated ``"false"`` is left alone.

The policy is generated data (``tools/generate_rbac_policy.py``), read only
while reconciling.
"""

from __future__ import annotations

import copy
import gzip
import importlib.resources
import json

from k3stw.apiserver.kinds import rbac as kinds
from k3stw.apiserver.rbacrules import Rule, uncovered
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.logs import Logger
from k3stw.machinery.objects import Object, name_of

AUTOUPDATE = "rbac.authorization.kubernetes.io/autoupdate"
RESOURCES = {resource.kind: resource for resource in kinds.RESOURCES}
#: What the store records the policy's writes as (kube-apiserver's own manager).
MANAGER = "kube-apiserver"

_log = Logger(namespace="k3stw.apiserver.rbacpolicy")


def policy() -> list[Object]:
    """The bootstrap objects, in the order they are reconciled (roles before bindings)."""
    data = importlib.resources.files(__package__).joinpath("rbacpolicy.json.gz").read_bytes()
    objects: list[Object] = json.loads(gzip.decompress(data))["objects"]
    order = ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding")
    return sorted(objects, key=lambda obj: order.index(obj["kind"]))


def reconciled(existing: Object, expected: Object) -> Object | None:
    """
    C{existing} with what C{expected} has and it lacks (None: nothing lacks),
    as kube's ``computeReconciledRole`` and its binding twin, never removing.
    """
    result = copy.deepcopy(existing)
    meta, wanted = result.setdefault("metadata", {}), expected["metadata"]
    for field in ("labels", "annotations"):
        # The stored values win: a user's autoupdate "false" stays.
        merged = {**wanted.get(field, {}), **(meta.get(field) or {})}
        if merged:
            meta[field] = merged
    if "roleRef" in expected:
        subjects = list(result.get("subjects") or [])
        subjects += [s for s in expected.get("subjects") or () if s not in subjects]
        if subjects:
            result["subjects"] = subjects
    else:
        owned = [Rule.of(rule) for rule in result.get("rules") or ()]
        missing = uncovered(owned, expected.get("rules") or ())
        if missing:
            result["rules"] = list(result.get("rules") or []) + missing
        selectors = (expected.get("aggregationRule") or {}).get("clusterRoleSelectors") or []
        if selectors:
            rule = result.setdefault("aggregationRule", {})
            held = rule.setdefault("clusterRoleSelectors", [])
            held += [s for s in selectors if s not in held]
    return None if result == existing else result


async def bootstrap_policy(store: ObjectStore) -> None:
    """Create or reconcile every bootstrap role and binding."""
    for expected in policy():
        resource = RESOURCES[expected["kind"]]
        await _reconcile(store, resource, expected)


async def _reconcile(store: ObjectStore, resource: ResourceType, expected: Object) -> None:
    namespace = expected["metadata"].get("namespace")
    name = name_of(expected)
    try:
        existing = await store.get(resource, namespace, name)
    except StatusError as e:
        if e.code != 404:
            raise
        try:
            await store.create(resource, namespace, expected, MANAGER)
        except StatusError as e:
            if e.code != 409:  # another server made it meanwhile
                raise
        return
    annotations = existing["metadata"].get("annotations") or {}
    if annotations.get(AUTOUPDATE) == "false":
        return
    ref = expected.get("roleRef")
    if ref is not None and existing.get("roleRef") != ref:
        # roleRef never changes: kube deletes the binding and makes it again.
        _log.info("Recreating {kind} {name} for its roleRef", kind=resource.kind, name=name)
        await store.delete(resource, namespace, name)
        await store.create(resource, namespace, expected, MANAGER)
        return
    if reconciled(existing, expected) is None:
        return

    def mutate(current: Object) -> Object:
        return reconciled(current, expected) or current

    await store.guaranteed_update(resource, namespace, name, mutate, MANAGER)
