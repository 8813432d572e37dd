"""
kubectl's websocket streams, served as kube-apiserver 1.32 serves them:

- exec and attach offering ``v5.channel.k8s.io`` (the
  StreamTranslator): the websocket is answered here (101 with that
  subprotocol), and the API server speaks SPDY/3.1 to the kubelet (POST
  with ``Upgrade: SPDY/3.1``, remotecommand v5 to v1 offered), one SPDY
  stream per websocket channel: 0 stdin, 1 stdout, 2 stderr, 3 the
  ``error`` stream (the command's Status), 4 ``resize``; ``[255, 0]`` from
  the client half-closes stdin.  The kubelet's Status is re-encoded on
  channel 3, then the websocket is closed.
- port-forward offering ``SPDY/3.1+portforward.k8s.io`` (the
  TunnelingHandler): the request goes to the kubelet as a plain SPDY
  upgrade; once the kubelet switches protocols the websocket is answered
  and the SPDY bytes travel in binary messages both ways, unparsed.  Any
  other answer of the kubelet is relayed as it came.

Everything else (SPDY from the client, websocket v4 and older) is spliced
to the kubelet unchanged by L{k3stw.upgrade}.  Both directions register
the far side's transport as producer, so a slow reader pauses the writer.
"""

from __future__ import annotations

import json
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.server import Request

from k3stw.apiserver.nodeproxy import NodeProxy
from k3stw.apiserver.status import StatusError
from k3stw.spdy import SpdySession, SpdyStream
from k3stw.upgrade import BackendError, BodyReader, HeadReader, ResponseHead, take_over

if TYPE_CHECKING:
    from autobahn.websocket.types import ConnectionRequest

__all__ = [
    "REMOTECOMMAND_V5",
    "decode_error_stream",
    "refusal_status",
    "serve_websocket",
    "translated",
]

REMOTECOMMAND_V5 = "v5.channel.k8s.io"
#: What the translator offers the kubelet, as client-go's SPDY executor does.
SPDY_REMOTECOMMAND = (
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
)
TUNNEL_PREFIX = "SPDY/3.1+"
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
#: Seconds the kubelet has to answer each stream (client-go's createStreamResponseTimeout).
STREAM_TIMEOUT = 30.0
#: client-go's SPDY ping period for the translator.
PING_PERIOD = 5.0
#: The most of a kubelet's refusal or Status read.
MAX_ERROR_BODY = 50_000
#: The largest websocket message taken from the client (a SPDY frame's limit).
MAX_MESSAGE = 1 << 24
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"content-length"}
)


def _offered(request: Request) -> list[str]:
    raw = b",".join(request.requestHeaders.getRawHeaders(b"sec-websocket-protocol") or [])
    return [p.strip() for p in raw.decode("latin-1").split(",") if p.strip()]


def _tunnelled(request: Request) -> list[str]:
    """The SPDY protocols a port-forward websocket offers (``SPDY/3.1+<p>.k8s.io``)."""
    return [
        p[len(TUNNEL_PREFIX) :]
        for p in _offered(request)
        if p.startswith(TUNNEL_PREFIX) and p.endswith(".k8s.io")
    ]


def translated(request: Request, subresource: str) -> bool:
    """Whether C{request} is a websocket this server answers itself (not spliced)."""
    upgrade = (request.getHeader(b"upgrade") or b"").strip().lower()
    if upgrade != b"websocket":
        return False
    if subresource in ("exec", "attach"):
        return REMOTECOMMAND_V5 in _offered(request)
    return subresource == "portforward" and bool(_tunnelled(request))


async def serve_websocket(
    request: Request, proxy: NodeProxy, node: str, target: bytes, subresource: str
) -> None:
    """Serve a L{translated} request; C{target} is the kubelet's path and query."""
    if subresource == "portforward":
        await _tunnel(request, proxy, node, target)
    else:
        await _translate(request, proxy, node, target)


