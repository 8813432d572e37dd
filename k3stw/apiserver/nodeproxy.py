"""
Relaying requests to kubelets and pods: ``nodes/<node>/proxy/<path>``, and
for L{k3stw.apiserver.podconnect} a pod's logs, its exec, attach and
port-forward upgrades (L{k3stw.upgrade}), and ``pods|services/proxy``.

As in k3s, the kubelet is reached at ``127.0.0.1:<kubelet port>`` at the
node's end of its tunnel, except on the server's own node, which is dialled
directly.  The API server speaks HTTPS to it, verifying the kubelet's serving
certificate against the server CA and presenting its
``client-kube-apiserver`` certificate.  Response bodies are streamed with
producers registered both ways, so a slow client slows the kubelet.  Pods'
addresses are dialled directly, as k3s's default egress mode (``agent``) does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import (
    UNKNOWN_LENGTH,
    IAgentEndpointFactory,
    IBodyProducer,
    IPolicyForHTTPS,
    IResponse,
)
from twisted.web.server import Request
from zope.interface import implementer

from k3stw.apiserver.status import StatusError
from k3stw.httpclient import _QuietHTTPClientFactory
from k3stw.logs import Logger
from k3stw.machinery.nodes import KUBELET_PORT
from k3stw.machinery.objects import Object
from k3stw.pki.tls import UnverifiedPolicy
from k3stw.tunnel.registry import ITunnelDialer, NoTunnelSession
from k3stw.upgrade import UpgradeRelay, is_upgrade, request_head
from k3stw.web import HOP_BY_HOP

__all__ = ["DEFAULT_KUBELET_PORT", "NodeProxy", "kubelet_port", "proxied_target"]

DEFAULT_KUBELET_PORT = KUBELET_PORT
#: Seconds to wait for the kubelet's response headers (dial and TLS included).
HEADER_TIMEOUT = 60.0
#: The most of a kubelet's refusal read into the Status (kube-apiserver's maxReadLength).
MAX_ERROR_BODY = 50_000

#: Connection-level headers never relayed; nor the caller's credentials, which
#: were for this server, not the kubelet.
_NOT_RELAYED = HOP_BY_HOP | {b"host", b"authorization"}


def kubelet_port(node: Object) -> int:
    """The kubelet port a Node reports (``status.daemonEndpoints.kubeletEndpoint.Port``)."""
    endpoints = (node.get("status") or {}).get("daemonEndpoints") or {}
    port = (endpoints.get("kubeletEndpoint") or {}).get("Port")
    if isinstance(port, int) and 0 < port < 65536:
        return port
    return DEFAULT_KUBELET_PORT


def proxied_target(request: Request, skip: int) -> bytes:
    """
    The path after the first C{skip} segments of C{request}'s raw path
    (those up to ``.../proxy``), still percent-encoded, with a trailing
    slash kept (as kube-apiserver's C{JoinPreservingTrailingSlash}), ``/``
    for the proxy itself; and the request's query.
    """
    segments = request.path.split(b"/")[1:]
    target = b"/" + b"/".join(segments[skip:])
    query = request.uri.partition(b"?")[2]
    return target + b"?" + query if query else target


def _relayed(headers: Headers, computed: frozenset[bytes] = frozenset()) -> Headers:
    kept = Headers()
    for name, values in headers.getAllRawHeaders():
        lower = name.lower()
        if lower in _NOT_RELAYED or lower in computed or lower.startswith(b"impersonate-"):
            continue
        kept.setRawHeaders(name, values)
    return kept


@implementer(IAgentEndpointFactory)
class _OneEndpoint:
    """Hands the Agent the one connection it may use."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return self._endpoint


class NodeProxy:
    """
    Relays requests to kubelets.

    :param get_node: reads a Node (for its kubelet port); raises a 404
        L{StatusError} for an unknown one.
    :param tunnels: the nodes' tunnels.
    :param kubelet_tls: verifies kubelets against the server CA and presents
        the API server's client certificate.
    :param own_node: this server's own node, dialled without a tunnel.
    :param reactor: TCP, time.
    """

    _log = Logger()

    def __init__(
        self,
        get_node: Callable[[str], Awaitable[Object]],
        tunnels: ITunnelDialer,
        kubelet_tls: IPolicyForHTTPS,
        own_node: str | None,
        reactor: Any,
        header_timeout: float = HEADER_TIMEOUT,
    ) -> None:
        self.get_node = get_node
        self.tunnels = tunnels
        self.kubelet_tls = kubelet_tls
        self.own_node = own_node
        self.reactor = reactor
        self.header_timeout = header_timeout
        self._cooperator = Cooperator(scheduler=lambda run: reactor.callLater(0, run))

    def endpoint(
        self, node: str, port: int, seen: _SeenTransport | None = None
    ) -> IStreamClientEndpoint:
        """
        TLS to the kubelet of C{node} listening on C{port}; C{seen} keeps the
        connection under the TLS, whose end reason the TLS client forgets.
        """
        inner: IStreamClientEndpoint
        if node == self.own_node:
            # k3s never tunnels to its own node.
            inner = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port, timeout=30)
        else:
            inner = self.tunnels.dial(node, f"127.0.0.1:{port}")
        if seen is not None:
            inner = seen.watching(inner)
        creator = self.kubelet_tls.creatorForNetloc(node.encode("idna"), port)
        return wrapClientTLS(creator, inner)

    def address_endpoint(self, host: str, port: int, tls: bool) -> IStreamClientEndpoint:
        """
        A pod's address, dialled directly: k3s's default egress mode
        (``agent``) tunnels only to kubelets.  Over TLS its certificate is
        not verified, as kube-apiserver's proxy transport does not.
        """
        inner: IStreamClientEndpoint
        if ":" in host:
            inner = TCP6ClientEndpoint(self.reactor, host, port, timeout=30)
        else:
            inner = TCP4ClientEndpoint(self.reactor, host, port, timeout=30)
        if not tls:
            return inner
        return wrapClientTLS(UnverifiedPolicy().creatorForNetloc(host.encode("idna"), port), inner)

    async def relay(self, request: Request, node: str, target: bytes) -> None:
        """
        Send C{request} on to C{node}'s kubelet at C{target} (path and
        query) and stream its answer back (an upgrade as L{relay_upgrade}).
        Returns once the kubelet's headers are relayed; the body follows.

        :raises StatusError: no such Node (404), or the kubelet cannot be
            reached (503, with why).
        """
        port = kubelet_port(await self.get_node(node))
        seen = _SeenTransport()
        if is_upgrade(request):
            host = b"%s:%d" % (node.encode("idna"), port)
            await self._upgrade(request, self.endpoint(node, port, seen), seen, host, target)
            return
        url = b"https://%s:%d%s" % (node.encode("idna"), port, target)
        # The client computes the length of the body it sends.
        headers = _relayed(request.requestHeaders, frozenset({b"content-length"}))
        sent = await self._send(request, self.endpoint(node, port, seen), seen, url, headers)
        if sent is not None:
            _relay_response(request, *sent)

    async def relay_log(
        self, request: Request, node: str, target: bytes, refused: Callable[[int, bytes], Exception]
    ) -> None:
        """
        ``pods/log``: a GET of C{target} on C{node}'s kubelet, its body
        streamed back as ``text/plain`` (kube-apiserver's LocationStreamer);
        an answer other than 2xx raises C{refused(code, body)} instead.
        """
        port = kubelet_port(await self.get_node(node))
        seen = _SeenTransport()
        url = b"https://%s:%d%s" % (node.encode("idna"), port, target)
        sent = await self._send(
            request, self.endpoint(node, port, seen), seen, url, Headers(), with_body=False
        )
        if sent is None:
            return
        response, body = sent
        if not 200 <= response.code <= 206:
            raise refused(response.code, await _read_some(response, MAX_ERROR_BODY))
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/plain")
        response.deliverBody(body)

    async def fetch(self, node: str, target: bytes, limit: int) -> bytes:
        """
        The body of a GET of C{target} on C{node}'s kubelet, for the server
        itself (the resource metrics read summaries so).  Cancelling it drops
        the connection.

        :raises StatusError: no such Node (404), the kubelet cannot be
            reached (503), it answered other than 200 (503 with its code),
            or its body is longer than C{limit} bytes (503).
        """
        port = kubelet_port(await self.get_node(node))
        seen = _SeenTransport()
        url = b"https://%s:%d%s" % (node.encode("idna"), port, target)
        headers = Headers({b"accept": [b"application/json"]})
        requesting = self._agent(self.endpoint(node, port, seen)).request(b"GET", url, headers)
        try:
            response = await requesting
        except Exception as e:
            raise _unreachable(e, seen) from None
        body = await _read_some(response, limit + 1)
        if response.code != 200:
            raise StatusError(503, f"the kubelet answered {response.code}: {body[:200]!r}")
        if len(body) > limit:
            raise StatusError(503, f"the kubelet's answer is longer than {limit} bytes")
        return body

    async def relay_upgrade(self, request: Request, node: str, target: bytes) -> None:
        """
        An upgrade (exec, attach, port-forward) on to C{node}'s kubelet at
        C{target}: spliced once it switches protocols, else its answer relayed.
        """
        await self.relay(request, node, target)

    async def open_kubelet(self, node: str, build: Callable[[bytes], Protocol]) -> Protocol:
        """
        A connection to C{node}'s kubelet for the protocol C{build(host)}
        makes (C{host} is the kubelet's ``host:port``), for a server that
        speaks to the kubelet itself (the exec stream translator).

        :raises StatusError: no such Node (404), or the kubelet cannot be
            reached (503, with why).
        """
        port = kubelet_port(await self.get_node(node))
        seen = _SeenTransport()
        protocol = build(b"%s:%d" % (node.encode("idna"), port))
        connecting = self.endpoint(node, port, seen).connect(_OneProtocol(protocol))
        connecting.addTimeout(self.header_timeout, self.reactor)
        try:
            await connecting
        except Exception as e:
            raise _unreachable(e, seen) from None
        return protocol

    async def relay_address(
        self, request: Request, host: str, port: int, tls: bool, target: bytes
    ) -> None:
        """``pods/proxy`` and ``services/proxy``: C{request} on to C{host:port}, upgrades too."""
        endpoint = self.address_endpoint(host, port, tls)
        netloc = (f"[{host}]" if ":" in host else host).encode("idna") + b":%d" % port
        seen = _SeenTransport()
        if is_upgrade(request):
            await self._upgrade(request, seen.watching(endpoint), seen, netloc, target)
            return
        url = (b"https://" if tls else b"http://") + netloc + target
        headers = _relayed(request.requestHeaders, frozenset({b"content-length"}))
        sent = await self._send(request, seen.watching(endpoint), seen, url, headers)
        if sent is not None:
            _relay_response(request, *sent)

    async def _send(
        self,
        request: Request,
        endpoint: IStreamClientEndpoint,
        seen: _SeenTransport,
        url: bytes,
        headers: Headers,
        with_body: bool = True,
    ) -> tuple[IResponse, _BodyRelay] | None:
        """The backend's answer and the relay of its body; None once the client is gone."""
        agent = self._agent(endpoint)
        body_producer = self._body(request) if with_body else None
        requesting: Deferred[IResponse] = agent.request(
            request.method if with_body else b"GET", url, headers, body_producer
        )
        requesting.addTimeout(self.header_timeout, self.reactor)
        body = _BodyRelay(request, requesting)
        request.notifyFinish().addErrback(body.client_gone)
        try:
            return await requesting, body
        except Exception as e:
            if body.gone:
                return None
            raise _unreachable(e, seen) from None

    def _agent(self, endpoint: IStreamClientEndpoint) -> Agent:
        """An HTTP client for one request over C{endpoint}'s one connection."""
        pool = HTTPConnectionPool(self.reactor, persistent=False)
        pool._factory = _QuietHTTPClientFactory
        agent: Agent = Agent.usingEndpointFactory(self.reactor, _OneEndpoint(endpoint), pool)
        return agent

    async def _upgrade(
        self,
        request: Request,
        endpoint: IStreamClientEndpoint,
        seen: _SeenTransport,
        host: bytes,
        target: bytes,
    ) -> None:
        content = _content(request)
        relay = UpgradeRelay(request, request_head(request, host, target, content), content)
        relay.timeout(self.header_timeout, self.reactor)
        connecting = endpoint.connect(_OneProtocol(relay))

        def gone(failure: Failure) -> None:
            relay.client_gone(failure)
            connecting.cancel()

        request.notifyFinish().addErrback(gone)
        connecting.addErrback(_fail_answer, relay.answered)
        try:
            await relay.answered
        except Exception as e:
            if not relay.gone:
                raise _unreachable(e, seen) from None

    def _body(self, request: Request) -> IBodyProducer | None:
        content = request.content
        if content is None:
            return None
        content.seek(0, 2)
        if content.tell() == 0 and request.method in (b"GET", b"HEAD", b"DELETE"):
            return None
        content.seek(0)
        return FileBodyProducer(content, cooperator=self._cooperator)


