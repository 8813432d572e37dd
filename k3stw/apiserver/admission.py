"""
kube-apiserver's admission plugins that read other objects, run by the
object store on every create (a controller's as much as a client's):

- LimitRanger: a new pod's containers get their namespace's LimitRange
  defaults (``kubernetes.io/limit-ranger`` says which), then each Container
  and Pod limit's min, max and maxLimitRequestRatio must hold, as must a
  PersistentVolumeClaim limit's min and max on a claim's storage request;
- ResourceQuota: a create that would take a namespace's quota past its hard
  limits is refused; one that fits is charged to the quota's ``status.used``
  first, by a conflict-checked write, so that two creates can never both take
  the last of it (the resourcequota controller later recounts from what is
  stored);
- Priority: a new pod's priority from its PriorityClass (L{k3stw.apiserver.priority});
- DefaultStorageClass: a new claim that names no class (not even "") gets
  the default StorageClass (``storageclass.kubernetes.io/is-default-class``),
  the newest if there are several;
- DefaultIngressClass: likewise a new Ingress naming no class (neither
  ``spec.ingressClassName`` nor the ``kubernetes.io/ingress.class``
  annotation) gets the default IngressClass
  (``ingressclass.kubernetes.io/is-default-class``).

The plugins that need nothing but the pod (ServiceAccount,
DefaultTolerationSeconds) are the pod kind's own, in its prepare_create.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from functools import partial
from typing import TYPE_CHECKING, Any

from k3stw.apiserver import quota
from k3stw.apiserver.defaulting import child, each
from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import pods
from k3stw.apiserver.kinds.catalogued_printers import is_default_class
from k3stw.apiserver.priority import PriorityAdmission
from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.apiserver.status import StatusError, forbidden
from k3stw.machinery.cache import NAMESPACE
from k3stw.machinery.informer import Informer
from k3stw.machinery.labels import aggregate
from k3stw.machinery.objects import Object, get_path, name_of, namespace_of
from k3stw.machinery.quantity import Quantity, canonical

if TYPE_CHECKING:
    from k3stw.apiserver.storage import ObjectStore

LIMIT_RANGER_ANNOTATION = "kubernetes.io/limit-ranger"


def _is_pods(resource: ResourceType) -> bool:
    return resource.group == "" and resource.plural == "pods"


#: The claim's class before ``spec.storageClassName`` (the admission leaves such claims be).
_BETA_CLASS = "volume.beta.kubernetes.io/storage-class"


def _is_claims(resource: ResourceType) -> bool:
    return resource.group == "" and resource.plural == "persistentvolumeclaims"


def _is_ingresses(resource: ResourceType) -> bool:
    return resource.group == "networking.k8s.io" and resource.plural == "ingresses"


_INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"


def _is_default_ingress_class(ingress_class: Mapping[str, Any]) -> bool:
    annotations = get_path(ingress_class, "metadata", "annotations") or {}
    return bool(annotations.get("ingressclass.kubernetes.io/is-default-class") == "true")


def _default_container(
    container: Object, limits: Mapping[str, Any], requests: Mapping[str, Any], prefix: str
) -> list[str]:
    """kube's mergeContainerResources: what a container lacks of the defaults, and saying so."""
    said: dict[str, str] = {}
    resources = child(container, "resources")
    assert resources is not None
    for kind, defaults, word in (("limits", limits, "limit"), ("requests", requests, "request")):
        held = resources.get(kind)
        held = dict(held) if isinstance(held, dict) else {}
        added = sorted(name for name in defaults if name not in held)
        for name in added:
            amount = quota.quantity(defaults[name])
            held[name] = canonical(amount) if amount is not None else defaults[name]
        if held:
            resources[kind] = held
        if added:
            said[word] = f"{', '.join(added)} {word} for {prefix} {container.get('name', '')}"
    # kube says the requests it set before the limits.
    return [said[word] for word in ("request", "limit") if word in said]