def _spdy_head(host: bytes, target: bytes, protocols: list[str] | tuple[str, ...]) -> bytes:
    lines = [
        b"POST " + target + b" HTTP/1.1",
        b"Host: " + host,
        b"Connection: Upgrade",
        b"Upgrade: SPDY/3.1",
        *(b"X-Stream-Protocol-Version: " + p.encode("latin-1") for p in protocols),
        b"Content-Length: 0",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _switched(head: ResponseHead) -> bool:
    """A 101 whose headers say SPDY/3.1 (what client-go checks)."""
    connection = (head.header(b"connection") or b"").lower()
    upgrade = (head.header(b"upgrade") or b"").lower()
    return head.code == 101 and b"upgrade" in connection and b"spdy/3.1" in upgrade


class _KubeletUpgrade(Protocol):
    """
    An upgrade request to the kubelet: sends it and reads the answer's
    head.  L{answered} fires with the head and the bytes after it: after a
    101 those are the new protocol's first, and L{hand_over} gives the
    connection on; otherwise they are the body (up to L{MAX_ERROR_BODY}).
    """

    def __init__(self, head: bytes) -> None:
        self._out = head
        self._head: HeadReader | None = HeadReader()
        self._refusal: tuple[ResponseHead, BodyReader, list[bytes]] | None = None
        self.delegate: Protocol | None = None
        self.answered: Deferred[tuple[ResponseHead, bytes]] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._out)

    def hand_over(self, protocol: Protocol, rest: bytes) -> None:
        """From now on C{protocol} has the connection; C{rest} is what came already."""
        self.delegate = protocol
        protocol.makeConnection(self.transport)
        if rest:
            protocol.dataReceived(rest)

    def dataReceived(self, data: bytes) -> None:
        if self.delegate is not None:
            self.delegate.dataReceived(data)
        elif self._head is not None:
            try:
                parsed = self._head.feed(data)
                if parsed is None:
                    return
                head, rest = parsed
                self._head = None
                if head.code == 101:
                    self.answered.callback((head, rest))
                    return
                self._refusal = (head, BodyReader.of(head, b"POST"), [])
            except BackendError as e:
                self._fail(e)
                return
            self._read_refusal(rest)
        elif self._refusal is not None:
            self._read_refusal(data)

    def _read_refusal(self, data: bytes) -> None:
        assert self._refusal is not None
        head, body, parts = self._refusal
        try:
            parts.append(body.feed(data))
        except BackendError as e:
            self._fail(e)
            return
        read = b"".join(parts)
        if body.finished or len(read) >= MAX_ERROR_BODY:
            self._refusal = None
            self.answered.callback((head, read[:MAX_ERROR_BODY]))
            self.transport.loseConnection()  # type: ignore[union-attr]

    def _fail(self, error: Exception) -> None:
        self._head = self._refusal = None
        self.transport.abortConnection()  # type: ignore[union-attr]
        if not self.answered.called:
            self.answered.errback(Failure(error))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.delegate is not None:
            self.delegate.connectionLost(reason)
        elif self._refusal is not None:
            head, _, parts = self._refusal
            self._refusal = None
            self.answered.callback((head, b"".join(parts)))
        elif not self.answered.called:
            why = "the kubelet closed the connection" if reason.check(ConnectionDone) else reason
            self.answered.errback(Failure(BackendError(f"error dialing backend: {why}")))


# The websocket end


def _websocket_factory(reactor: Any, handler: _WebSocketHandler) -> Any:
    from autobahn.twisted.websocket import WebSocketServerFactory

    factory: Any = WebSocketServerFactory(reactor=reactor)
    factory.protocol = _socket_class()
    factory.handler = handler
    factory.noisy = False
    factory.setProtocolOptions(
        maxMessagePayloadSize=MAX_MESSAGE,
        maxFramePayloadSize=MAX_MESSAGE,
        # kube-apiserver does not ping (kubectl does, every 5 s).
        autoPingInterval=0,
        openHandshakeTimeout=30.0,
        # Long: the close frame waits behind output the client is still reading.
        closeHandshakeTimeout=60.0,
    )
    return factory