def _unreachable(error: BaseException, seen: _SeenTransport) -> StatusError:
    """The Status for a backend that did not answer."""
    if isinstance(error, NoTunnelSession):
        return StatusError(503, str(error))
    if isinstance(error, CancelledError | TimeoutError):
        return StatusError(503, "error dialing backend: timeout awaiting response headers")
    # The agent's refusal ("connect not allowed") says more than the TLS's lost connection.
    why = getattr(seen.transport, "ended_reason", None) or _reason(error)
    return StatusError(503, f"error dialing backend: {why}")


def _fail_answer(failure: Failure, answered: Deferred[int]) -> None:
    if not answered.called:
        answered.errback(failure)


def _content(request: Request) -> bytes:
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read()
    return data


def _relay_response(request: Request, response: IResponse, body: _BodyRelay) -> None:
    request.setResponseCode(response.code, response.phrase)
    for name, values in _relayed(response.headers).getAllRawHeaders():
        request.responseHeaders.setRawHeaders(name, values)
    # Twisted's client keeps Content-Length to itself, except in answers to HEAD.
    if request.method != b"HEAD" and response.length is not UNKNOWN_LENGTH:
        request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % response.length])
    response.deliverBody(body)


class _OneProtocol(Factory):
    """Builds the one protocol a connection is made for."""

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self._protocol


