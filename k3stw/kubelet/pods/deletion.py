"""
The kubelet's last word on a pod marked for deletion: the DELETE with grace
period 0 and the pod's UID as precondition that removes the object, once
nothing of the pod runs.  The API server only marks a bound pod
(``deletionTimestamp``); this is what finishes it.

A node with no container runtime (``--container-runtime none``) runs
nothing, so L{NoRuntimePods} confirms each deletion at once, after writing
the terminal phase a kubelet writes of a pod it stopped (``Failed``: a Job
that replaces only failed pods counts it by that).  This module
imports nothing of CRI: a node without a runtime never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from k3stw.kubeclient import KubeAPI, KubeAPIError
from k3stw.logs import Logger
from k3stw.machinery.informer import Informer, Retention, each_change
from k3stw.machinery.objects import Object, get_path, metadata, without_managed_fields
from k3stw.machinery.source import HTTPSource

#: How long a failed confirmation waits before it is tried again.
RETRY = 1.0


def pod_path(pod: Mapping[str, Any]) -> str:
    meta = metadata(pod)
    return f"/api/v1/namespaces/{meta.get('namespace')}/pods/{meta.get('name')}"


def node_pods(client: KubeAPI, clock: IReactorTime, node_name: str) -> Informer:
    """An informer of the pods bound to the node (the kubelet never reads their managed fields)."""
    source = HTTPSource(client, "/api/v1/pods", {"fieldSelector": f"spec.nodeName={node_name}"})
    return Informer(source, clock, retention=Retention(trim=without_managed_fields))


async def confirm_deletion(client: KubeAPI, pod: Object) -> None:
    """Delete the pod object for good, unless it is gone or another pod took its name."""
    body = {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "gracePeriodSeconds": 0,
        "preconditions": {"uid": metadata(pod).get("uid")},
    }
    try:
        await client.call("DELETE", pod_path(pod), body)
    except KubeAPIError as e:
        if e.code == 403 and await _gone(client, pod):
            # The node authorizer finds no pod of this node to allow: it went meanwhile.
            return
        if e.code not in (404, 409):
            raise


async def _gone(client: KubeAPI, pod: Object) -> bool:
    """Whether the API no longer holds this pod (by name and uid)."""
    try:
        found = await client.call("GET", pod_path(pod))
    except KubeAPIError as e:
        return e.code == 404
    return bool(metadata(found).get("uid") != metadata(pod).get("uid"))


class NoRuntimePods(MultiService):
    """A node that runs no pods: every pod of it marked for deletion is deleted at once."""

    _log = Logger()

    def __init__(self, clock: IReactorTime, client: KubeAPI, node_name: str) -> None:
        super().__init__()
        self.clock = clock
        self.client = client
        self.informer = node_pods(client, clock, node_name)
        self.informer.setServiceParent(self)
        self.informer.add_handler(each_change(self._changed, deletions=False))
        self._retries: dict[str, IDelayedCall] = {}
        #: The UIDs of the pods being finished now (their own status write is heard meanwhile).
        self._busy: set[str] = set()

    def stopService(self) -> Deferred[None] | None:
        for call in self._retries.values():
            call.cancel()
        self._retries.clear()
        stopped: Deferred[None] | None = super().stopService()
        return stopped

    def _changed(self, pod: Object) -> None:
        uid = str(metadata(pod).get("uid"))
        if self.running and metadata(pod).get("deletionTimestamp") and uid not in self._busy:
            self._busy.add(uid)
            done = Deferred.fromCoroutine(self._finish(pod))
            done.addErrback(self._failed, pod)
            done.addBoth(lambda _: self._busy.discard(uid))

    async def _finish(self, pod: Object) -> None:
        if get_path(pod, "status", "phase") not in ("Succeeded", "Failed"):
            patch = {"status": {"phase": "Failed"}}
            try:
                await self.client.call(
                    "PATCH", pod_path(pod) + "/status", patch, "application/merge-patch+json"
                )
            except KubeAPIError as e:
                if e.code != 404:
                    raise
                return
        await confirm_deletion(self.client, pod)

    def _failed(self, failure: Failure, pod: Object) -> None:
        self._log.warn(
            "Deleting pod {pod} failed, trying again: {error}",
            pod=metadata(pod).get("name"),
            error=failure.value,
        )
        key = f"{metadata(pod).get('namespace')}/{metadata(pod).get('name')}"
        if self.running and key not in self._retries:
            self._retries[key] = self.clock.callLater(RETRY, self._retry, key, pod)

    def _retry(self, key: str, pod: Object) -> None:
        del self._retries[key]
        current = self.informer.get(key)
        if current is not None and metadata(current).get("uid") == metadata(pod).get("uid"):
            self._changed(current)