class _WebSocketHandler:
    """What a websocket's events go to."""

    #: The subprotocol the websocket answers with.
    subprotocol: str | None = None
    socket: Any = None
    opened: Deferred[None]

    def __init__(self) -> None:
        self.opened = Deferred()
        self.gone = False
        #: Whether the two connections are registered as each other's producers.
        self.spliced = False

    def splice(self, kubelet: Any) -> None:
        """Each connection pauses the other while its write buffer is full."""
        client = self.socket.transport
        client.registerProducer(IPushProducer(kubelet), True)
        kubelet.registerProducer(IPushProducer(client), True)
        self.spliced = True

    def accept(self, request: Request, reactor: Any) -> None:
        """Answer C{request}'s websocket handshake (L{opened} fires once open)."""
        factory = _websocket_factory(reactor, self)
        socket = factory.buildProtocol(request.getClientAddress())
        request.setResponseCode(101)
        head = [request.method + b" " + request.uri + b" HTTP/1.1"]
        for name, values in request.requestHeaders.getAllRawHeaders():
            head.append(name + b": " + b", ".join(values))
        leftover = take_over(request, socket)
        socket.dataReceived(b"\r\n".join(head) + b"\r\n\r\n" + leftover)

    def connect(self, request: ConnectionRequest) -> str | None:
        return self.subprotocol if self.subprotocol in request.protocols else None

    def open(self, socket: Any) -> None:
        self.socket = socket
        self.opened.callback(None)

    def send(self, data: bytes) -> None:
        """One binary message to the client, while the websocket is open."""
        from k3stw.tunnel.autobahn_hooks import is_open

        if self.socket is not None and is_open(self.socket):
            self.socket.sendMessage(data, isBinary=True)

    def close(self) -> None:
        """Close the websocket (the close frame goes after what was sent)."""
        if self.socket is not None and self.socket.transport is not None:
            if self.spliced:
                self.socket.transport.unregisterProducer()
            self.socket.sendClose(1000)
            if not self.gone:
                # Paused by the kubelet's side, it would never read the client's close.
                self.socket.transport.resumeProducing()

    def message(self, payload: bytes) -> None:
        raise NotImplementedError

    def closed(self) -> None:
        self.gone = True
        if not self.opened.called:
            self.opened.errback(Failure(ConnectionDone("the websocket closed")))


@cache
def _socket_class() -> type:
    """The autobahn protocol of these websockets (autobahn loads on first use)."""
    from autobahn.twisted.websocket import WebSocketServerProtocol

    class ChannelSocket(WebSocketServerProtocol):
        """Hands its events to its factory's handler."""

        def onConnect(self, request: ConnectionRequest) -> str | None:
            handler: _WebSocketHandler = self.factory.handler
            return handler.connect(request)

        def onOpen(self) -> None:
            self.factory.handler.open(self)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.factory.handler.message(payload)

        def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
            self.factory.handler.closed()

    return ChannelSocket


# exec and attach: the StreamTranslator


