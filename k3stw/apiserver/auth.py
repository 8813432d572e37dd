"""
Who is asking, and may they: client certificates (CN user, O groups, read by
L{k3stw.machinery.identity}) signed by the client CA authenticate;
``system:masters`` may do everything, nodes get a node authorizer, and
everyone else is refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from k3stw.apiserver.kinds.pods import references
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.machinery.identity import MASTERS, User

READ_VERBS = frozenset({"get", "list", "watch"})

#: What a kubelet reads, besides the secrets and configmaps its pods use.
_NODE_READABLE = frozenset(
    {
        ("", "nodes"),
        ("", "pods"),
        ("", "services"),
        ("", "endpoints"),
        ("", "namespaces"),
        ("", "events"),
        ("", "serviceaccounts"),
        ("coordination.k8s.io", "leases"),
        ("discovery.k8s.io", "endpointslices"),
    }
)


@dataclass(frozen=True)
class Attributes:
    """One request as the authorizer sees it."""

    verb: str
    resource: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


#: Looks up what a node's pods reference: (namespace, kind, name) -> referenced?
PodReferenceCheck = Callable[[str, str, str, str], Awaitable[bool]]


def forbidden(user: User, attributes: Attributes, reason: str = "") -> StatusError:
    """kube-apiserver's RBAC wording for a refused request."""
    resource = attributes.resource
    what = resource.plural + (f"/{attributes.subresource}" if attributes.subresource else "")
    subject = f'{what} "{attributes.name}"' if attributes.name else what
    where = (
        f'in the namespace "{attributes.namespace}"'
        if attributes.namespace and resource.namespaced
        else "at the cluster scope"
    )
    message = (
        f'{subject} is forbidden: User "{user.name}" cannot {attributes.verb} resource '
        f'"{what}" in API group "{resource.group}" {where}'
    )
    if reason:
        message += f": {reason}"
    details = {"kind": resource.plural, "group": resource.group}
    if attributes.name:
        details["name"] = attributes.name
    return StatusError(403, message, details)


async def authorize(user: User, attributes: Attributes, pod_uses: PodReferenceCheck) -> None:
    """
    Allow the request or raise a 403 L{StatusError}.

    :param pod_uses: answers whether a pod bound to a node references a
        secret or configmap, for the node authorizer.
    """
    if MASTERS in user.groups:
        return
    node = user.node_name
    if node is not None and await _node_may(node, attributes, pod_uses):
        return
    reason = ""
    if (
        node is not None
        and attributes.resource.plural == "nodes"
        and attributes.name
        and attributes.subresource != "proxy"
    ):
        reason = f'node "{node}" is not allowed to modify node "{attributes.name}"'
    raise forbidden(user, attributes, reason)


async def _node_may(node: str, a: Attributes, pod_uses: PodReferenceCheck) -> bool:
    """The node authorizer: what one kubelet may do, and no more."""
    key = (a.resource.group, a.resource.plural)
    if a.verb in READ_VERBS and key in _NODE_READABLE and a.subresource is None:
        return True
    if key == ("", "nodes"):
        # Never nodes/proxy: one kubelet reaching another's API is an admin's power.
        return (
            a.subresource in (None, "status")
            and a.name == node
            and a.verb in {"create", "update", "patch", "get"}
        )
    if key == ("coordination.k8s.io", "leases"):
        return (
            a.namespace == "kube-node-lease"
            and a.name in (node, None)
            and (a.verb in {"create", "update", "patch", "get", "delete"})
        )
    if key == ("", "events"):
        return a.verb in {"create", "update", "patch"}
    if key == ("", "pods") and a.name and a.namespace:
        if a.subresource == "status" and a.verb in {"update", "patch", "get"}:
            return await pod_uses(node, a.namespace, "pods", a.name)
        if a.subresource is None and a.verb == "delete":
            return await pod_uses(node, a.namespace, "pods", a.name)
        return False
    if key in {("", "secrets"), ("", "configmaps")} and a.verb == "get" and a.name:
        return await pod_uses(node, a.namespace or "", a.resource.plural, a.name)
    return False


class NodePods:
    """
    The node authorizer's view of the pods bound to a node: whether C{name} is
    one of them (kind ``pods``), or a secret or configmap one of them uses.
    """

    def __init__(self, store: ObjectStore, pods: ResourceType) -> None:
        self.store = store
        self.pods = pods

    async def __call__(self, node: str, namespace: str, kind: str, name: str) -> bool:
        if kind == "pods":
            try:
                pod = await self.store.get(self.pods, namespace, name)
            except StatusError:
                return False
            return bool(pod.get("spec", {}).get("nodeName") == node)
        listed = await self.store.list(
            self.pods, namespace, lambda p: p.get("spec", {}).get("nodeName") == node
        )
        return any(name in references(pod, kind) for pod in listed.items)
