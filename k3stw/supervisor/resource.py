"""
The supervisor's HTTP surface on the server's TLS port: ``/cacerts``,
``/ping``, ``/v1-k3s/*`` (``/v1-k3s/connect`` is L{k3stw.supervisor.connect}).
Anything it does not know is a Kubernetes 404 Status.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from k3stw.apiserver.status import StatusError, send_status
from k3stw.logs import Logger
from k3stw.supervisor.nodes import NodeEnrollment

NOT_FOUND = "the server could not find the requested resource"


class Readiness:
    """Whether the server's core is up; ``/v1-k3s/readyz`` reports it."""

    def __init__(self) -> None:
        self.ready = False
        self._waiters: list[Deferred[None]] = []

    def mark_ready(self) -> None:
        self.ready = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def when_ready(self) -> Deferred[None]:
        """Fires once the server is ready."""
        if self.ready:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter


class StatusErrorResource(Resource):
    """Answers every request with one Kubernetes Status error."""

    isLeaf = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self.code = code
        self.message = message

    def render(self, request: IRequest) -> bytes | int:
        return send_status(request, self.code, self.message)


Handler = Callable[[IRequest], bytes | Awaitable[bytes]]


class Route(Resource):
    """
    A path in the supervisor tree.  Unknown children and methods get a
    Status (404, 405) rather than Twisted's HTML pages; a handler may be a
    coroutine, and may raise L{StatusError}.
    """

    _log = Logger()

    def __init__(self, content_type: bytes = b"text/plain", **methods: Handler) -> None:
        super().__init__()
        self.content_type = content_type
        self.methods = {name.encode("ascii"): render for name, render in methods.items()}

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        return StatusErrorResource(404, NOT_FOUND)

    def render(self, request: IRequest) -> bytes | int:
        method = request.method
        if method == b"HEAD" and b"GET" in self.methods:
            method = b"GET"
        render = self.methods.get(method)
        if render is None:
            if not self.methods:
                return send_status(request, 404, NOT_FOUND)
            allowed = b", ".join(sorted(self.methods))
            request.setHeader(b"allow", allowed)
            return send_status(
                request, 405, "the server does not allow this method on the requested resource"
            )
        try:
            result = render(request)
        except StatusError as e:
            return send_status(request, e.code, e.message, e.details)
        if isinstance(result, bytes):
            return result
        Deferred.fromCoroutine(self._finish(request, result))
        return NOT_DONE_YET

    async def _finish(self, request: IRequest, pending: Awaitable[bytes]) -> None:
        try:
            body = await pending
            request.setHeader(b"content-type", self.content_type)
        except StatusError as e:
            if e.code >= 500:
                self._log.warn(
                    "Sending HTTP {code} response to {client}: {error}",
                    code=e.code,
                    client=str(request.getClientAddress()),
                    error=e.message,
                )
            body = send_status(request, e.code, e.message, e.details)
        except Exception:
            self._log.failure("supervisor request {path} failed", path=request.path)
            body = send_status(request, 500, "Internal error occurred")
        if not getattr(request, "_disconnected", False):
            request.write(body)
            request.finish()


def json_object(request: IRequest) -> dict[str, Any]:
    """A request's JSON object body (none: ``{}``), or a 400 saying what is wrong with it."""
    try:
        raw = request.content.read() if request.content is not None else b""
        body = json.loads(raw or b"{}")
    except ValueError as e:
        raise StatusError(400, f"invalid request body: {e}") from None
    if not isinstance(body, dict):
        raise StatusError(400, "invalid request body: expected an object")
    return body


def _text(request: IRequest, body: bytes) -> bytes:
    request.setHeader(b"content-type", b"text/plain")
    request.setHeader(b"cache-control", b"no-cache, private")
    return body


#: kube-apiserver's health endpoints, served by the API.
HEALTH = (b"healthz", b"livez", b"readyz")


def supervisor_resource(
    ca_bundle: bytes,
    readiness: Readiness,
    api: IResource | None = None,
    enrollment: NodeEnrollment | None = None,
    tunnel: IResource | None = None,
    encrypt: IResource | None = None,
) -> Resource:
    """
    The root of the server's HTTPS tree.

    :param ca_bundle: ``server-ca.crt`` as on disk, served by ``/cacerts``.
    :param api: the Kubernetes API, served below ``/api``, ``/apis``,
        ``/version``, ``/openapi``, ``/metrics`` and the health endpoints.
    :param enrollment: the endpoints agents join through.
    :param tunnel: ``/v1-k3s/connect``, where agents open their tunnel.
    :param encrypt: ``/v1-k3s/encrypt``, the secrets-encryption stages.
    """

    def readyz(request: IRequest) -> bytes:
        if not readiness.ready:
            return send_status(request, 503, "runtime core not ready")
        return _text(request, b"ok")

    root = Route()
    root.putChild(b"cacerts", Route(GET=lambda request: _text(request, ca_bundle)))
    root.putChild(b"ping", Route(GET=lambda request: _text(request, b"pong")))
    v1 = Route()
    v1.putChild(b"readyz", Route(GET=readyz))
    if enrollment is not None:
        # Certificates: a CSR POSTed (or, from older agents, a GET for a new key too).
        for name, sign in (
            (b"serving-kubelet.crt", enrollment.serving_kubelet),
            (b"client-kubelet.crt", enrollment.client_kubelet),
            (b"client-kube-proxy.crt", enrollment.client_kube_proxy),
            (b"client-k3s-controller.crt", enrollment.client_k3s_controller),
        ):
            v1.putChild(name, Route(GET=sign, POST=sign))
        v1.putChild(b"client-ca.crt", Route(GET=enrollment.client_ca_bundle))
        v1.putChild(b"server-ca.crt", Route(GET=enrollment.server_ca_file))
        v1.putChild(b"config", Route(b"application/json", GET=enrollment.config))
        v1.putChild(b"apiservers", Route(b"application/json", GET=enrollment.apiservers))
    if tunnel is not None:
        v1.putChild(b"connect", tunnel)
    if encrypt is not None:
        v1.putChild(b"encrypt", encrypt)
    root.putChild(b"v1-k3s", v1)
    if api is not None:
        for path in (b"api", b"apis", b"version", b"openapi", b"metrics", *HEALTH):
            root.putChild(path, api)
    return root
