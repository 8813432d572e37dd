"""
kube-controller-manager's pod garbage collector, driven by changes instead
of its 20-second sweep:

- a pod bound to a node that no longer exists is, once the node has been
  gone for the quarantine (40 s) and a fresh read confirms it, marked Failed
  with the ``DisruptionTarget`` condition (reason ``DeletionByPodGC``) and
  deleted;
- a pod being deleted that was never scheduled is deleted at once (no
  kubelet will ever finish it);
- a pod being deleted on a node that is not Ready and carries the
  ``node.kubernetes.io/out-of-service`` taint is marked Failed and deleted
  (its kubelet is known to be down: kube's gcTerminating);
- terminated pods (Succeeded, Failed) beyond ``--terminated-pod-gc-threshold``
  are deleted, evicted ones first, then oldest first.

Every deletion is forced (grace period 0), as kube's are: otherwise a pod
bound to a node without a kubelet would only be marked Terminating.
"""

from __future__ import annotations

from collections.abc import Iterable

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import nodes, pods
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT, delete_if_present, update_status_if_present
from k3stw.machinery.cache import NODE_NAME, by_node_name
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import each_change
from k3stw.machinery.objects import (
    Object,
    find_condition,
    get_path,
    is_deleting,
    metadata,
    name_of,
    object_key,
    set_condition,
    split_key,
)

#: ``--terminated-pod-gc-threshold``'s default (0 turns the count off).
TERMINATED_THRESHOLD = 12500
#: How long a node must be gone before its pods are (kube's quarantineTime).
QUARANTINE = 40.0
#: The field manager of the controller's status writes.
MANAGER = "PodGC"
#: The key that asks for the terminated pods to be counted.
_TERMINATED = "terminated-pods"
_TERMINATED_INDEX = "terminated"


#: The condition of a pod whose node is gone.
_NODE_GONE = {
    "type": "DisruptionTarget",
    "status": "True",
    "reason": "DeletionByPodGC",
    "message": "PodGC: node no longer exists",
}
#: The taint an administrator puts on a node known to be down (kube's TaintNodeOutOfService).
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"


def is_out_of_service(node: Object) -> bool:
    """Not Ready, and tainted out-of-service: its pods will never be finished by its kubelet."""
    ready = find_condition(node, "Ready")
    taints = get_path(node, "spec", "taints") or []
    return (ready is None or ready.get("status") != "True") and any(
        isinstance(taint, dict) and taint.get("key") == OUT_OF_SERVICE for taint in taints
    )


def is_terminated(pod: Object) -> bool:
    return get_path(pod, "status", "phase") in ("Succeeded", "Failed")


def _terminated(pod: Object) -> Iterable[str]:
    return (_TERMINATED_INDEX,) if is_terminated(pod) else ()


def _eviction_order(pod: Object) -> tuple[bool, str, str]:
    """Evicted pods first, then the oldest (kube's byEvictionAndCreationTimestamp)."""
    evicted = get_path(pod, "status", "phase") == "Failed" and (
        get_path(pod, "status", "reason") == "Evicted"
    )
    return (not evicted, str(metadata(pod).get("creationTimestamp") or ""), object_key(pod))


