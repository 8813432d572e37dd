"""
Subresources: which a request may name, what a write through ``status`` (or
around it) may change, and ``nodes/<name>/proxy``, relayed to the node's
kubelet.
"""

from __future__ import annotations

from twisted.web.server import Request

from k3stw.apiserver.auth import Attributes, Authorizer
from k3stw.apiserver.nodeproxy import NodeProxy
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.machinery.identity import User

NOT_FOUND = "the server could not find the requested resource"
#: Subresources a resource may declare that k3stw does not serve yet.
NOT_YET = ("log", "proxy", "finalize")
#: The verb a proxied request is authorized as, by its method (kube-apiserver's RequestInfo).
PROXY_VERBS = {
    b"GET": "get",
    b"HEAD": "get",
    b"POST": "create",
    b"PUT": "update",
    b"PATCH": "patch",
    b"DELETE": "delete",
}


def check_served(resource: ResourceType, subresource: str | None) -> None:
    """404 for a subresource the resource lacks, 501 for one not served in this release."""
    if subresource is None:
        return
    if subresource not in resource.subresources:
        raise StatusError(404, NOT_FOUND)
    if subresource in NOT_YET:
        raise StatusError(501, f"the {subresource} subresource is not available in this release")


async def proxy_to_node(
    request: Request,
    user: User,
    nodes: ResourceType,
    node: str,
    proxy: NodeProxy | None,
    authorizer: Authorizer,
) -> None:
    """``nodes/<node>/proxy/...``: authorized by the request's method, relayed to the kubelet."""
    verb = PROXY_VERBS.get(request.method)
    if verb is None:
        raise StatusError(405, "the server does not allow this method on the requested resource")
    await authorizer.authorize(user, Attributes.of(verb, nodes, None, node, "proxy"))
    if proxy is None:
        raise StatusError(501, "the proxy subresource is not available in this release")
    await proxy.relay(request, node)
