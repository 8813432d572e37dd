"""
The Ingress controller's reverse proxy: a twisted.web resource that sends
each request to a backend endpoint its route picks, on a
L{twisted.web.client.Agent} over a persistent L{HTTPConnectionPool} (HTTP/1.1
keep-alive to backends), and streams the response back with flow control.

Our own resource rather than L{twisted.web.proxy.ReverseProxyResource}: that
one opens a new connection per request (HTTP/1.0, no keep-alive), buffers no
back-pressure and has no way to choose the backend per request.  The request
body reaches us whole (twisted.web reads it before rendering) and is sent on
from there; the response body is streamed.

A request asking for an ``Upgrade`` (websockets) is not sent through the
Agent: a connection of its own to the endpoint gets it, through
L{k3stw.upgrade.UpgradeRelay} (as the API server's node proxy): after the
backend's ``101`` the client's connection is taken from twisted.web and
spliced to it byte for byte, both ways, producers registered each way.

Each request gets ``X-Forwarded-For``/``-Proto``/``-Host``/``-Port`` and
``X-Real-Ip`` as Traefik sets them, an access log line (common log format,
then the Ingress, the upstream and the duration in ms) and its count and
duration in the Prometheus metrics, by Ingress and backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    Response,
    ResponseDone,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from k3stw.logs import Logger
from k3stw.network.ingressroutes import Address, Backend, Route
from k3stw.upgrade import UpgradeRelay, is_upgrade
from k3stw.web import HOP_BY_HOP

#: What the route lookup answers: the route and its ready endpoints (None: no such backend).
Lookup = Callable[[str, str], tuple[Route, list[Address] | None] | None]
#: Picks one of a backend's endpoints.
Picker = Callable[[Backend, list[Address]], Address]

#: Traefik's bodies for its own answers.
NOT_FOUND = b"404 page not found\n"
UNAVAILABLE = b"no available server\n"
BAD_GATEWAY = b"Bad Gateway"
#: Backend connections kept open per endpoint, and how long an idle one stays.
POOL_PER_ENDPOINT = 64
POOL_IDLE_SECONDS = 90
#: How many endpoints a request tries when they refuse its connection.
CONNECT_TRIES = 3
#: How long an upgrade's backend has to answer.
UPGRADE_TIMEOUT = 60.0

_access = Logger(namespace="k3stw.ingress.access")


class IngressMetrics:
    """Requests and their durations by Ingress and backend, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "k3stw_ingress_requests",
            "Requests the Ingress controller answered",
            ["ingress", "backend", "code", "method"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "k3stw_ingress_request_duration_seconds",
            "Time from a request's arrival to the end of its response",
            ["ingress", "backend"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int, str], tuple[Any, Any]] = {}

    def observe(self, ingress: str, backend: str, code: int, method: str, seconds: float) -> None:
        """Count one request and its duration."""
        key = (ingress, backend, code, method)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(ingress, backend, str(code), method),
                self.duration.labels(ingress, backend),
            )
        children[0].inc()
        children[1].observe(seconds)