def default_pod_resources(pod: Object, limit_ranges: Iterable[Mapping[str, Any]]) -> None:
    """LimitRanger's mutation: each Container limit's defaults, and the annotation naming them."""
    for limit_range in limit_ranges:
        limits: dict[str, Any] = {}
        requests: dict[str, Any] = {}
        for item in each(limit_range, "spec.limits[]"):
            if item.get("type") == "Container":
                limits.update(item.get("default") or {})
                requests.update(item.get("defaultRequest") or {})
        if not limits and not requests:
            continue
        said: list[str] = []
        spec = pod.get("spec")
        for key, prefix in (("containers[]", "container"), ("initContainers[]", "init container")):
            for container in each(spec, key):
                said.extend(_default_container(container, limits, requests, prefix))
        if said:
            annotations = child(child(pod, "metadata"), "annotations")
            assert annotations is not None
            annotations[LIMIT_RANGER_ANNOTATION] = "LimitRanger plugin set: " + "; ".join(said)
    if spec := pod.get("spec"):
        child(pod, "status")
        pod["status"]["qosClass"] = pods.qos_class(spec)


def _milli(amount: Quantity) -> int:
    """kube compares amounts in milli-units (rounded up)."""
    return math.ceil(amount.value * 1000)


def _request_max(item: Mapping[str, Any], kind: str, requests: Mapping[str, Quantity]) -> list[str]:
    """kube's maxRequestConstraint: a claim's max bounds what it requests."""
    errors = []
    for name, given in sorted(quota.parse_usage(item.get("max")).items()):
        request, at = requests.get(name), canonical(given)
        if request is None:
            errors.append(f"maximum {name} usage per {kind} is {at}.  No request is specified")
        elif _milli(request) > _milli(given):
            errors.append(
                f"maximum {name} usage per {kind} is {at}, but request is {canonical(request)}"
            )
    return errors


def _bounds(
    item: Mapping[str, Any],
    kind: str,
    requests: Mapping[str, Quantity],
    limits: Mapping[str, Quantity] | None,
) -> list[str]:
    """
    kube's minConstraint, maxConstraint and limitRequestRatioConstraint for one
    item; without C{limits} (a claim's), the max bounds the request instead.
    """
    if limits is None:
        bounded = {k: v for k, v in item.items() if k != "max"}
        return _bounds(bounded, kind, requests, {}) + _request_max(item, kind, requests)
    errors: list[str] = []
    for name, given in sorted(quota.parse_usage(item.get("min")).items()):
        request, limit, at = requests.get(name), limits.get(name), canonical(given)
        enforced = _milli(given)
        if request is None:
            errors.append(f"minimum {name} usage per {kind} is {at}.  No request is specified")
        elif _milli(request) < enforced:
            errors.append(
                f"minimum {name} usage per {kind} is {at}, but request is {canonical(request)}"
            )
        elif limit is not None and _milli(limit) < enforced:
            errors.append(
                f"minimum {name} usage per {kind} is {at}, but limit is {canonical(limit)}"
            )
    for name, given in sorted(quota.parse_usage(item.get("max")).items()):
        request, limit, at = requests.get(name), limits.get(name), canonical(given)
        enforced = _milli(given)
        if limit is None:
            errors.append(f"maximum {name} usage per {kind} is {at}.  No limit is specified")
        elif _milli(limit) > enforced:
            errors.append(
                f"maximum {name} usage per {kind} is {at}, but limit is {canonical(limit)}"
            )
        elif request is not None and _milli(request) > enforced:
            errors.append(
                f"maximum {name} usage per {kind} is {at}, but request is {canonical(request)}"
            )
    for name, given in sorted(quota.parse_usage(item.get("maxLimitRequestRatio")).items()):
        request, limit, at = requests.get(name), limits.get(name), canonical(given)
        prefix = f"{name} max limit to request ratio per {kind} is {at}, but"
        if request is None or _milli(request) == 0:
            errors.append(f"{prefix} no request is specified or request is 0")
        elif limit is None or _milli(limit) == 0:
            errors.append(f"{prefix} no limit is specified or limit is 0")
        else:
            ratio = Fraction(_milli(limit), _milli(request))
            if ratio > given.value:
                errors.append(f"{prefix} provided ratio is {float(ratio):f}")
    return errors


