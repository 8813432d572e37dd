"""
kube-apiserver's Priority admission plugin and the built-in PriorityClasses:
a new pod's ``spec.priority`` (and ``preemptionPolicy``) come from the
PriorityClass it names, or from the ``globalDefault`` class when it names
none; a class that does not exist, or a priority that disagrees with its
class, is refused in kube's words.
"""

from __future__ import annotations

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds.catalogued_validation import SYSTEM_PRIORITIES
from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.apiserver.status import StatusError, forbidden
from k3stw.apiserver.storage import ObjectStore
from k3stw.machinery.objects import Object, get_path, metadata

#: The PriorityClasses kube-apiserver creates at start, with their descriptions.
SYSTEM_CLASSES = {
    "system-node-critical": "Used for system critical pods that must not be moved from their "
    "current node.",
    "system-cluster-critical": "Used for system critical pods that must run in the cluster, but "
    "can be moved to another node if necessary.",
}
PREEMPT_LOWER = "PreemptLowerPriority"


def classes_of(registry: Registry) -> ResourceType:
    return registry.require("scheduling.k8s.io", "v1", "priorityclasses")


async def create_system_classes(store: ObjectStore, registry: Registry) -> None:
    """The built-in classes, where missing."""
    for name, description in SYSTEM_CLASSES.items():
        value = SYSTEM_PRIORITIES[name]
        body = {"metadata": {"name": name}, "value": value, "description": description}
        try:
            await store.create(classes_of(registry), None, body)
        except StatusError as e:
            if e.code != 409:
                raise


def _forbidden(pod: Object, message: str) -> StatusError:
    return forbidden("pods", "", str(metadata(pod).get("name") or ""), message)


class PriorityAdmission:
    """The plugin, on pod creation, over the shared informer of PriorityClasses."""

    def __init__(self, informers: ServerInformers, registry: Registry) -> None:
        self.classes = classes_of(registry)
        self.informer = informers.for_resource(self.classes)

    async def admit(self, store: ObjectStore, pod: Object) -> None:
        spec = pod.get("spec")
        if not isinstance(spec, dict):
            return
        name = spec.get("priorityClassName")
        if not name:
            found = await self._default(store)
            if found is not None:
                spec["priorityClassName"] = metadata(found)["name"]
        else:
            found = await self._named(store, str(name))
            if found is None:
                raise _forbidden(pod, f"no PriorityClass with name {name} was found")
        priority = int(found.get("value") or 0) if found else 0
        policy = str((found or {}).get("preemptionPolicy") or PREEMPT_LOWER)
        computed = (
            ("priority", "the integer value of priority", priority),
            ("preemptionPolicy", "the string value of PreemptionPolicy", policy),
        )
        for field, what, value in computed:
            given = spec.get(field)
            if given is not None and given != value:
                raise _forbidden(
                    pod,
                    f"{what} ({given}) must not be provided in pod spec; priority admission "
                    f"controller computed {value} from the given PriorityClass name",
                )
            spec[field] = value

    async def _named(self, store: ObjectStore, name: str) -> Object | None:
        # A class created a moment ago may not have reached the informer yet: ask the store.
        found = self.informer.get(name) if self.informer.synced else None
        if found is not None:
            return found
        try:
            return await store.get(self.classes, None, name)
        except StatusError as e:
            if e.code != 404:
                raise
            return None

    async def _default(self, store: ObjectStore) -> Object | None:
        """The ``globalDefault`` class (of several, the highest value), if any."""
        if self.informer.synced:
            listed = self.informer.cache.list()
        else:
            listed = (await store.list(self.classes, None)).items
        defaults = [c for c in listed if get_path(c, "globalDefault") is True]
        return max(defaults, key=lambda c: int(c.get("value") or 0), default=None)
