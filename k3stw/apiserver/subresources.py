"""
Subresources: which a request may name, what a write through ``status`` (or
around it) may change, and the connect subresources relayed to kubelets and
pods: ``nodes/<name>/proxy``, ``pods/<name>/log|exec|attach|portforward|proxy``
and ``services/<name>/proxy`` (L{k3stw.apiserver.podconnect}).
"""

from __future__ import annotations

from twisted.web.server import Request

from k3stw.apiserver.auth import Attributes, Authorizer
from k3stw.apiserver.nodeproxy import NodeProxy, proxied_target
from k3stw.apiserver.podconnect import METHODS, Connect, connect_route, relay
from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.apiserver.status import NOT_ALLOWED, StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.machinery.identity import User

__all__ = ["NOT_FOUND", "check_served", "connect_route", "proxy_to_node", "serve_connect"]

NOT_FOUND = "the server could not find the requested resource"
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
    """404 for a subresource the resource lacks."""
    if subresource is not None and subresource not in resource.subresources:
        raise StatusError(404, NOT_FOUND)


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
        raise StatusError(405, NOT_ALLOWED)
    await authorizer.authorize(user, Attributes.of(verb, nodes, None, node, "proxy"))
    if proxy is None:
        raise StatusError(501, "the proxy subresource is not available in this release")
    # api/v1/nodes/<node>/proxy
    await proxy.relay(request, node, proxied_target(request, 5))


async def serve_connect(
    request: Request,
    user: User,
    connect: Connect,
    registry: Registry,
    store: ObjectStore,
    proxy: NodeProxy | None,
    authorizer: Authorizer,
) -> None:
    """
    A pod's or service's connect subresource: authorized as the verb of its
    method (kube 1.32 authorizes a websocket ``exec`` as ``get``, SPDY's
    POST as ``create``), then relayed.
    """
    verb = PROXY_VERBS.get(request.method)
    if verb is None:
        raise StatusError(405, NOT_ALLOWED)
    resource = registry.require("", "v1", connect.plural)
    attributes = Attributes.of(verb, resource, connect.namespace, connect.name, connect.subresource)
    await authorizer.authorize(user, attributes)
    if request.method not in METHODS[connect.plural, connect.subresource]:
        raise StatusError(405, NOT_ALLOWED)
    if proxy is None:
        message = f"the {connect.subresource} subresource is not available in this release"
        raise StatusError(501, message)
    await relay(request, connect, store, lambda plural: registry.require("", "v1", plural), proxy)