def _status_success() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def _status_internal(message: str) -> dict[str, Any]:
    """kube's C{NewInternalError}, as the translator writes it."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


def _status_exit(code: int) -> dict[str, Any]:
    message = f"command terminated with exit code {code}"
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: {message}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def decode_error_stream(protocol: str, message: bytes) -> dict[str, Any]:
    """
    The Status the translator writes on channel 3 for what the kubelet's
    ``error`` stream said (client-go's error decoders, then the
    translator's re-encoding).
    """
    if not message:
        return _status_success()
    text = message.decode("utf-8", "replace")
    if protocol not in ("v4.channel.k8s.io", "v5.channel.k8s.io"):
        return _status_internal(f"error executing remote command: {text}")
    try:
        status = json.loads(message)
        if not isinstance(status, dict):
            raise ValueError("not an object")
    except ValueError as e:
        return _status_internal(f"error stream protocol error: {e} in {json.dumps(text)}")
    if status.get("status") == "Success":
        return _status_success()
    if status.get("status") != "Failure":
        return _status_internal("error stream protocol error: unknown error")
    if status.get("reason") != "NonZeroExitCode":
        return _status_internal(str(status.get("message", "")))
    details = status.get("details")
    if not isinstance(details, dict):
        return _status_internal("error stream protocol error: details must be set")
    for cause in details.get("causes") or []:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            value = str(cause.get("message", ""))
            if not value.isdigit() or int(value) > 255:
                return _status_internal(
                    f"error stream protocol error: invalid exit code value {json.dumps(value)}"
                )
            return _status_exit(int(value))
    return _status_internal("error stream protocol error: no ExitCode cause given")


def refusal_status(head: ResponseHead, body: bytes) -> dict[str, Any]:
    """The Status for a kubelet that did not switch protocols (client-go's SPDY upgrader)."""
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        return status
    text = body.decode("utf-8", "replace").strip()
    return _status_internal(f"unable to upgrade connection: {text}")


class _Options:
    """The streams a request asks for (the kubelet's query: input, output, error, tty)."""

    def __init__(self, target: bytes) -> None:
        query = parse_qs(urlsplit(target.decode("latin-1")).query)
        self.stdin, self.stdout, self.stderr, self.tty = (
            query.get(name) == ["1"] for name in ("input", "output", "error", "tty")
        )


class _Translator(_WebSocketHandler):
    """One exec or attach: the client's websocket channels to the kubelet's SPDY streams."""

    subprotocol = REMOTECOMMAND_V5

    def __init__(self, options: _Options, clock: IReactorTime) -> None:
        super().__init__()
        self.options = options
        self.clock = clock
        self.session: SpdySession | None = None
        self.kubelet: Any = None
        self.protocol = ""
        self.streams: dict[int, SpdyStream] = {}
        self._early: list[bytes] | None = []
        self._error = b""
        self._error_failed: Failure | None = None
        self._pending = 0
        self.done: Deferred[None] = Deferred()

    # Client to kubelet

    def message(self, payload: bytes) -> None:
        if not payload:
            return
        if self._early is not None:
            self._early.append(payload)
            return
        channel, data = payload[0], payload[1:]
        if channel == CLOSE:
            if data and (stream := self.streams.get(data[0])) is not None:
                stream.close()
        elif channel in (STDIN, RESIZE) and (stream := self.streams.get(channel)) is not None:
            stream.write(data)

    def closed(self) -> None:
        super().closed()
        if self.session is not None:
            self.session.close()
        elif self.kubelet is not None:
            self.kubelet.abortConnection()
        if not self.done.called:
            self.done.callback(None)

    # Kubelet to client

    def begin(self, session: SpdySession, protocol: str) -> list[Deferred[Any]]:
        """Open the streams the protocol wants; the replies' Deferreds."""
        self.session = session
        self.protocol = protocol
        wanted: list[tuple[int, bytes]] = [(ERROR, b"error")]
        if self.options.stdin:
            wanted.append((STDIN, b"stdin"))
        if self.options.stdout:
            wanted.append((STDOUT, b"stdout"))
        if self.options.stderr and not self.options.tty:
            wanted.append((STDERR, b"stderr"))
        if self.options.tty and protocol not in ("channel.k8s.io", "v2.channel.k8s.io"):
            wanted.append((RESIZE, b"resize"))
        for channel, kind in wanted:
            stream = session.open_stream([(b"streamtype", kind)])
            self.streams[channel] = stream
            self._wire(channel, stream)
        return [stream.replied for stream in self.streams.values()]

    def _wire(self, channel: int, stream: SpdyStream) -> None:
        if channel == ERROR:
            self._pending += 1
            stream.on_data = self._error_data
            stream.on_end = self._stream_done
            stream.on_reset = self._error_reset
        elif channel in (STDOUT, STDERR):
            self._pending += 1
            stream.on_data = lambda data: self.send(bytes([channel]) + data)
            stream.on_end = self._stream_done
            stream.on_reset = lambda reason: self._stream_done()

    def _error_data(self, data: bytes) -> None:
        if len(self._error) < MAX_ERROR_BODY:
            self._error += data[: MAX_ERROR_BODY - len(self._error)]

    def _error_reset(self, reason: Failure) -> None:
        self._error_failed = reason
        self._stream_done()

    def _stream_done(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self.finish(self._status())

    def _status(self) -> dict[str, Any]:
        if self._error_failed is not None and not self._error:
            # kube would read EOF as success; a kubelet that went away did not succeed.
            why = self._error_failed.getErrorMessage()
            return _status_internal(f"error reading from error stream: {why}")
        return decode_error_stream(self.protocol, self._error)

    def start(self) -> None:
        """The streams are up: what the client sent meanwhile goes on, and reading resumes."""
        early, self._early = self._early or [], None
        for payload in early:
            self.message(payload)

    def finish(self, status: dict[str, Any]) -> None:
        """Report C{status} on channel 3, close the websocket, then the SPDY connection."""
        if self.done.called:
            return
        self.send(bytes([ERROR]) + json.dumps(status, separators=(",", ":")).encode())
        self.close()
        if self.session is not None:
            transport: Any = self.session.transport
            if transport is not None and self.spliced:
                transport.unregisterProducer()
            self.session.close()
        self.done.callback(None)


async def _translate(request: Request, proxy: NodeProxy, node: str, target: bytes) -> None:
    translator = _Translator(_Options(target), proxy.reactor)
    translator.accept(request, proxy.reactor)
    try:
        await translator.opened
    except ConnectionDone:
        return
    # An empty message on the lowest writable channel: the websocket is up.
    options = translator.options
    translator.send(bytes([STDOUT if options.stdout else STDERR if options.stderr else ERROR]))
    # Nothing more is read from the client until the streams are up.
    translator.socket.transport.pauseProducing()
    try:
        await _run(translator, proxy, node, target)
    except StatusError as e:
        translator.finish({k: v for k, v in e.status().items() if k not in ("kind", "apiVersion")})
    except TimeoutError:
        # spdystream's words for a stream not answered in time.
        translator.finish(_status_internal("timeout"))
    except Exception as e:
        translator.finish(_status_internal(str(e) or type(e).__name__))
    await translator.done


async def _run(translator: _Translator, proxy: NodeProxy, node: str, target: bytes) -> None:
    upgrade: _KubeletUpgrade = await proxy.open_kubelet(  # type: ignore[assignment]
        node, lambda host: _KubeletUpgrade(_spdy_head(host, target, SPDY_REMOTECOMMAND))
    )
    translator.kubelet = upgrade.transport
    if translator.gone:
        translator.kubelet.abortConnection()
        return
    head, rest = await upgrade.answered.addTimeout(proxy.header_timeout, proxy.reactor)
    if not _switched(head):
        translator.finish(refusal_status(head, rest))
        return
    session = SpdySession(proxy.reactor, PING_PERIOD)
    upgrade.hand_over(session, rest)
    protocol = (head.header(b"x-stream-protocol-version") or b"").decode("latin-1").strip()
    replies = translator.begin(session, protocol or "channel.k8s.io")
    try:
        # Each stream waits for its reply in turn, as client-go's do.
        for reply in replies:
            await reply.addTimeout(STREAM_TIMEOUT, proxy.reactor)
    finally:
        for reply in replies:
            reply.addErrback(lambda _: None)
    if translator.done.called:
        return
    translator.splice(upgrade.transport)
    translator.start()
    translator.socket.transport.resumeProducing()


# port-forward: the TunnelingHandler


class _Tunnel(_WebSocketHandler):
    """SPDY bytes in binary websocket messages, to and from the kubelet."""

    def __init__(self, subprotocol: str | None) -> None:
        super().__init__()
        self.subprotocol = subprotocol
        self.kubelet: Any = None

    def message(self, payload: bytes) -> None:
        if self.kubelet is not None:
            self.kubelet.write(payload)

    def closed(self) -> None:
        super().closed()
        if self.kubelet is not None:
            kubelet, self.kubelet = self.kubelet, None
            if self.spliced:
                kubelet.unregisterProducer()
            kubelet.loseConnection()


class _TunnelPipe(Protocol):
    """The kubelet's end of a port-forward tunnel: what it sends goes out as messages."""

    def __init__(self, tunnel: _Tunnel) -> None:
        self.tunnel = tunnel

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.send(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.tunnel.kubelet is not None:
            self.tunnel.kubelet = None
            self.tunnel.close()


async def _tunnel(request: Request, proxy: NodeProxy, node: str, target: bytes) -> None:
    protocols = _tunnelled(request)
    upgrade: _KubeletUpgrade = await proxy.open_kubelet(  # type: ignore[assignment]
        node, lambda host: _KubeletUpgrade(_spdy_head(host, target, protocols))
    )
    gone: list[Failure] = []

    def client_gone(failure: Failure) -> None:
        if not upgrade.answered.called:
            gone.append(failure)
            upgrade.transport.abortConnection()  # type: ignore[union-attr]

    request.notifyFinish().addErrback(client_gone)
    try:
        head, rest = await upgrade.answered.addTimeout(proxy.header_timeout, proxy.reactor)
    except Exception as e:
        if gone:
            return
        raise StatusError(503, str(e)) from None
    if head.code != 101:
        _relay_refusal(request, head, rest)
        return
    if not _switched(head):
        upgrade.transport.loseConnection()  # type: ignore[union-attr]
        raise StatusError(500, "unable to upgrade: missing upgrade headers in response")
    chosen = (head.header(b"x-stream-protocol-version") or b"").decode("latin-1").strip()
    tunnel = _Tunnel(TUNNEL_PREFIX + chosen if chosen else None)
    tunnel.accept(request, proxy.reactor)
    if not tunnel.opened.called or tunnel.gone:
        # The handshake failed: autobahn has answered the client.
        tunnel.opened.addErrback(lambda _: None)
        upgrade.transport.loseConnection()  # type: ignore[union-attr]
        return
    tunnel.kubelet = upgrade.transport
    upgrade.hand_over(_TunnelPipe(tunnel), rest)
    if tunnel.kubelet is not None:
        tunnel.splice(tunnel.kubelet)


def _relay_refusal(request: Request, head: ResponseHead, body: bytes) -> None:
    request.setResponseCode(head.code, head.phrase)
    for name, value in head.headers:
        if name.lower() not in _HOP_BY_HOP:
            request.responseHeaders.addRawHeader(name, value)
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()
