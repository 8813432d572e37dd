"""
The resource types the API serves: the built-in kinds (declared in
L{k3stw.apiserver.kinds}), plus those that CustomResourceDefinitions add
while the server runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from k3stw.apiserver.strategy import DEFAULT_STRATEGY, Strategy
from k3stw.machinery.objects import Object

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    """
    One resource of one group version, as discovery describes it.

    :ivar subresources: the subresources served (``status``, ``log``, ...).
    :ivar crd: for a custom resource, the name of the CRD that defines it.
    :ivar strategy: the rules of its kind (defaults, validation, merging,
        printing, field selectors); its kind's module declares it.
    :ivar conversion: for a version served as another resource's objects
        (``autoscaling/v1`` HorizontalPodAutoscalers are stored as ``v2``),
        how its objects are stored and read.
    """

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    crd: str | None = None
    strategy: Strategy = field(default=DEFAULT_STRATEGY, compare=False, repr=False)
    conversion: Conversion | None = field(default=None, compare=False, repr=False)

    @property
    def group_version(self) -> str:
        """``v1`` for the core group, ``apps/v1`` otherwise: the apiVersion of its objects."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def has_status(self) -> bool:
        """Whether status is written only through the ``status`` subresource."""
        return "status" in self.subresources

    @property
    def url_prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def storage_prefix(self, namespace: str | None = None) -> str:
        """
        The datastore prefix of this resource's objects (of one namespace, if given),
        ending in ``/``: ``/registry/<resource>/[<namespace>/]``.  Custom resources
        carry their group, as kube-apiserver stores them, so no two resources share keys.
        """
        resource = f"{self.group}/{self.plural}" if self.crd else self.plural
        base = f"/registry/{resource}/"
        return f"{base}{namespace}/" if namespace else base

    def storage_key(self, namespace: str | None, name: str) -> str:
        return self.storage_prefix(namespace if self.namespaced else None) + name


@dataclass(frozen=True)
class Conversion:
    """
    How a resource's objects are kept as another's, as kube-apiserver keeps
    one storage version of a kind and converts on the way in and out.

    :ivar stored: the resource whose objects are stored, with its rules.
    :ivar to_stored: an object of the served version, as C{stored}'s.
    :ivar from_stored: a stored object, as one of the served version.
    """

    stored: ResourceType
    to_stored: Callable[[Object], Object]
    from_stored: Callable[[Object], Object]


#: Groups in the order discovery lists them (kube-apiserver's priority order).
GROUP_ORDER = ("", "apps", "coordination.k8s.io", "discovery.k8s.io", "apiextensions.k8s.io")


@dataclass
class Registry:
    """
    Every resource type served now.  Listeners hear of each change, so that
    discovery and OpenAPI documents follow CRDs as they come and go.
    """

    _types: dict[tuple[str, str, str], ResourceType] = field(default_factory=dict)
    _listeners: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def serving(cls, resources: Iterable[ResourceType]) -> Registry:
        """A registry that serves C{resources} (see L{k3stw.apiserver.kinds.built_in_registry})."""
        registry = cls()
        for resource in resources:
            registry._types[(resource.group, resource.version, resource.plural)] = resource
        return registry

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def require(self, group: str, version: str, plural: str) -> ResourceType:
        """A resource that must be served (a built-in one)."""
        found = self.lookup(group, version, plural)
        if found is None:
            raise KeyError(f"{plural}.{group or 'core'}/{version} is not served")
        return found

    def by_kind(self, group: str, kind: str) -> ResourceType | None:
        """The resource of a kind in a group (its first served version)."""
        for resource in self._types.values():
            if resource.group == group and resource.kind == kind:
                return resource
        return None

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(sorted(self._types.values(), key=_discovery_order))

    def groups(self) -> dict[str, list[str]]:
        """Each group with its versions, in discovery order."""
        found: dict[str, list[str]] = {}
        for resource in self:
            versions = found.setdefault(resource.group, [])
            if resource.version not in versions:
                versions.append(resource.version)
        return found

    def replace_crd(self, crd_name: str, resources: list[ResourceType]) -> None:
        """Serve exactly C{resources} for CRD C{crd_name} (none: it was deleted)."""
        stale = [key for key, value in self._types.items() if value.crd == crd_name]
        for key in stale:
            del self._types[key]
        for resource in resources:
            self._types[(resource.group, resource.version, resource.plural)] = resource
        for listener in list(self._listeners):
            listener()

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)


def _discovery_order(resource: ResourceType) -> tuple[int, str, str, str]:
    rank = GROUP_ORDER.index(resource.group) if resource.group in GROUP_ORDER else len(GROUP_ORDER)
    return (rank, resource.group, resource.version, resource.plural)
