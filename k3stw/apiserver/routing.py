"""
The Kubernetes REST API as a twisted.web resource: ``/version``, ``/api``,
``/apis``, ``/openapi`` and every resource path below them.

Routing only: it finds the resource, object and subresource a path names
and the verb its method means, asks L{k3stw.apiserver.auth} whether the
caller (or whom it impersonates) may, and hands the request to L{Verbs} (or,
for ``nodes/<name>/proxy``, to the node proxy; for ``metrics.k8s.io``, to the
resource metrics).  Every failure leaves as a ``Status``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from urllib.parse import unquote
from weakref import WeakKeyDictionary

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from k3stw.apiserver import discovery
from k3stw.apiserver.accessreviews import access_reviews
from k3stw.apiserver.auth import Attributes, Authorizer, NodePods
from k3stw.apiserver.health import ENDPOINTS as HEALTH_ENDPOINTS
from k3stw.apiserver.health import Health
from k3stw.apiserver.impersonation import impersonate, requested
from k3stw.apiserver.kinds.rbac import Admission, admission
from k3stw.apiserver.metrics import CONTENT_TYPE, APIMetrics, RequestLabels
from k3stw.apiserver.metricsapi import ResourceMetrics, is_resource_metrics
from k3stw.apiserver.nodeproxy import NodeProxy
from k3stw.apiserver.patch import PatchError
from k3stw.apiserver.rbac import RBAC
from k3stw.apiserver.registry import Registry
from k3stw.apiserver.request import (
    APPLY_PATCH,
    answer,
    answer_raw,
    as_status_error,
    flag,
    media_type,
    object_body,
    param,
    peek_body,
    peek_name,
)
from k3stw.apiserver.reviews import Review, answer_review, is_review
from k3stw.apiserver.status import NOT_ALLOWED, StatusError, status
from k3stw.apiserver.storage import ObjectStore
from k3stw.apiserver.subresources import (
    NOT_FOUND,
    check_served,
    connect_route,
    proxy_to_node,
    serve_connect,
)
from k3stw.apiserver.tables import TableOptionError
from k3stw.apiserver.tokens.request import restrict_node_token
from k3stw.apiserver.verbs import POSTED_SUBRESOURCES, Target, TokenRequests, Verbs
from k3stw.logs import Logger
from k3stw.machinery.identity import User, authenticated, user_of_certificate
from k3stw.machinery.informer import Informer
from k3stw.machinery.labels import SelectorError

_METHOD_VERBS = {b"POST": "create", b"PUT": "update", b"PATCH": "patch", b"DELETE": "delete"}

#: Who a bearer token names, or None for a token it does not know.
TokenAuthenticator = Callable[[str], Awaitable[User | None]]


class KubernetesAPI(Resource):
    """
    The whole API subtree; mounted at ``/api``, ``/apis``, ``/version``,
    ``/openapi`` and the health endpoints (``/healthz``, ``/livez``, ``/readyz``).
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        store: ObjectStore,
        registry: Registry,
        clock: IReactorTime,
        server_address: str,
        node_proxy: NodeProxy | None = None,
        health: Health | None = None,
        metrics: APIMetrics | None = None,
        tokens: TokenAuthenticator | None = None,
        reviews: Mapping[tuple[str, str], Review] | None = None,
        token_requests: TokenRequests | None = None,
        rbac: RBAC | None = None,
        checks: bool = True,
        resource_metrics: ResourceMetrics | None = None,
        bound_pods: Informer | None = None,
    ) -> None:
        """
        :param tokens: authenticates bearer tokens (client certificates are
            tried first); without it only certificates authenticate.
        :param reviews: the create-only reviews answered, by (group, plural),
            besides the access reviews the authorizer answers.
        :param token_requests: answers ``serviceaccounts/<name>/token``.
        :param rbac: the RBAC authorizer (after the node authorizer); without
            it only ``system:masters`` and nodes are allowed anything.
        :param checks: whether requests are authorized (and, by the store,
            validated); off only to measure what that costs (``--unchecked-api``).
        :param resource_metrics: answers ``metrics.k8s.io`` (when the registry
            serves it).
        :param bound_pods: the server's pods informer, which the node
            authorizer reads a node's pods from once it has synced.
        """
        super().__init__()
        self.tokens = tokens
        self.health = health or Health(())
        self.metrics = metrics or APIMetrics()
        self.store = store
        self.registry = registry
        self.clock = clock
        self.server_address = server_address
        self.node_proxy = node_proxy
        self.verbs = Verbs(
            store,
            clock,
            self.metrics.watch_event,
            registry.lookup("policy", "v1", "poddisruptionbudgets"),
            token_requests,
        )
        self.openapi = discovery.OpenAPI(registry)
        self.pod_uses = NodePods(
            store,
            registry.require("", "v1", "pods"),
            registry.lookup("", "v1", "persistentvolumes"),
            bound_pods,
        )
        self.authorizer = Authorizer(self.pod_uses, rbac, allow_all=not checks)
        self.admission: Mapping[tuple[str, str], Admission] = (
            admission(rbac) if rbac is not None and checks else {}
        )
        self.reviews = {**access_reviews(self.authorizer), **(reviews or {})}
        self.resource_metrics = resource_metrics
        self._users: WeakKeyDictionary[object, User] = WeakKeyDictionary()

    def render(self, request: Request) -> int:
        Deferred.fromCoroutine(self._respond(request))
        return NOT_DONE_YET

    async def _respond(self, request: Request) -> None:
        started = self.clock.seconds()
        try:
            await self._serve(request)
        finally:
            labels = getattr(request, "metric_labels", None) or RequestLabels(
                request.method.decode("latin-1")
            )
            self.metrics.observe(labels, request.code, self.clock.seconds() - started)

    async def _serve(self, request: Request) -> None:
        try:
            await self._dispatch(request)
        except StatusError as e:
            answer(request, e.code, e.status())
        except (SelectorError, TableOptionError, PatchError) as e:
            error = as_status_error(e)
            answer(request, error.code, error.status())
        except Exception:
            self._log.failure(
                "Internal error serving {method} {path}",
                Failure(),
                method=request.method,
                path=request.path,
            )
            answer(request, 500, status(500, "Internal error occurred"))

    async def _dispatch(self, request: Request) -> None:
        if getattr(request, "body_too_large", False):
            raise StatusError(413, "Request entity too large: limit is 3145728")
        parts = [unquote(p) for p in request.path.decode("latin-1").strip("/").split("/") if p]
        head = parts[0] if parts else ""
        user = await self._authenticate(request)
        asked = requested(request.requestHeaders.getAllRawHeaders())
        if asked is not None:
            user = await impersonate(self.authorizer, user, asked)
        if not _is_resource_request(parts):
            # /healthz, /metrics, discovery...: RBAC's nonResourceURLs say who may.
            path = request.path.decode("latin-1")
            verb = request.method.decode("latin-1").lower()
            await self.authorizer.authorize(user, Attributes.for_path(verb, path))
        if head == "openapi":
            self._openapi(request, parts[1:])
        elif head in HEALTH_ENDPOINTS:
            await self.health.answer(request, head, parts[1:])
        elif head == "metrics" and len(parts) == 1:
            answer_raw(request, self.metrics.exposition(), CONTENT_TYPE)
        elif head == "version" and len(parts) == 1:
            answer(request, 200, discovery.version_info())
        elif head == "api":
            await self._group(request, user, "", parts[1:])
        elif head == "apis" and len(parts) == 1:
            self._discovery(request, core=False)
        elif head == "apis" and len(parts) == 2:
            answer(request, 200, _found(discovery.api_group(self.registry, parts[1])))
        elif head == "apis":
            await self._group(request, user, parts[1], parts[2:])
        else:
            raise StatusError(404, NOT_FOUND)

    async def _authenticate(self, request: Request) -> User:
        """
        The user of the connection's client certificate, else of the request's
        bearer token; in ``system:authenticated`` either way, as in kube-apiserver.
        """
        # A connection's client certificate never changes: read it once per connection.
        channel = request.channel
        user = self._users.get(channel)
        if user is not None:
            return user
        transport = getattr(request, "transport", None)
        certificate = transport.getPeerCertificate() if transport is not None else None
        user = user_of_certificate(certificate) if certificate is not None else None
        if user is not None:
            user = self._users[channel] = authenticated(user)
            return user
        scheme, _, token = (request.getHeader(b"authorization") or b"").partition(b" ")
        if self.tokens is not None and scheme.lower() == b"bearer" and token.strip():
            user = await self.tokens(token.strip().decode("latin-1"))
        if user is None:
            raise StatusError(401, "Unauthorized")
        return authenticated(user)

    # Discovery

    def _openapi(self, request: Request, parts: list[str]) -> None:
        if parts == ["v3"]:
            answer_raw(request, self.openapi.index(), b"application/json")
        elif parts[:1] == ["v3"] and (document := self.openapi.document("/".join(parts[1:]))):
            # Kept compressed: sent as it is to a client that takes gzip (kubectl does).
            accepted = (request.getHeader(b"accept-encoding") or b"").lower()
            if b"gzip" in accepted:
                request.setHeader(b"content-encoding", b"gzip")
                answer_raw(request, document, b"application/json")
            else:
                answer_raw(request, gzip.decompress(document), b"application/json")
        else:
            # v2 is asked for as protobuf only; a JSON v2 document breaks kubectl apply.
            raise StatusError(404, NOT_FOUND)

    def _discovery(self, request: Request, core: bool) -> None:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        if "as=APIGroupDiscoveryList" in accept:
            body = json.dumps(discovery.aggregated_discovery(self.registry, core)).encode()
            answer_raw(request, body, discovery.AGGREGATED_CONTENT_TYPE.encode())
        elif core:
            answer(request, 200, discovery.api_versions(self.server_address))
        else:
            answer(request, 200, discovery.api_group_list(self.registry))

    # Resources

    async def _group(self, request: Request, user: User, group: str, parts: list[str]) -> None:
        if not group and not parts:
            self._discovery(request, core=True)
            return
        if not parts:
            raise StatusError(404, NOT_FOUND)
        version, rest = parts[0], parts[1:]
        if not rest:
            answer(request, 200, _found(discovery.api_resource_list(self.registry, group, version)))
            return
        if (group, version) == ("", "v1") and rest[0] == "nodes" and rest[2:3] == ["proxy"]:
            nodes = self.registry.require("", "v1", "nodes")
            await proxy_to_node(request, user, nodes, rest[1], self.node_proxy, self.authorizer)
            return
        if (group, version) == ("", "v1") and (connect := connect_route(rest)) is not None:
            await serve_connect(
                request, user, connect, self.registry, self.store, self.node_proxy, self.authorizer
            )
            return
        target = self._target(group, version, rest)
        verb = _verb(request, target)
        labelled = "apply" if verb == "patch" and media_type(request) == APPLY_PATCH else verb
        request.metric_labels = RequestLabels.of(  # type: ignore[attr-defined]
            labelled,
            target.resource,
            target.namespace,
            target.name,
            target.subresource,
            param(request, "dryRun") == "All",
        )
        if verb == "create" and user.node_name is not None and target.subresource is None:
            # A node may create only its own Node (NodeRestriction): authorize the named object.
            target = Target(target.resource, target.namespace, peek_name(request), None)
        await self.authorizer.authorize(
            user,
            Attributes.of(verb, target.resource, target.namespace, target.name, target.subresource),
        )
        if user.node_name is not None and target.subresource == "token" and target.name:
            body = peek_body(request)
            await restrict_node_token(
                self.store, user.node_name, target.namespace or "", target.name, body
            )
        if is_review(target.resource):
            body = object_body(request)
            reviewed = await answer_review(
                self.reviews, user, target.resource, target.namespace, body
            )
            answer(request, 201, reviewed)
            return
        if is_resource_metrics(target.resource):
            if self.resource_metrics is None:
                raise StatusError(503, "the resource metrics are not available")
            await self.resource_metrics.serve(request, verb, target)
            return
        check = self.admission.get((target.resource.group, target.resource.plural))
        admit = None if check is None else partial(check, user, target.namespace)
        await self.verbs.serve(request, verb, target, admit)

    def _target(self, group: str, version: str, rest: list[str]) -> Target:
        """What ``[namespaces/<ns>/]<plural>[/<name>[/<subresource>]]`` names."""
        lookup = self.registry.lookup
        if len(rest) >= 3 and rest[0] == "namespaces":
            inner = lookup(group, version, rest[2])
            if inner is not None and inner.namespaced and len(rest) <= 5:
                name = rest[3] if len(rest) > 3 else None
                sub = rest[4] if len(rest) > 4 else None
                check_served(inner, sub)
                return Target(inner, rest[1], name, sub)
        resource = lookup(group, version, rest[0])
        if resource is None or len(rest) > 3 or (resource.namespaced and len(rest) > 1):
            raise StatusError(404, NOT_FOUND)
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        check_served(resource, sub)
        return Target(resource, None, name, sub)


