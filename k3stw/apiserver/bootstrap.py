"""
What every cluster has from its first start: the system namespaces, the
built-in PriorityClasses and the served CRDs.
"""

from __future__ import annotations

from k3stw.apiserver.kinds import crds, namespaces
from k3stw.apiserver.priority import create_system_classes
from k3stw.apiserver.registry import Registry
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


async def bootstrap(store: ObjectStore, registry: Registry) -> None:
    """Create the system namespaces and classes that are missing, and serve every stored CRD."""
    for name in DEFAULT_NAMESPACES:
        try:
            await store.create(namespaces.RESOURCE, None, {"metadata": {"name": name}})
        except StatusError as e:
            if e.code != 409:
                raise
    await create_system_classes(store, registry)
    for crd in (await store.list(crds.RESOURCE, None)).items:
        crds.serve(registry, crd)
