"""
kube-controller-manager's resourcequota controller: a ResourceQuota's
``status.hard`` is its ``spec.hard``, and its ``status.used`` what its
namespace holds of each hard resource within the quota's scopes, counted as
L{k3stw.apiserver.quota} counts.

A quota is recounted when it is created or its spec changes, when an object
it counts goes away or stops counting (a pod finishing), and every
``--resource-quota-sync-period`` (5 minutes); any other kind a quota counts
(``count/deployments.apps``) is followed from its first count on.  Creates
need no recount: the ResourceQuota admission plugin charged them before they
were stored.  The count is written only over the quota it was made from (a
conflict, say an admission charge meanwhile, counts again).
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from functools import partial
from typing import Any

from k3stw.apiserver import quota
from k3stw.apiserver.informers import Selection, ServerInformers
from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.apiserver.status import conflict
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.machinery.cache import NAMESPACE
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import EventHandler, Informer, Retention
from k3stw.machinery.objects import (
    Object,
    get_path,
    metadata,
    metadata_only,
    namespace_of,
    object_key,
    split_key,
)
from k3stw.machinery.quantity import Quantity

#: kube-controller-manager's ``--resource-quota-sync-period``.
RESYNC = 300.0
#: What is counted of configmaps and secrets: that they are there.
_COUNTED = Selection("counted", retention=Retention(trim=metadata_only))
_ZERO = Quantity(Fraction(0), "decimal")


def _named_resource(name: str) -> tuple[str, str] | None:
    """The (group, plural) a ``count/<plural>[.<group>]`` name counts."""
    if not name.startswith("count/"):
        return None
    plural, _, group = name[len("count/") :].partition(".")
    return group, plural


class ResourceQuotaController(Controller):
    """Keeps every ResourceQuota's status the count of what its namespace holds."""

    label = "resourcequota controller"
    expected = TRANSIENT

    def __init__(self, informers: ServerInformers, store: ObjectStore, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self.shared = informers
        #: The informers of other kinds that quotas count, once one does.
        self.followed: dict[ResourceType, Informer] = {}
        self.quota_resource = registry.require("", "v1", "resourcequotas")
        self.quotas = informers.for_resource(self.quota_resource)
        #: The core kinds counted from informers (other kinds are listed when a quota counts them).
        self.counted: dict[str, Informer] = {}
        for plural in (*quota.COUNTED_BY_NAME, "pods"):
            resource = registry.require("", "v1", plural)
            trimmed = plural in ("configmaps", "secrets")
            self.counted[plural] = informers.for_resource(
                resource, *((_COUNTED,) if trimmed else ())
            )
        super().__init__(store.clock, [self.quotas, *self.counted.values()])
        self.add_handler(
            self.quotas, EventHandler(on_add=self._quota_added, on_update=self._quota_updated)
        )
        for plural, informer in self.counted.items():
            self.add_handler(
                informer,
                EventHandler(
                    on_update=partial(self._object_updated, plural),
                    on_delete=self._recount_namespace,
                ),
            )

    def _quota_added(self, held: Object) -> None:
        self.enqueue(object_key(held))

    def _quota_updated(self, old: Object, new: Object) -> None:
        hard = get_path(new, "spec", "hard")
        if old.get("spec") != new.get("spec") or get_path(new, "status", "hard") != hard:
            self.enqueue(object_key(new))

    def _object_updated(self, plural: str, old: Object, new: Object) -> None:
        """Replenishment: an object whose count went down (a pod that finished) frees quota."""
        now = self.clock.seconds()
        if quota.usage("", plural, old, now) != quota.usage("", plural, new, now):
            self._recount_namespace(new)

    def _recount_namespace(self, obj: Object) -> None:
        for held in self.quotas.cache.by_index(NAMESPACE, namespace_of(obj)):
            self.enqueue(object_key(held))

    async def sync(self, key: str) -> None:
        held = self.quotas.get(key)
        if held is None:
            return
        namespace, name = split_key(key)
        hard = dict(get_path(held, "spec", "hard") or {})
        used = await self._used(namespace or "", held, hard)
        status = {"hard": hard, "used": used}
        if held.get("status") != status:
            version = metadata(held).get("resourceVersion")

            def recounted(current: Object) -> Object:
                if metadata(current).get("resourceVersion") != version:
                    raise conflict(self.quota_resource.plural, "", name)
                current["status"] = status
                return current

            await self.store.guaranteed_update(
                self.quota_resource, namespace, name, recounted, subresource="status"
            )
        self.queue.add_after(key, RESYNC)

    async def _objects(self, resource: tuple[str, str], namespace: str) -> list[Object]:
        group, plural = resource
        informer = None if group else self.counted.get(plural)
        if informer is None:
            served = self._served(group, plural)
            if served is None:
                return []
            informer = self._follow(served)
            if not informer.synced:
                return (await self.store.list(served, namespace)).items
        return informer.cache.by_index(NAMESPACE, namespace)

    def _follow(self, resource: ResourceType) -> Informer:
        """
        An informer of a kind a quota counts (kube's quota monitor), from the
        first count on: its deletions give quota back.
        """
        informer = self.followed.get(resource)
        if informer is None:
            informer = self.followed[resource] = self.shared.for_resource(resource, _COUNTED)
            self.add_handler(informer, EventHandler(on_delete=self._recount_namespace))
        return informer

    def _served(self, group: str, plural: str) -> ResourceType | None:
        for resource in self.registry:
            if resource.group == group and resource.plural == plural and resource.namespaced:
                return resource
        return None

    async def _used(
        self, namespace: str, held: Mapping[str, Any], hard: Mapping[str, Any]
    ) -> dict[str, str]:
        """kube's CalculateUsage: each hard resource's total over the objects in scope."""
        kinds: dict[tuple[str, str], list[str]] = {}
        for name in hard:
            found = _named_resource(name)
            if found is None:
                found = next(
                    (("", plural) for plural in self.counted if quota.tracks("", plural, name)),
                    None,
                )
            if found is not None:
                kinds.setdefault(found, []).append(name)
        total: quota.Usage = dict.fromkeys(hard, _ZERO)
        now = self.clock.seconds()
        for (group, plural), names in kinds.items():
            for obj in await self._objects((group, plural), namespace):
                if quota.in_scope(held, group, plural, obj):
                    counted = quota.usage(group, plural, obj, now)
                    quota.add(total, {n: counted[n] for n in names if n in counted})
        return quota.printed(total)