class PodGCController(Controller):
    """
    Deletes the pods nothing else will: orphaned, unscheduled and terminating,
    and terminated ones beyond C{threshold}.
    """

    label = "pod garbage collector"
    expected = TRANSIENT

    def __init__(
        self,
        informers: ServerInformers,
        store: ObjectStore,
        threshold: int = TERMINATED_THRESHOLD,
        quarantine: float = QUARANTINE,
    ) -> None:
        self.pod_informer = informers.for_resource(pods.RESOURCE)
        self.pod_informer.add_index(NODE_NAME, by_node_name)
        self.pod_informer.add_index(_TERMINATED_INDEX, _terminated)
        self.node_informer = informers.for_resource(nodes.RESOURCE)
        super().__init__(store.clock, [self.pod_informer, self.node_informer])
        self.store = store
        self.threshold = threshold
        self.quarantine = quarantine
        #: When each pod was first seen on a node that is not there.
        self._orphaned_since: dict[str, float] = {}
        self.add_handler(
            self.pod_informer,
            each_change(
                self._pod_changed,
                deleted=lambda pod: self._orphaned_since.pop(object_key(pod), None),
            ),
        )
        self.add_handler(
            self.node_informer,
            each_change(self._node_changed, deleted=self._node_deleted),
        )

    def _pod_changed(self, pod: Object) -> None:
        if get_path(pod, "spec", "nodeName") or is_deleting(pod):
            self.enqueue(object_key(pod))
        if self.threshold > 0 and is_terminated(pod):
            self.enqueue(_TERMINATED)

    def _node_changed(self, node: Object) -> None:
        if is_out_of_service(node):
            for pod in self.pod_informer.cache.by_index(NODE_NAME, name_of(node)):
                if is_deleting(pod):
                    self.enqueue(object_key(pod))

    def _node_deleted(self, node: Object) -> None:
        for pod in self.pod_informer.cache.by_index(NODE_NAME, name_of(node)):
            self.enqueue(object_key(pod))

    def new_term(self) -> None:
        self._orphaned_since.clear()

    async def sync(self, key: str) -> None:
        if key == _TERMINATED:
            return await self._collect_terminated()
        pod = self.pod_informer.get(key)
        if pod is None:
            self._orphaned_since.pop(key, None)
            return
        node = get_path(pod, "spec", "nodeName")
        if not node:
            if is_deleting(pod):
                await self._delete(key)
            return
        if (found := self.node_informer.get(str(node))) is not None:
            self._orphaned_since.pop(key, None)
            if is_deleting(pod) and is_out_of_service(found):
                self._log.info(
                    "Pod {pod} is terminating on node {node}, which is out of service",
                    pod=key,
                    node=node,
                )
                await self._fail(key)
                await self._delete(key)
            return
        now = self.clock.seconds()
        since = self._orphaned_since.setdefault(key, now)
        if now - since < self.quarantine:
            self.queue.add_after(key, since + self.quarantine - now)
            return
        if await self._node_exists(str(node)):
            self._orphaned_since.pop(key, None)
            return
        self._log.info("Pod {pod} is on node {node}, which no longer exists", pod=key, node=node)
        await self._fail(key, _NODE_GONE)
        await self._delete(key)
        self._orphaned_since.pop(key, None)

    async def _node_exists(self, name: str) -> bool:
        try:
            await self.store.get(nodes.RESOURCE, None, name)
        except StatusError as e:
            if e.code != 404:
                raise
            return False
        return True

    async def _fail(self, key: str, condition: Object | None = None) -> None:
        """Mark the pod Failed (no kubelet is left to), with C{condition} if any."""
        namespace, name = split_key(key)
        now = self.store.now()

        def mark(pod: Object) -> Object:
            if is_terminated(pod):
                return pod
            status = pod.setdefault("status", {})
            status["phase"] = "Failed"
            if condition is not None:
                set_condition(status, dict(condition), now)
            return pod

        await update_status_if_present(self.store, pods.RESOURCE, namespace, name, mark, MANAGER)

    async def _delete(self, key: str) -> None:
        namespace, name = split_key(key)
        await delete_if_present(self.store, pods.RESOURCE, namespace, name, grace_period=0)

    async def _collect_terminated(self) -> None:
        terminated = self.pod_informer.cache.by_index(_TERMINATED_INDEX, _TERMINATED_INDEX)
        excess = len(terminated) - self.threshold
        if self.threshold <= 0 or excess <= 0:
            return
        self._log.info(
            "Deleting {count} terminated pods over the threshold {threshold}",
            count=excess,
            threshold=self.threshold,
        )
        for pod in sorted(terminated, key=_eviction_order)[:excess]:
            await self._delete(object_key(pod))
