"""
k3s's etcd node controllers: each server marks its own Node as an etcd
node (the member's name and address in annotations, the ``etcd`` role
label, and the finalizer of k3s's member-removal controller), and when such
a Node is deleted, or annotated ``etcd.k3s.cattle.io/remove=true``, its
member is removed from etcd.  The removal is done by the server whose member
leads etcd (k3s: the server holding its controllers' lease).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import nodes
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.datastore.etcd import EtcdError
from k3stw.machinery.controller import Controller
from k3stw.machinery.objects import Object, is_deleting, metadata

NAME = "etcd.k3s.cattle.io/node-name"
ADDRESS = "etcd.k3s.cattle.io/node-address"
REMOVE = "etcd.k3s.cattle.io/remove"
REMOVED = "etcd.k3s.cattle.io/removed-node-name"
ROLE = "node-role.kubernetes.io/etcd"
FINALIZER = "wrangler.cattle.io/managed-etcd-controller"


class Membership(Protocol):
    """What the controller asks of etcd (L{k3stw.etcd.member.EmbeddedEtcd} answers)."""

    async def is_leader(self) -> bool: ...

    async def remove_member(self, name: str, address: str) -> bool: ...


#: How soon a server whose member does not lead looks again at a removal.
NOT_LEADER_RETRY = 5.0


class EtcdNodeController(Controller):
    """The etcd metadata of this server's Node, and member removal for any etcd Node."""

    label = "managed-etcd-controller"
    expected = (*TRANSIENT, EtcdError)

    def __init__(
        self,
        informers: ServerInformers,
        store: ObjectStore,
        etcd: Membership,
        node_name: str,
        member_name: str,
        address: str,
    ) -> None:
        self.nodes = informers.for_resource(nodes.RESOURCE)
        super().__init__(store.clock, [self.nodes])
        self.store = store
        self.etcd = etcd
        self.node_name = node_name
        self.member_name = member_name
        self.address = address
        self.add_handler(self.nodes, self.enqueue_handler())

    async def sync(self, key: str) -> None:
        node = self.nodes.get(key)
        if node is None:
            return
        labels = metadata(node).get("labels") or {}
        annotations = metadata(node).get("annotations") or {}
        if is_deleting(node):
            if FINALIZER in (metadata(node).get("finalizers") or ()):
                await self._remove(key, annotations, on_delete=True)
            return
        if str(annotations.get(REMOVE, "")).lower() == "true" and not annotations.get(REMOVED):
            await self._remove(key, annotations, on_delete=False)
            return
        if annotations.get(REMOVED) == self.member_name:
            return  # this very member was removed: nothing to mark until it is a new one
        if key == self.node_name and (
            annotations.get(NAME) != self.member_name
            or annotations.get(ADDRESS) != self.address
            or labels.get(ROLE) != "true"
            or FINALIZER not in (metadata(node).get("finalizers") or ())
        ):
            await self._update(key, self._mark)
            self._log.info(
                "Labels and annotations have been set successfully on node: {node}", node=key
            )

    def _mark(self, node: Object) -> Object:
        meta = node["metadata"]
        annotations = meta.setdefault("annotations", {})
        if annotations.get(REMOVED, self.member_name) != self.member_name:
            # A new member (the server re-joined): an old removal no longer applies.
            annotations.pop(REMOVE, None)
            annotations.pop(REMOVED, None)
        annotations[NAME] = self.member_name
        annotations[ADDRESS] = self.address
        meta.setdefault("labels", {})[ROLE] = "true"
        finalizers = meta.setdefault("finalizers", [])
        if FINALIZER not in finalizers:
            finalizers.append(FINALIZER)
        return node

    async def _remove(self, key: str, annotations: dict[str, str], *, on_delete: bool) -> None:
        if not await self.etcd.is_leader():
            self.queue.add_after(key, NOT_LEADER_RETRY)
            return
        name, address = annotations.get(NAME), annotations.get(ADDRESS)
        if on_delete and annotations.get(REMOVED):
            name = None  # removed already, through the annotation
        elif not name:
            raise ValueError(f"node name annotation for node {key} not found")
        elif not address:
            raise ValueError(f"node address annotation for node {key} not found")
        if name and address:
            self._log.info(
                "Removing etcd member from cluster due to {why}",
                why="node delete" if on_delete else "remove annotation",
            )
            try:
                await self.etcd.remove_member(name, address)
            except EtcdError as e:
                if on_delete:
                    raise
                self._log.warn(
                    "etcd member removal rejected, clearing remove annotation: {error}",
                    error=e.message,
                )
                await self._update(key, _clear_remove)
                return
        await self._update(key, _release if on_delete else _removed(name or ""))

    async def _update(self, key: str, change: Callable[[Object], Object]) -> None:
        try:
            await self.store.guaranteed_update(nodes.RESOURCE, None, key, change)
        except StatusError as e:
            if e.code != 404:
                raise


def _release(node: Object) -> Object:
    meta = node["metadata"]
    meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
    return node


def _clear_remove(node: Object) -> Object:
    (node["metadata"].get("annotations") or {}).pop(REMOVE, None)
    return node


def _removed(member: str) -> Callable[[Object], Object]:
    def change(node: Object) -> Object:
        annotations = node["metadata"].setdefault("annotations", {})
        annotations[REMOVED] = member
        annotations.pop(NAME, None)
        annotations.pop(ADDRESS, None)
        return node

    return change
