"""
The supervisor's HTTP surface on the server's TLS port: ``/cacerts``,
``/ping``, ``/v1-k3s/*``.  Anything it does not know is a Kubernetes 404 Status.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from k3stw.apiserver.status import send_status

NOT_FOUND = "the server could not find the requested resource"


class Readiness:
    """Whether the server's core is up; ``/v1-k3s/readyz`` reports it."""

    def __init__(self) -> None:
        self.ready = False

    def mark_ready(self) -> None:
        self.ready = True


class StatusErrorResource(Resource):
    """Answers every request with one Kubernetes Status error."""

    isLeaf = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self.code = code
        self.message = message

    def render(self, request: IRequest) -> bytes:
        return send_status(request, self.code, self.message)


class Route(Resource):
    """
    A path in the supervisor tree.  Unknown children and methods get a
    Status (404, 405) rather than Twisted's HTML pages.
    """

    def __init__(self, **methods: Callable[[IRequest], bytes]) -> None:
        super().__init__()
        self.methods = {name.encode("ascii"): render for name, render in methods.items()}

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        return StatusErrorResource(404, NOT_FOUND)

    def render(self, request: IRequest) -> bytes:
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
        return render(request)


def _text(request: IRequest, body: bytes) -> bytes:
    request.setHeader(b"content-type", b"text/plain")
    request.setHeader(b"cache-control", b"no-cache, private")
    return body


def supervisor_resource(
    ca_bundle: bytes, readiness: Readiness, api: IResource | None = None
) -> Resource:
    """
    The root of the server's HTTPS tree.

    :param ca_bundle: ``server-ca.crt`` as on disk, served by ``/cacerts``.
    :param api: the Kubernetes API, served below ``/api``, ``/apis``,
        ``/version`` and ``/openapi``.
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
    root.putChild(b"v1-k3s", v1)
    if api is not None:
        for path in (b"api", b"apis", b"version", b"openapi"):
            root.putChild(path, api)
    return root
