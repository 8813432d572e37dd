"""
Who is asking, and may they: client certificates (CN user, O groups, read by
L{k3stw.machinery.identity}) signed by the client CA authenticate; then, as
kube-apiserver's ``--authorization-mode=Node,RBAC`` behind its privileged
group: ``system:masters`` may do everything, nodes get the node authorizer,
and everyone gets what RBAC (L{k3stw.apiserver.rbac}) grants, if the server
gives the authorizer one.  Without RBAC everyone else is refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from k3stw.apiserver.kinds.pods import references
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.machinery.cache import NODE_NAME, by_node_name
from k3stw.machinery.identity import MASTERS, User
from k3stw.machinery.informer import Informer
from k3stw.machinery.objects import Object, metadata

if TYPE_CHECKING:
    from k3stw.apiserver.rbac import RBAC

READ_VERBS = frozenset({"get", "list", "watch"})
#: The group of an unauthenticated (anonymous) user.
UNAUTHENTICATED = "system:unauthenticated"

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


#: What a kubelet may get when one of its pods uses it (kube's node authorizer graph).
_NODE_REFERENCED = frozenset(
    {
        ("", "secrets"),
        ("", "configmaps"),
        ("", "persistentvolumeclaims"),
        ("", "persistentvolumes"),
    }
)


@dataclass(frozen=True)
class Attributes:
    """
    One request as the authorizer sees it (kube's ``authorizer.Attributes``):
    a verb on a resource of a group, or, for a non-resource request, on a path.
    """

    verb: str
    group: str = ""
    resource: str = ""
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    path: str | None = None

    @classmethod
    def of(
        cls,
        verb: str,
        resource: ResourceType,
        namespace: str | None,
        name: str | None,
        subresource: str | None,
    ) -> Attributes:
        """A request on a served resource; a namespace's own requests are in that namespace."""
        if (resource.group, resource.plural) == ("", "namespaces") and name:
            namespace = name
        return cls(verb, resource.group, resource.plural, namespace, name, subresource)

    @classmethod
    def for_path(cls, verb: str, path: str) -> Attributes:
        """A non-resource request (``/healthz``, ``/metrics``, discovery)."""
        return cls(verb, path=path)


@dataclass(frozen=True)
class Decision:
    """An authorizer's answer, with kube's reason (which binding allowed, what was missing)."""

    allowed: bool
    reason: str = ""


#: Looks up what a node's pods reference: (namespace, kind, name) -> referenced?
PodReferenceCheck = Callable[[str, str, str, str], Awaitable[bool]]


def forbidden(user: User, attributes: Attributes, reason: str = "") -> StatusError:
    """kube-apiserver's words for a refused request."""
    a = attributes
    if a.path is not None:
        message = f'forbidden: User "{user.name}" cannot {a.verb} path "{a.path}"'
        details: dict[str, str] = {}
    else:
        what = a.resource + (f"/{a.subresource}" if a.subresource else "")
        qualified = f"{a.resource}.{a.group}" if a.group else a.resource
        subject = f'{qualified} "{a.name}"' if a.name else qualified
        where = f'in the namespace "{a.namespace}"' if a.namespace else "at the cluster scope"
        message = (
            f'{subject} is forbidden: User "{user.name}" cannot {a.verb} resource '
            f'"{what}" in API group "{a.group}" {where}'
        )
        details = {"kind": a.resource, "group": a.group}
        if a.name:
            details["name"] = a.name
    if reason:
        message += f": {reason}"
    return StatusError(403, message, details)


class Authorizer:
    """
    The chain every request passes: the privileged group, the node authorizer,
    then RBAC (when given).

    :param pod_uses: answers whether a pod bound to a node references a
        secret or configmap, for the node authorizer.
    :param allow_all: allow every request (kube's ``AlwaysAllow`` mode), only
        to measure what authorization costs (``--unchecked-api``).
    """

    def __init__(
        self, pod_uses: PodReferenceCheck, rbac: RBAC | None = None, allow_all: bool = False
    ) -> None:
        self.pod_uses = pod_uses
        self.rbac = rbac
        self.allow_all = allow_all

    async def decide(self, user: User, attributes: Attributes) -> Decision:
        """Whether C{user} may, and kube's reason."""
        if MASTERS in user.groups or self.allow_all:
            return Decision(True)
        node = user.node_name
        if node is not None and attributes.path is None:
            if await _node_may(node, attributes, self.pod_uses):
                return Decision(True)
            if (
                attributes.resource == "nodes"
                and attributes.name
                and attributes.subresource != "proxy"
                and attributes.group == ""
            ):
                return Decision(
                    False, f'node "{node}" is not allowed to modify node "{attributes.name}"'
                )
        if self.rbac is not None:
            return self.rbac.decide(user, attributes)
        return Decision(False)

    async def authorize(self, user: User, attributes: Attributes) -> None:
        """Allow the request or raise kube's 403 L{StatusError}."""
        decision = await self.decide(user, attributes)
        if not decision.allowed:
            raise forbidden(user, attributes, decision.reason)


async def authorize(user: User, attributes: Attributes, pod_uses: PodReferenceCheck) -> None:
    """Allow the request or raise a 403 L{StatusError}, without RBAC."""
    await Authorizer(pod_uses).authorize(user, attributes)


async def _node_may(node: str, a: Attributes, pod_uses: PodReferenceCheck) -> bool:
    """The node authorizer: what one kubelet may do, and no more."""
    key = (a.group, a.resource)
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
    if key in _NODE_REFERENCED and a.verb == "get" and a.name and a.subresource is None:
        return await pod_uses(node, a.namespace or "", a.resource, a.name)
    if key == ("", "serviceaccounts") and a.subresource == "token" and a.verb == "create":
        # The kubelet asks for the tokens of its pods' service accounts.
        return bool(a.name) and await pod_uses(node, a.namespace or "", a.resource, a.name or "")
    return False


class NodePods:
    """
    The node authorizer's view of the pods bound to a node: whether C{name} is
    one of them (kind ``pods``), or a secret, configmap, claim or service
    account one of them uses, or the volume bound to such a claim.

    With the server's pods informer (C{bound}), the node's pods come from its
    index by node, as kube's node authorizer reads its graph: every kubelet
    request for a volume's configmap or secret would otherwise decode all
    the namespace's pods.  Until that informer has synced, the store is read.
    """

    def __init__(
        self,
        store: ObjectStore,
        pods: ResourceType,
        volumes: ResourceType | None = None,
        bound: Informer | None = None,
    ) -> None:
        self.store = store
        self.pods = pods
        self.volumes = volumes
        self.bound = bound
        if bound is not None:
            bound.add_index(NODE_NAME, by_node_name)

    async def __call__(self, node: str, namespace: str, kind: str, name: str) -> bool:
        if kind == "persistentvolumes":
            if self.volumes is None:
                return False
            try:
                volume = await self.store.get(self.volumes, None, name)
            except StatusError:
                return False
            claim = (volume.get("spec") or {}).get("claimRef") or {}
            return bool(claim.get("name")) and await self(
                node, str(claim.get("namespace", "")), "persistentvolumeclaims", claim["name"]
            )
        if kind == "pods":
            try:
                pod = await self.store.get(self.pods, namespace, name)
            except StatusError:
                return False
            return bool(pod.get("spec", {}).get("nodeName") == node)
        return any(name in references(pod, kind) for pod in await self._node_pods(node, namespace))

    async def _node_pods(self, node: str, namespace: str) -> Iterable[Object]:
        if self.bound is not None and self.bound.synced:
            return [
                pod
                for pod in self.bound.cache.by_index(NODE_NAME, node)
                if metadata(pod).get("namespace") == namespace
            ]
        listed = await self.store.list(
            self.pods, namespace, lambda p: p.get("spec", {}).get("nodeName") == node
        )
        return listed.items
