"""
What kube-controller-manager puts in every namespace: the ``default``
ServiceAccount (its serviceaccount-controller) and the ``kube-root-ca.crt``
ConfigMap with the cluster CA (its root-ca-certificate-publisher).  Each is
made again if deleted, and the ConfigMap is put back if its data is changed.
"""

from __future__ import annotations

from collections.abc import Callable

from k3stw.apiserver.informers import Selection, ServerInformers
from k3stw.apiserver.kinds import configmaps, namespaces, serviceaccounts
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import each_change
from k3stw.machinery.objects import Object, join_key, name_of, namespace_of

ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
ROOT_CA_DESCRIPTION = (
    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal "
    "endpoints such as the internal service IP or kubernetes.default.svc. No other usage is "
    "guaranteed across distributions of Kubernetes clusters."
)


class InEveryNamespace(Controller):
    """
    Keeps one object, by name, in every active namespace.

    :param resource: its kind.
    :param name: its name.
    :param build: the object to create (without its namespace).
    :param kept: the top-level fields put back when someone changes them.
    """

    expected = TRANSIENT

    def __init__(
        self,
        informers: ServerInformers,
        store: ObjectStore,
        resource: ResourceType,
        name: str,
        build: Callable[[], Object],
        kept: tuple[str, ...] = (),
    ) -> None:
        self.label = f"{name} {resource.kind} in every namespace"
        self.namespaces = informers.for_resource(namespaces.RESOURCE)
        self.objects = informers.for_resource(
            resource, Selection(f"{resource.plural}-{name}", predicate=lambda o: name_of(o) == name)
        )
        super().__init__(store.clock, [self.namespaces, self.objects])
        self.store = store
        self.resource = resource
        self.object_name = name
        self.build = build
        self.kept = kept
        self.add_handler(self.namespaces, self.enqueue_handler())
        self.add_handler(self.objects, each_change(lambda obj: self.enqueue(namespace_of(obj))))

    async def sync(self, key: str) -> None:
        namespace = self.namespaces.get(key)
        if namespace is None or namespace.get("status", {}).get("phase") == "Terminating":
            return
        wanted = self.build()
        current = self.objects.get(join_key(key, self.object_name))
        if current is None:
            wanted["metadata"] = {**wanted.get("metadata", {}), "name": self.object_name}
            try:
                await self.store.create(self.resource, key, wanted)
            except StatusError as e:
                # Made meanwhile, or the namespace began terminating: nothing to do.
                if e.code not in (403, 409):
                    raise
            return
        if all(current.get(field) == wanted.get(field) for field in self.kept):
            return

        def restore(obj: Object) -> Object:
            for field in self.kept:
                obj[field] = wanted.get(field)
            return obj

        try:
            await self.store.guaranteed_update(self.resource, key, self.object_name, restore)
        except StatusError as e:
            if e.code != 404:
                raise


def default_service_accounts(informers: ServerInformers, store: ObjectStore) -> InEveryNamespace:
    """kube-controller-manager's serviceaccount-controller: ``default`` in each namespace."""
    return InEveryNamespace(
        informers, store, serviceaccounts.RESOURCE, "default", lambda: {"metadata": {}}
    )


def root_ca_publisher(
    informers: ServerInformers, store: ObjectStore, ca_bundle: bytes
) -> InEveryNamespace:
    """kube-controller-manager's root-ca-certificate-publisher: the cluster CA, everywhere."""
    bundle = ca_bundle.decode("ascii")
    return InEveryNamespace(
        informers,
        store,
        configmaps.RESOURCE,
        ROOT_CA_CONFIGMAP,
        lambda: {
            "metadata": {"annotations": {"kubernetes.io/description": ROOT_CA_DESCRIPTION}},
            "data": {"ca.crt": bundle},
        },
        kept=("data",),
    )
