"""
The server's control loops (kube-controller-manager's and kube-apiserver's own,
in part), each a C{sync(key)} on the shared informers of
L{k3stw.apiserver.informers}, writing through the object store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.datastore.interface import DatastoreUnavailable
from k3stw.machinery.objects import Object

#: What a server's sync may meet that only means "try again later": a refused or
#: conflicting write, a datastore that is away.
TRANSIENT = (StatusError, DatastoreUnavailable)


async def delete_if_present(
    store: ObjectStore,
    resource: ResourceType,
    namespace: str | None,
    name: str,
    grace_period: int | None = None,
) -> None:
    """Delete the object, if it is still there (a pod with C{grace_period}, default its own)."""
    try:
        await store.delete(resource, namespace, name, grace_period=grace_period)
    except StatusError as e:
        if e.code != 404:
            raise


async def create_if_absent(
    store: ObjectStore, resource: ResourceType, namespace: str | None, obj: Object
) -> bool:
    """Create the object unless one of its name exists already; whether it was made."""
    try:
        await store.create(resource, namespace, obj)
    except StatusError as e:
        if e.code != 409:
            raise
        return False
    return True


async def update_status_if_present(
    store: ObjectStore,
    resource: ResourceType,
    namespace: str | None,
    name: str,
    mutate: Callable[[Object], Object],
    manager: str | None = None,
) -> bool:
    """Write the object's status through C{mutate}; False if the object is gone."""
    try:
        await store.guaranteed_update(
            resource, namespace, name, mutate, manager, subresource="status"
        )
    except StatusError as e:
        if e.code != 404:
            raise
        return False
    return True


async def write_fields(
    store: ObjectStore,
    resource: ResourceType,
    namespace: str | None,
    current: Object | None,
    wanted: Object,
    fields: Sequence[str],
) -> None:
    """
    Make the stored object hold C{wanted}'s C{fields} and labels: nothing if
    C{current} (the cached one) already does, else replace them, or create
    C{wanted} when there is none.
    """
    labels = wanted["metadata"].get("labels") or {}
    if current is not None:
        held = current["metadata"].get("labels") or {}
        if all(current.get(f) == wanted.get(f) for f in fields) and all(
            held.get(k) == v for k, v in labels.items()
        ):
            return

    def replace(stored: Object) -> Object:
        for f in fields:
            stored[f] = wanted[f]
        stored["metadata"].setdefault("labels", {}).update(labels)
        return stored

    try:
        await store.guaranteed_update(resource, namespace, wanted["metadata"]["name"], replace)
    except StatusError as e:
        if e.code != 404:
            raise
        await create_if_absent(store, resource, namespace, wanted)
