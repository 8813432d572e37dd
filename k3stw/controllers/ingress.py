"""
k3s's bundled Ingress controller, server side: the ``traefik`` IngressClass
as k3s's Traefik chart installs it (the cluster's default class), and the
Ingresses' ``status.loadBalancer``.  Each node serves the Ingresses itself
(L{k3stw.network.ingress}).

k3s's Traefik copies its LoadBalancer Service's status, which ServiceLB
fills with the addresses of the nodes running a ``svclb-traefik`` pod, into
every Ingress it serves.  k3stw has no such Service (it would take ports 80
and 443 from the nodes' own listeners), so the status is the addresses
ServiceLB would give it: those of the Ready nodes its DaemonSet would place
a pod on (L{k3stw.controllers.servicelb.placements}), ExternalIPs if any,
else InternalIPs, IPv4 then IPv6.  Only Ingresses of this controller are
written; ``--disable=traefik`` stops it and deletes the class.
"""

from __future__ import annotations

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.registry import Registry
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import (
    TRANSIENT,
    create_if_absent,
    delete_if_present,
    update_status_if_present,
)
from k3stw.controllers.servicelb import ingress_addresses, is_ready, placements
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import each_change, enqueue_keys
from k3stw.machinery.objects import Object, get_path, name_of, object_key, split_key
from k3stw.network.ingressroutes import CLASS_NAME, CONTROLLER, is_ours, our_classes

#: ``--disable`` names it so.
DISABLE_NAME = "traefik"
COMPONENT = "traefik"
NAMESPACE = "kube-system"
#: The Service k3s's Traefik is published through, whose placement the status follows.
PUBLISHED: Object = {
    "metadata": {"name": "traefik", "namespace": NAMESPACE, "creationTimestamp": ""},
    "spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]},
}
_FAMILIES: Object = {"spec": {"ipFamilies": ["IPv4", "IPv6"]}}
_CHART_LABELS = {
    "app.kubernetes.io/instance": "traefik-kube-system",
    "app.kubernetes.io/managed-by": "Helm",
    "app.kubernetes.io/name": "traefik",
}
DEFAULT_CLASS = "ingressclass.kubernetes.io/is-default-class"


def ingress_class() -> Object:
    """The ``traefik`` IngressClass of k3s's Traefik chart: the default one."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {
            "name": CLASS_NAME,
            "labels": dict(_CHART_LABELS),
            "annotations": {DEFAULT_CLASS: "true"},
        },
        "spec": {"controller": CONTROLLER},
    }


async def deploy(store: ObjectStore, registry: Registry, enabled: bool) -> None:
    """Create the IngressClass (if absent), or, disabled, delete the one the chart made."""
    resource = registry.require("networking.k8s.io", "v1", "ingressclasses")
    if enabled:
        await create_if_absent(store, resource, None, ingress_class())
        return
    found = (await store.list(resource, None)).items
    for item in found:
        labels = get_path(item, "metadata", "labels") or {}
        if name_of(item) == CLASS_NAME and labels.get("app.kubernetes.io/name") == "traefik":
            await delete_if_present(store, resource, None, CLASS_NAME)


def ingress_status_addresses(all_nodes: list[Object]) -> list[str]:
    """The addresses every Ingress of the controller lists (see the module docstring)."""
    chosen = set(placements([PUBLISHED], all_nodes, {}).get(object_key(PUBLISHED), ()))
    return ingress_addresses(
        _FAMILIES, [n for n in all_nodes if name_of(n) in chosen and is_ready(n)]
    )


class IngressStatusController(Controller):
    """Keeps the controller's Ingresses' ``status.loadBalancer`` on the serving nodes' addresses."""

    label = "ingress status controller"
    expected = TRANSIENT

    def __init__(self, informers: ServerInformers, store: ObjectStore, registry: Registry) -> None:
        self.resource = registry.require("networking.k8s.io", "v1", "ingresses")
        self.ingress_informer = informers.for_resource(self.resource)
        self.class_informer = informers.for_resource(
            registry.require("networking.k8s.io", "v1", "ingressclasses")
        )
        self.node_informer = informers.for_resource(registry.require("", "v1", "nodes"))
        super().__init__(
            store.clock, [self.ingress_informer, self.class_informer, self.node_informer]
        )
        self.store = store
        self.add_handler(self.ingress_informer, enqueue_keys(self.enqueue))
        self.add_handler(self.class_informer, each_change(lambda _: self._enqueue_all()))
        self.add_handler(self.node_informer, each_change(lambda _: self._enqueue_all()))

    def _enqueue_all(self) -> None:
        for ingress in self.ingress_informer.cache:
            self.enqueue(object_key(ingress))

    async def sync(self, key: str) -> None:
        ingress = self.ingress_informer.get(key)
        if ingress is None or not is_ours(ingress, our_classes(self.class_informer.cache)):
            return
        addresses = ingress_status_addresses(sorted(self.node_informer.cache, key=name_of))
        wanted: Object = {"ingress": [{"ip": ip} for ip in addresses]} if addresses else {}
        if (get_path(ingress, "status", "loadBalancer") or {}) == wanted:
            return
        namespace, name = split_key(key)

        def write(current: Object) -> Object:
            current.setdefault("status", {})["loadBalancer"] = wanted
            return current

        await update_status_if_present(self.store, self.resource, namespace, name, write, COMPONENT)
