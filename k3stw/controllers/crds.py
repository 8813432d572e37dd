"""
CustomResourceDefinitions as they change, on any server: the registry
serves what is stored, and a CRD being deleted first takes its custom
resources with it (kube-apiserver's ``customresourcecleanup`` finalizer).
"""

from __future__ import annotations

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import crds
from k3stw.apiserver.kinds.custom import resources_of_crd
from k3stw.apiserver.registry import Registry
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.machinery.controller import Controller
from k3stw.machinery.objects import Object, is_deleting, without


class CRDController(Controller):
    """Keeps the registry equal to the stored CRDs and cleans up after deleted ones."""

    label = "CRD controller"
    expected = TRANSIENT

    def __init__(self, informers: ServerInformers, store: ObjectStore, registry: Registry) -> None:
        self.crds = informers.for_resource(crds.RESOURCE)
        super().__init__(store.clock, [self.crds])
        self.store = store
        self.registry = registry
        self.add_handler(self.crds, self.enqueue_handler())

    async def sync(self, key: str) -> None:
        crd = self.crds.get(key)
        if crd is None:
            self.registry.replace_crd(key, [])
        elif is_deleting(crd):
            await self._clean_up(crd)
        else:
            crds.serve(self.registry, crd)

    async def _clean_up(self, crd: Object) -> None:
        """Delete every custom resource of a CRD being deleted, then let it go."""
        for resource in resources_of_crd(crd):
            for obj in (await self.store.list(resource, None)).items:
                metadata = obj["metadata"]
                try:
                    await self.store.delete(resource, metadata.get("namespace"), metadata["name"])
                except StatusError as e:
                    if e.code != 404:
                        raise

        def release(current: Object) -> Object:
            finalizers = current["metadata"].get("finalizers") or []
            current["metadata"]["finalizers"] = without(finalizers, crds.CLEANUP)
            return current

        try:
            await self.store.guaranteed_update(
                crds.RESOURCE, None, crd["metadata"]["name"], release
            )
        except StatusError as e:
            if e.code != 404:
                raise
