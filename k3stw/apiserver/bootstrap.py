"""What every cluster has from its first start: the system namespaces and the served CRDs."""

from __future__ import annotations

from k3stw.apiserver.registry import CRDS, NAMESPACES, Registry, resources_of_crd
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


async def bootstrap(store: ObjectStore, registry: Registry) -> None:
    """Create the system namespaces that are missing, and serve every stored CRD."""
    for name in DEFAULT_NAMESPACES:
        namespace = {
            "metadata": {"name": name},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        try:
            await store.create(NAMESPACES, None, namespace)
        except StatusError as e:
            if e.code != 409:
                raise
    for crd in (await store.list(CRDS, None)).items:
        registry.replace_crd(crd["metadata"]["name"], resources_of_crd(crd))