def _is_resource_request(parts: list[str]) -> bool:
    """kube's RequestInfo: ``/api/<v>/...`` and ``/apis/<g>/<v>/...`` name resources."""
    head = parts[0] if parts else ""
    return (head == "api" and len(parts) >= 3) or (head == "apis" and len(parts) >= 4)


def _verb(request: Request, target: Target) -> str:
    """The API verb of a request's method on C{target}."""
    verb = _method_verb(request, target)
    if target.subresource is None and verb not in target.resource.verbs:
        # A create-only review, say: kube-apiserver has no handler for anything else.
        raise StatusError(405, NOT_ALLOWED)
    return verb


def _method_verb(request: Request, target: Target) -> str:
    if request.method in (b"GET", b"HEAD"):
        if target.name:
            return "get"
        return "watch" if flag(request, "watch") else "list"
    verb = _METHOD_VERBS.get(request.method)
    if verb == "create" and target.subresource in POSTED_SUBRESOURCES:
        # A pod's binding is created on the pod (POST .../pods/<name>/binding).
        return verb
    if verb is None or (verb == "create") == bool(target.name):
        if verb == "delete" and not target.name:
            return "deletecollection"
        raise StatusError(405, NOT_ALLOWED)
    return verb


def _found(document: object | None) -> object:
    if document is None:
        raise StatusError(404, NOT_FOUND)
    return document
