"""
kube-controller-manager's taint eviction controller (the NoExecute taint
manager of old): a pod bound to a node with ``NoExecute`` taints it does not
all tolerate is deleted at once (with its grace period: it is Terminating
until its kubelet confirms); one that tolerates them all for a while
(``tolerationSeconds``) is deleted when the shortest of those runs out,
counted from when the controller first saw the pod exposed; one that
tolerates them forever stays.  When the taints go (or the pod does) before
the time, the deletion is cancelled.

Before deleting, it marks the pod ``DisruptionTarget`` (reason
``DeletionByTaintManager``) through the status subresource; it records a
``TaintManagerEviction`` Event on the pod for each deletion it makes and
each scheduled one it cancels, as kube's does.  Its schedule lives in memory
only: a controller elected anew starts it afresh, as a new
kube-controller-manager would.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import nodes, pods
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT, delete_if_present, update_status_if_present
from k3stw.controllers.events import NORMAL, EventRecorder
from k3stw.machinery.cache import NODE_NAME, by_node_name
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import EventHandler
from k3stw.machinery.nodeaffinity import tolerates
from k3stw.machinery.objects import Object, get_path, name_of, object_key, set_condition, split_key

#: Its Events' ``source.component``.
COMPONENT = "taint-eviction-controller"
EVICTION_REASON = "TaintManagerEviction"
DISRUPTION_CONDITION = {
    "type": "DisruptionTarget",
    "status": "True",
    "reason": "DeletionByTaintManager",
    "message": "Taint manager: deleting due to NoExecute taint",
}
#: A pod is looked at again this long after its deletion is due (timers are not exact).
_SLACK = 0.01


def no_execute_taints(node: Object | None) -> list[Object]:
    taints = get_path(node, "spec", "taints") or []
    return [t for t in taints if isinstance(t, dict) and t.get("effect") == "NoExecute"]


def toleration_time(
    taints: Iterable[Mapping[str, Any]], tolerations: Sequence[Mapping[str, Any]]
) -> float | None:
    """
    How long a pod with C{tolerations} may stay under C{taints}: 0 when one
    is not tolerated, None for ever (kube's GetMatchingTolerations, then
    getMinTolerationTime over the first toleration that matches each taint).
    """
    shortest: float | None = None
    for taint in taints:
        used = next((t for t in tolerations if tolerates(t, taint)), None)
        if used is None:
            return 0.0
        seconds = used.get("tolerationSeconds")
        if isinstance(seconds, int):
            seconds = max(seconds, 0)
            shortest = seconds if shortest is None else min(shortest, seconds)
    return shortest


@dataclass
class _Eviction:
    """A deletion scheduled for C{due}; C{started} when the pod was first seen exposed."""

    started: float
    due: float
    done: bool = False


class TaintEvictionController(Controller):
    """Deletes pods from nodes whose NoExecute taints they do not tolerate (long enough)."""

    label = "taint eviction controller"
    expected = TRANSIENT

    def __init__(self, informers: ServerInformers, store: ObjectStore) -> None:
        self.pod_informer = informers.for_resource(pods.RESOURCE)
        self.pod_informer.add_index(NODE_NAME, by_node_name)
        self.node_informer = informers.for_resource(nodes.RESOURCE)
        super().__init__(store.clock, [self.pod_informer, self.node_informer])
        self.store = store
        # kube-controller-manager's controllers name no host in their Events.
        self.events = EventRecorder(store, store.clock, COMPONENT, "")
        self._evictions: dict[str, _Eviction] = {}
        self.add_handler(
            self.pod_informer,
            EventHandler(
                on_add=self._pod_added,
                on_update=self._pod_updated,
                on_delete=lambda pod: self.enqueue(object_key(pod)),
            ),
        )
        self.add_handler(
            self.node_informer,
            EventHandler(
                on_add=self._node_changed,
                on_update=self._node_updated,
                on_delete=self._node_changed,
            ),
        )

    def new_term(self) -> None:
        self._evictions.clear()

    def _pod_added(self, pod: Object) -> None:
        if get_path(pod, "spec", "nodeName"):
            self.enqueue(object_key(pod))

    def _pod_updated(self, old: Object, new: Object) -> None:
        # Only the node and the tolerations change what the pod may stay under.
        if _placement(old) != _placement(new):
            self.enqueue(object_key(new))

    def _node_updated(self, old: Object, new: Object) -> None:
        if no_execute_taints(old) != no_execute_taints(new):
            self._node_changed(new)

    def _node_changed(self, node: Object) -> None:
        for pod in self.pod_informer.cache.by_index(NODE_NAME, name_of(node)):
            self.enqueue(object_key(pod))

    async def sync(self, key: str) -> None:
        pod = self.pod_informer.get(key)
        node_name = get_path(pod, "spec", "nodeName")
        if pod is None or not node_name:
            self._cancel(key)
            return
        taints = no_execute_taints(self.node_informer.get(str(node_name)))
        tolerations = [t for t in get_path(pod, "spec", "tolerations") or [] if isinstance(t, dict)]
        allowed = toleration_time(taints, tolerations) if taints else None
        if allowed is None:
            self._cancel(key)
            return
        now = self.clock.seconds()
        eviction = self._evictions.get(key)
        if eviction is None:
            eviction = self._evictions[key] = _Eviction(now, now + allowed)
        elif eviction.done:
            return  # deleted already; the pod is on its way out
        else:
            eviction.due = eviction.started + allowed
        if now < eviction.due:
            self.queue.add_after(key, eviction.due - now + _SLACK)
            return
        await self._evict(key, pod, eviction)

    def _cancel(self, key: str) -> None:
        eviction = self._evictions.pop(key, None)
        if eviction is not None and not eviction.done:
            self._log.info("Cancelling deletion of pod {pod}", pod=key)
            self.events.emit(
                _reference(key),
                NORMAL,
                EVICTION_REASON,
                f"Cancelling deletion of Pod {key}",
            )

    async def _evict(self, key: str, pod: Object, eviction: _Eviction) -> None:
        namespace, name = split_key(key)
        self._log.info(
            "Deleting pod {pod}: it does not tolerate the NoExecute taints of node {node}",
            pod=key,
            node=get_path(pod, "spec", "nodeName"),
        )
        self.events.emit(
            _reference(key), NORMAL, EVICTION_REASON, f"Marking for deletion Pod {key}"
        )
        now = self.store.now()

        def mark(current: Object) -> Object:
            set_condition(current.setdefault("status", {}), dict(DISRUPTION_CONDITION), now)
            return current

        if await update_status_if_present(self.store, pods.RESOURCE, namespace, name, mark):
            await delete_if_present(self.store, pods.RESOURCE, namespace, name)
        eviction.done = True


def _placement(pod: Object) -> tuple[object, object]:
    return get_path(pod, "spec", "nodeName"), get_path(pod, "spec", "tolerations")


def _reference(key: str) -> Object:
    """The pod as kube's taint manager names it in Events: no uid."""
    namespace, _, name = key.partition("/")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": namespace, "name": name}}