@implementer(IAgentEndpointFactory)
class _Direct:
    """Endpoints to backend addresses, with no name resolution (they are IPs)."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return _endpoint(self.reactor, (uri.host.decode("ascii").strip("[]"), uri.port))


def _endpoint(reactor: Any, address: Address) -> IStreamClientEndpoint:
    ip = address[0]
    if ":" in ip:
        return TCP6ClientEndpoint(reactor, ip, address[1], timeout=10)
    return TCP4ClientEndpoint(reactor, ip, address[1], timeout=10)


def _url(address: Address, uri: bytes) -> bytes:
    ip, port = address
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}".encode() + uri


_clf_seconds: dict[int, str] = {}


def _clf_time(now: float) -> str:
    """C{now} as the common log format writes it, formatted once a second."""
    second = int(now)
    found = _clf_seconds.get(second)
    if found is None:
        _clf_seconds.clear()
        found = _clf_seconds[second] = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
    return found


class _Exchange:
    """One proxied request: its route, upstream, timing; logs and counts it at the end."""

    def __init__(
        self, proxy: IngressProxy, request: Request, route: Route | None, started: float
    ) -> None:
        self.proxy = proxy
        self.request = request
        self.route = route
        self.started = started
        self.upstream = "-"
        self.sent = 0
        #: The request to the backend in flight, if any.
        self.sending: Deferred[Response] | None = None

    def cancel(self) -> None:
        """The client has gone: stop waiting for the backend."""
        if self.sending is not None:
            self.sending.cancel()

    def done(self, code: int) -> None:
        """Count the request in the metrics and write its access log line."""
        request = self.request
        seconds = time.monotonic() - self.started
        ingress = self.route.ingress if self.route else "-"
        backend = self.route.backend.key if self.route else "-"
        method = request.method.decode("latin-1")
        self.proxy.metrics.observe(ingress, backend, code, method, seconds)
        client = getattr(request.getClientAddress(), "host", "-")
        # The line is built once here: a format of a dozen fields costs the
        # log observer more than the proxying of a small request.
        uri, version = request.uri.decode("latin-1"), request.clientproto.decode("latin-1")
        line = (
            f'{client} - - [{_clf_time(time.time())}] "{method} {uri} {version}" {code}'
            f' {self.sent or "-"} "{ingress}" "{self.upstream}" {seconds * 1000:.3f}ms'
        )
        _access.info("{line}", line=line, ingress=ingress, upstream=self.upstream, code=code)

    def answer(self, code: int, body: bytes) -> None:
        """One of the proxy's own answers (404, 502, 503)."""
        request = self.request
        if request.finished or request._disconnected:
            return
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
        request.finish()
        self.sent = len(body)
        self.done(code)


@implementer(IPushProducer)
class _BodyPump(Protocol):
    """
    A backend's response body into the client's response, pausing one for
    the other; C{finished} fires with whether the body came whole.
    """

    def __init__(self, exchange: _Exchange, finished: Deferred[bool]) -> None:
        self.exchange = exchange
        self.finished = finished

    def connectionMade(self) -> None:
        self.exchange.request.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        request = self.exchange.request
        if not request._disconnected:
            self.exchange.sent += len(data)
            request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        request = self.exchange.request
        if not request._disconnected:
            request.unregisterProducer()
        self.finished.callback(bool(reason.check(ResponseDone, PotentialDataLoss)))

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