class _Collect(Protocol):
    """The first C{limit} bytes of a body, then the connection stopped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        # Given up on (a timeout): the connection goes too.
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.parts.append(data[: self.limit - self.size])
        self.size += len(self.parts[-1])
        if self.size >= self.limit:
            self.done.callback(b"".join(self.parts))
            self._stop()

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(b"".join(self.parts))


def _read_some(response: IResponse, limit: int) -> Deferred[bytes]:
    collect = _Collect(limit)
    response.deliverBody(collect)
    return collect.done


class _SeenTransport:
    """Keeps the transport an endpoint's connection got (a tunnel stream's, say)."""

    transport: object = None

    def watching(self, inner: IStreamClientEndpoint) -> IStreamClientEndpoint:
        return _Watched(inner, self)


@implementer(IStreamClientEndpoint)
class _Watched:
    def __init__(self, inner: IStreamClientEndpoint, seen: _SeenTransport) -> None:
        self.inner = inner
        self.seen = seen

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        def connected(protocol: IProtocol) -> IProtocol:
            self.seen.transport = getattr(protocol, "transport", None)
            return protocol

        connecting: Deferred[IProtocol] = self.inner.connect(protocolFactory)
        return connecting.addCallback(connected)


def _reason(error: BaseException) -> str:
    """The innermost failures' messages (Twisted's HTTP client wraps them in lists)."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(_reason(f.value) for f in reasons)
    return str(error) or type(error).__name__


class _BodyRelay(Protocol):
    """
    The kubelet's response body, written to the client's request as it comes.

    The body's transport is registered as the request's streaming producer:
    when the client's socket is full it pauses the kubelet's connection (and,
    through the tunnel, the agent).
    """

    _log = Logger()

    def __init__(self, request: Request, requesting: Deferred[IResponse]) -> None:
        self.request = request
        self.requesting: Deferred[IResponse] | None = requesting
        self.gone = False

    def client_gone(self, failure: Failure) -> None:
        self.gone = True
        if self.requesting is not None and not self.requesting.called:
            self.requesting.cancel()
        elif self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionMade(self) -> None:
        self.requesting = None
        assert self.transport is not None
        if self.gone:
            self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self.request.registerProducer(IPushProducer(self.transport), True)

    def dataReceived(self, data: bytes) -> None:
        if not self.gone:
            self.request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.gone:
            return
        self.request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            self.request.finish()
            return
        # Headers are out: only a dropped connection tells the client the body is cut short.
        self._log.warn(
            "nodes/proxy: the kubelet's response was cut short: {reason}",
            reason=reason.getErrorMessage(),
        )
        self.request.loseConnection()
