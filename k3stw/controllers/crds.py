"""
CustomResourceDefinitions as they change, on any server: the registry
serves what is stored, and a CRD being deleted first takes its custom
resources with it (kube-apiserver's ``customresourcecleanup`` finalizer).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from k3stw.apiserver.registry import CRDS, Registry, resources_of_crd
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import Object, ObjectStore
from k3stw.controllers.loop import ControllerLoop
from k3stw.datastore.interface import Event, EventType, IDatastore

CLEANUP = "customresourcecleanup.apiextensions.k8s.io"
RETRY_SECONDS = 1.0


class CRDController(ControllerLoop):
    """Keeps the registry equal to the stored CRDs and cleans up after deleted ones."""

    label = "CRD controller"

    def __init__(
        self, datastore: IDatastore, store: ObjectStore, registry: Registry, clock: IReactorTime
    ) -> None:
        super().__init__(clock, RETRY_SECONDS)
        self.datastore = datastore
        self.store = store
        self.registry = registry

    async def run_once(self) -> None:
        """Serve every stored CRD, then follow changes until the watch ends."""
        listed = await self.store.list(CRDS, None)
        for crd in listed.items:
            self._serve(crd)
        self.watch = await self.datastore.watch(
            CRDS.storage_prefix(), int(listed.resource_version) + 1, self._changed
        )
        await self.watch.ended

    def _changed(self, events: Sequence[Event]) -> None:
        for event in events:
            crd = json.loads(event.kv.value)
            if event.type is EventType.DELETE:
                self.registry.replace_crd(crd["metadata"]["name"], [])
            else:
                self._serve(crd)

    def _serve(self, crd: Object) -> None:
        name = crd["metadata"]["name"]
        if crd["metadata"].get("deletionTimestamp"):
            Deferred.fromCoroutine(self._clean_up(crd)).addErrback(
                lambda f: self._log.failure("cleaning up CRD {name}", f, name=name)
            )
        else:
            self.registry.replace_crd(name, resources_of_crd(crd))

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
            finalizers = [f for f in current["metadata"].get("finalizers") or [] if f != CLEANUP]
            current["metadata"]["finalizers"] = finalizers
            return current

        await self.store.guaranteed_update(CRDS, None, crd["metadata"]["name"], release)