class IngressProxy(Resource):
    """
    Every request, routed by C{lookup} and sent to the endpoint C{pick} chooses.

    :param scheme: ``http`` or ``https``, for ``X-Forwarded-Proto``.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        lookup: Lookup,
        pick: Picker,
        metrics: IngressMetrics,
        pool: HTTPConnectionPool | None = None,
        scheme: str = "http",
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.lookup = lookup
        self.pick = pick
        self.metrics = metrics
        self.scheme = scheme.encode()
        if pool is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = POOL_PER_ENDPOINT
            pool.cachedConnectionTimeout = POOL_IDLE_SECONDS
            pool.retryAutomatically = True
        self.pool = pool
        self.agent = Agent.usingEndpointFactory(reactor, _Direct(reactor), pool=pool)

    def render(self, request: Request) -> int:
        started = time.monotonic()
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        found = self.lookup(host, request.uri.decode("latin-1"))
        exchange = _Exchange(self, request, found[0] if found else None, started)
        if found is None or found[1] is None:
            exchange.answer(404, NOT_FOUND)
            return NOT_DONE_YET
        route, endpoints = found
        if not endpoints:
            exchange.answer(503, UNAVAILABLE)
            return NOT_DONE_YET
        headers = self._forwarded_headers(request, host)
        if is_upgrade(request):
            address = self.pick(route.backend, endpoints)
            exchange.upstream = f"{address[0]}:{address[1]}"
            self._upgrade(exchange, address, headers)
        else:
            request.notifyFinish().addErrback(lambda _: exchange.cancel())
            self._forward(exchange, endpoints, headers, min(len(endpoints), CONNECT_TRIES))
        return NOT_DONE_YET

    def _forwarded_headers(self, request: Request, host: str) -> Headers:
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in HOP_BY_HOP:
                headers.setRawHeaders(name, values)
        client = getattr(request.getClientAddress(), "host", "")
        previous = request.getHeader(b"x-forwarded-for")
        forwarded_for = f"{previous.decode('latin-1')}, {client}" if previous else client
        headers.setRawHeaders(b"x-forwarded-for", [forwarded_for.encode()])
        headers.setRawHeaders(b"x-forwarded-proto", [self.scheme])
        headers.setRawHeaders(b"x-forwarded-host", [host.encode("latin-1")])
        port = getattr(request.getHost(), "port", 0)
        headers.setRawHeaders(b"x-forwarded-port", [str(port).encode()])
        headers.setRawHeaders(b"x-real-ip", [client.encode()])
        return headers

    def _forward(
        self, exchange: _Exchange, endpoints: list[Address], headers: Headers, tries: int
    ) -> None:
        """
        Send the request to the next endpoint; one that refuses the
        connection (a pod just gone) makes way for the next, C{tries} in all.
        """
        request = exchange.request
        route = exchange.route
        assert route is not None
        address = self.pick(route.backend, endpoints)
        exchange.upstream = f"{address[0]}:{address[1]}"
        content = request.content
        body = None
        if content is not None and content.seek(0, 2):
            content.seek(0)
            body = FileBodyProducer(content)
        sent = exchange.sending = self.agent.request(
            request.method, _url(address, request.uri), headers, body
        )

        def answered(response: Response) -> Deferred[None] | None:
            if request._disconnected:
                response.deliverBody(Protocol())
                return None
            request.setResponseCode(response.code, response.phrase)
            for name, values in response.headers.getAllRawHeaders():
                if name.lower() not in HOP_BY_HOP:
                    request.responseHeaders.setRawHeaders(name, values)
            finished: Deferred[bool] = Deferred()
            response.deliverBody(_BodyPump(exchange, finished))
            code = response.code

            def end(whole: bool) -> None:
                if request._disconnected:
                    exchange.done(499)
                    return
                if whole:
                    request.finish()
                else:
                    # A body cut short must not look complete to the client.
                    request.loseConnection()
                exchange.done(code)

            return finished.addCallback(end)

        def failed(failure: Failure) -> None:
            if request._disconnected:
                exchange.done(499)
                return
            if failure.check(ConnectError) and tries > 1:
                self._forward(exchange, endpoints, headers, tries - 1)
                return
            self._log.debug(
                "Ingress backend {upstream} failed: {error}",
                upstream=exchange.upstream,
                error=failure.getErrorMessage(),
            )
            exchange.answer(502, BAD_GATEWAY)

        sent.addCallbacks(answered, failed)

    def _upgrade(self, exchange: _Exchange, address: Address, headers: Headers) -> None:
        """Relay an upgrade: spliced after a ``101``, any other answer relayed as a response."""
        request = exchange.request
        for name in (b"connection", b"upgrade"):
            values = request.requestHeaders.getRawHeaders(name)
            if values:
                headers.setRawHeaders(name, values)
        content = request.content.read() if request.content is not None else b""
        if content:
            headers.setRawHeaders(b"content-length", [b"%d" % len(content)])
        lines = [b"%s %s HTTP/1.1" % (request.method, request.uri)]
        lines += [b"%s: %s" % (n, v) for n, values in headers.getAllRawHeaders() for v in values]
        relay = UpgradeRelay(request, b"\r\n".join(lines) + b"\r\n\r\n", content)
        relay.timeout(UPGRADE_TIMEOUT, self.reactor)
        connecting = connectProtocol(_endpoint(self.reactor, address), relay)
        request.notifyFinish().addErrback(relay.client_gone)

        def failed(failure: Failure) -> None:
            if relay.gone:
                exchange.done(499)
            else:
                exchange.answer(502, BAD_GATEWAY)

        def not_connected(failure: Failure) -> None:
            if not relay.answered.called:
                relay.answered.errback(failure)

        connecting.addErrback(not_connected)
        relay.answered.addCallbacks(exchange.done, failed)
