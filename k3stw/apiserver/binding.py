"""
``pods/<name>/binding``: how a scheduler places a pod.  A ``Binding`` names
the node; the pod gets it as ``spec.nodeName`` and the ``PodScheduled``
condition, once: a pod already placed is a conflict, as in kube-apiserver.
"""

from __future__ import annotations

from typing import Any

from k3stw.apiserver.kinds import pods
from k3stw.apiserver.status import StatusError, invalid
from k3stw.apiserver.storage import ObjectStore
from k3stw.machinery.objects import Object, find_condition


def _node_of(binding: Any, name: str) -> str:
    target = binding.get("target") if isinstance(binding, dict) else None
    if not isinstance(target, dict) or not target.get("name"):
        raise invalid("Binding", name, [("target.name", "Required value")])
    if target.get("kind") not in (None, "", "Node"):
        message = f'Invalid value: "{target["kind"]}": must be empty or "Node"'
        raise invalid("Binding", name, [("target.kind", message)])
    node: str = target["name"]
    return node


async def bind(store: ObjectStore, namespace: str, name: str, binding: Any) -> Object:
    """Place pod C{name} on the node C{binding} names; kube-apiserver's Success Status (201)."""
    node = _node_of(binding, name)
    annotations = ((binding.get("metadata") or {}).get("annotations")) or {}
    now = store.now()

    def assign(pod: Object) -> Object:
        if pod["metadata"].get("deletionTimestamp"):
            raise StatusError(409, f"pod {name} is being deleted, cannot be assigned to a host")
        assigned = (pod.get("spec") or {}).get("nodeName")
        if assigned:
            raise StatusError(409, f'pod {name} is already assigned to node "{assigned}"')
        pod.setdefault("spec", {})["nodeName"] = node
        if annotations:
            pod["metadata"].setdefault("annotations", {}).update(annotations)
        conditions = pod.setdefault("status", {}).setdefault("conditions", [])
        scheduled = find_condition(pod, "PodScheduled")
        if scheduled is None:
            scheduled = {"type": "PodScheduled"}
            conditions.append(scheduled)
        scheduled.update(status="True", lastTransitionTime=now)
        scheduled.pop("reason", None)
        scheduled.pop("message", None)
        return pod

    await store.guaranteed_update(pods.RESOURCE, namespace, name, assign, subresource="binding")
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