def pod_limit_errors(
    pod: Mapping[str, Any], limit_ranges: Iterable[Mapping[str, Any]]
) -> list[str]:
    """LimitRanger's validation of a pod against its namespace's LimitRanges."""
    spec = pod.get("spec")
    errors: list[str] = []
    for limit_range in limit_ranges:
        for item in each(limit_range, "spec.limits[]"):
            kind = item.get("type")
            if kind == "Container":
                for key in ("containers[]", "initContainers[]"):
                    for container in each(spec, key):
                        requests = quota.parse_usage(get_path(container, "resources", "requests"))
                        limits = quota.parse_usage(get_path(container, "resources", "limits"))
                        errors.extend(_bounds(item, "Container", requests, limits))
            elif kind == "Pod":
                requests = quota.pod_amounts(spec, "requests", overhead=False)
                limits = quota.pod_amounts(spec, "limits", overhead=False)
                errors.extend(_bounds(item, "Pod", requests, limits))
    return errors


def claim_limit_errors(
    claim: Mapping[str, Any], limit_ranges: Iterable[Mapping[str, Any]]
) -> list[str]:
    """LimitRanger's validation of a claim's storage request (claims get no defaults)."""
    requests = quota.parse_usage(get_path(claim, "spec", "resources", "requests"))
    return [
        error
        for limit_range in limit_ranges
        for item in each(limit_range, "spec.limits[]")
        if item.get("type") == "PersistentVolumeClaim"
        for error in _bounds(item, "PersistentVolumeClaim", requests, None)
    ]


class Admission:
    """
    LimitRanger and ResourceQuota over the server's shared informers of
    LimitRanges and ResourceQuotas (listed from the store until they have synced).
    """

    def __init__(self, informers: ServerInformers, registry: Registry) -> None:
        self.limit_range_resource = registry.require("", "v1", "limitranges")
        self.quota_resource = registry.require("", "v1", "resourcequotas")
        self.limit_ranges = informers.for_resource(self.limit_range_resource)
        self.quotas = informers.for_resource(self.quota_resource)
        self.priority = PriorityAdmission(informers, registry)
        self.class_resource = registry.require("storage.k8s.io", "v1", "storageclasses")
        self.classes = informers.for_resource(self.class_resource)
        self.ingress_class_resource = registry.require("networking.k8s.io", "v1", "ingressclasses")
        self.ingress_classes = informers.for_resource(self.ingress_class_resource)

    async def _in_namespace(
        self, store: ObjectStore, informer: Informer, resource: ResourceType, namespace: str
    ) -> list[Object]:
        if informer.synced:
            found = informer.cache.by_index(NAMESPACE, namespace)
        else:
            found = (await store.list(resource, namespace)).items
        return sorted(found, key=name_of)

    async def mutate(self, store: ObjectStore, resource: ResourceType, obj: Object) -> None:
        """The mutating plugins, on a new object the kind has prepared and defaulted."""
        if _is_pods(resource):
            ranges = await self._in_namespace(
                store, self.limit_ranges, self.limit_range_resource, namespace_of(obj)
            )
            if ranges:
                default_pod_resources(obj, ranges)
            await self.priority.admit(store, obj)
        elif _is_claims(resource) and isinstance(spec := obj.get("spec"), dict):
            annotations = get_path(obj, "metadata", "annotations") or {}
            if "storageClassName" not in spec and _BETA_CLASS not in annotations:
                found = await self._default_class(
                    store, self.classes, self.class_resource, is_default_class
                )
                if found is not None:
                    spec["storageClassName"] = found
        elif _is_ingresses(resource) and isinstance(spec := obj.get("spec"), dict):
            annotations = get_path(obj, "metadata", "annotations") or {}
            if "ingressClassName" not in spec and _INGRESS_CLASS_ANNOTATION not in annotations:
                found = await self._default_class(
                    store,
                    self.ingress_classes,
                    self.ingress_class_resource,
                    _is_default_ingress_class,
                )
                if found is not None:
                    spec["ingressClassName"] = found

    async def _default_class(
        self,
        store: ObjectStore,
        informer: Informer,
        resource: ResourceType,
        is_default: Callable[[Mapping[str, Any]], bool],
    ) -> str | None:
        """The default class: of several, the newest (then the first by name)."""
        if informer.synced:
            classes = informer.cache.list()
        else:
            classes = (await store.list(resource, None)).items
        defaults = [c for c in classes if is_default(c)]
        if not defaults:
            return None
        newest = max(str(get_path(c, "metadata", "creationTimestamp") or "") for c in defaults)
        return min(
            name_of(c)
            for c in defaults
            if str(get_path(c, "metadata", "creationTimestamp") or "") == newest
        )

    async def validate(
        self, store: ObjectStore, resource: ResourceType, obj: Object, old: Object | None = None
    ) -> None:
        """The validating plugins, on a new object (or an update of C{old}) once validated."""
        if not resource.namespaced:
            return
        if old is not None and not quota.charges_updates(resource.group, resource.plural):
            return
        namespace = namespace_of(obj)
        limited = _is_pods(resource) and old is None
        claims = _is_claims(resource)
        if limited or claims:
            ranges = await self._in_namespace(
                store, self.limit_ranges, self.limit_range_resource, namespace
            )
            check = pod_limit_errors if limited else claim_limit_errors
            if errors := check(obj, ranges):
                raise self._refusal(resource, obj, aggregate(errors))
        quotas = await self._in_namespace(store, self.quotas, self.quota_resource, namespace)
        if quotas:
            await self._charge(store, resource, obj, old, quotas)

    def _refusal(self, resource: ResourceType, obj: Mapping[str, Any], message: str) -> StatusError:
        return forbidden(resource.plural, resource.group, name_of(obj), message)

    def _limiting(
        self, resource: ResourceType, obj: Object, quotas: list[Object]
    ) -> list[tuple[str, list[str]]]:
        """The quotas that limit C{obj}, with what they limit of it (kube's checkRequest)."""
        found = []
        for held in quotas:
            hard = get_path(held, "status", "hard") or {}
            names = quota.tracked(resource.group, resource.plural, hard)
            if not names or not quota.in_scope(held, resource.group, resource.plural, obj):
                continue
            if _is_pods(resource) and (lacking := quota.missing(names, obj.get("spec"))):
                raise self._refusal(resource, obj, f"failed quota: {name_of(held)}: {lacking}")
            used = get_path(held, "status", "used") or {}
            if any(name not in used for name in names):
                message = f"status unknown for quota: {name_of(held)}, resources: {','.join(names)}"
                raise self._refusal(resource, obj, message)
            found.append((name_of(held), names))
        return found

    def _used_after(
        self, resource: ResourceType, obj: Object, held: Mapping[str, Any], requested: quota.Usage
    ) -> dict[str, str]:
        """C{held}'s ``status.used`` with C{requested} added; refused if more than its hard."""
        hard = quota.parse_usage(get_path(held, "status", "hard"))
        used = quota.parse_usage(get_path(held, "status", "used"))
        after = quota.add(dict(used), requested)
        exceeded = sorted(n for n in requested if n in hard and after[n].value > hard[n].value)
        if exceeded:

            def masked(usage: quota.Usage) -> str:
                return quota.pretty({name: usage[name] for name in exceeded if name in usage})

            raise self._refusal(
                resource,
                obj,
                f"exceeded quota: {name_of(held)}, requested: {masked(requested)}, "
                f"used: {masked(used)}, limited: {masked(hard)}",
            )
        return {**(get_path(held, "status", "used") or {}), **quota.printed(after)}

    async def _charge(
        self,
        store: ObjectStore,
        resource: ResourceType,
        obj: Object,
        old: Object | None,
        quotas: list[Object],
    ) -> None:
        limiting = self._limiting(resource, obj, quotas)
        now = store.clock.seconds()
        delta = quota.usage(resource.group, resource.plural, obj, now)
        if old is not None:
            # An update is charged what it adds (a Service becoming a LoadBalancer).
            delta = quota.increase(delta, quota.usage(resource.group, resource.plural, old, now))
        if not limiting or not any(amount.value for amount in delta.values()):
            return
        requests = [
            (name, {n: delta[n] for n in names if n in delta and delta[n].value})
            for name, names in limiting
        ]
        # Every quota is checked before any is charged; each charge checks again what it adds
        # to, so a quota another create charged meanwhile refuses what no longer fits.
        by_name = {name_of(held): held for held in quotas}
        for name, requested in requests:
            self._used_after(resource, obj, by_name[name], requested)
        for name, requested in requests:
            if requested:
                await store.guaranteed_update(
                    self.quota_resource,
                    namespace_of(obj),
                    name,
                    partial(self._charged, resource, obj, requested),
                    subresource="status",
                )

    def _charged(
        self, resource: ResourceType, obj: Object, requested: quota.Usage, held: Object
    ) -> Object:
        child(held, "status")
        held["status"]["used"] = self._used_after(resource, obj, held, requested)
        return held
