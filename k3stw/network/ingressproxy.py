"""
The Ingress controller's reverse proxy: HTTP/1.1 on plain Twisted protocols.

A client connection (L{_Client}) reads request heads with
L{k3stw.network.http1}, routes each by C{lookup} to an endpoint C{pick}
chooses, and sends it on a backend connection (L{_Backend}) from the
endpoint's pool of idle keep-alive connections (L{BackendPool}); the
backend's answer goes back as it comes.  Bodies, by ``Content-Length`` or
chunked, both ways, stream through L{k3stw.upgrade.BodyReader}: a body that
does not fit one read registers each transport as the other's producer, so
neither side's bytes wait in memory without bound.  Requests pipelined on a
connection are answered in order, one at a time (the rest wait, the client
paused past a limit).

Not twisted.web's server and Agent: a request through them cost about
seven times what it does here (a Request, a Headers map each way, a
Deferred chain per request).  No Deferred and no timer per request: one
sweep a second ends idle connections (client and pooled) and backends that
stop answering (504), and the access log is written in batches.

A request asking for an ``Upgrade`` (websockets) gets a fresh backend
connection; after a ``101`` both connections are spliced byte for byte.

Each request gets ``X-Forwarded-For``/``-Proto``/``-Host``/``-Port`` and
``X-Real-Ip`` as Traefik sets them, an access log line (common log format,
then the Ingress, the upstream and the duration in ms) and its count and
duration in the Prometheus metrics, by Ingress and backend.  The proxy's
own answers say what Traefik (and Go's net/http under it) says: 404, 503
``no available server``, 502 ``Bad Gateway``, 504 ``Gateway Timeout``,
400/431/501/505 for requests it cannot read.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.error import ConnectError, TimeoutError
from twisted.internet.interfaces import IConnector
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from k3stw.logs import Logger
from k3stw.network.http1 import MAX_HEAD, BadRequest, RequestHead, parse_request, parse_response
from k3stw.network.http1 import send as _send
from k3stw.network.ingressroutes import Address, Backend, Route
from k3stw.upgrade import BackendError, BodyReader

__all__ = ["AccessLog", "BackendPool", "IngressMetrics", "IngressProxy"]

#: What the route lookup answers: the route and its ready endpoints (None: no such backend).
Lookup = Callable[[str, str], tuple[Route, list[Address] | None] | None]
#: Picks one of a backend's endpoints.
Picker = Callable[[Backend, list[Address]], Address]

#: Traefik's bodies for its own answers.
NOT_FOUND = b"404 page not found\n"
UNAVAILABLE = b"no available server\n"
BAD_GATEWAY = b"Bad Gateway"
GATEWAY_TIMEOUT = b"Gateway Timeout"
_PHRASES = {
    400: b"Bad Request",
    404: b"Not Found",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}
#: Idle backend connections kept per endpoint, and how long an idle one stays.
POOL_PER_ENDPOINT = 64
POOL_IDLE_SECONDS = 90
#: How many endpoints a request tries when they refuse its connection.
CONNECT_TRIES = 3
CONNECT_TIMEOUT = 10
#: How long a backend may stay silent while a request waits on it (then 504).
BACKEND_TIMEOUT = 60
#: How long a client's idle connection is kept (Traefik's entry points' idleTimeout).
IDLE_TIMEOUT = 180
#: How often idle connections and silent backends are looked for.
SWEEP_SECONDS = 1.0
#: Bytes of pipelined requests held while one is served, past which the client is paused.
PIPELINE_LIMIT = 2 * MAX_HEAD
#: The access log's longest wait between writes, and its most lines held.
LOG_SECONDS = 0.5
LOG_LINES = 1024
#: How many endpoints' names (for the access log) the pool remembers.
NAMES_KEPT = 4096

_WAITING, _HEAD, _BODY, _TUNNEL = range(4)

_access = Logger(namespace="k3stw.ingress.access")


class IngressMetrics(Collector):
    """
    Requests and their durations by Ingress and backend, in a registry of
    their own: counted in plain dicts per request, turned into Prometheus
    families only when scraped.
    """

    #: The histogram's buckets (prometheus_client's defaults).
    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._counts: dict[tuple[str, str, int, str], int] = {}
        #: Per (ingress, backend): a count per bucket (the last one +Inf), and the sum.
        self._durations: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        self.registry.register(self)

    def observe(self, ingress: str, backend: str, code: int, method: str, seconds: float) -> None:
        """Count one request and its duration."""
        key = (ingress, backend, code, method)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        durations = self._durations.get((ingress, backend))
        if durations is None:
            durations = self._durations[(ingress, backend)] = ([0] * 15, [0.0])
        durations[0][bisect.bisect_left(self.BUCKETS, seconds)] += 1
        durations[1][0] += seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "k3stw_ingress_requests",
            "Requests the Ingress controller answered",
            labels=["ingress", "backend", "code", "method"],
        )
        for (ingress, backend, code, method), count in self._counts.items():
            requests.add_metric([ingress, backend, str(code), method], count)
        yield requests
        duration = HistogramMetricFamily(
            "k3stw_ingress_request_duration_seconds",
            "Time from a request's arrival to the end of its response",
            labels=["ingress", "backend"],
        )
        for (ingress, backend), (buckets, total) in self._durations.items():
            cumulative, running = [], 0
            for bound, count in zip((*map(str, self.BUCKETS), "+Inf"), buckets, strict=True):
                running += count
                cumulative.append((bound, running))
            duration.add_metric([ingress, backend], cumulative, total[0])
        yield duration


#: An access log line: common log format (the client's address, the time, the
#: request line, the status, the bytes of the body sent or ``-``), then the
#: Ingress, the upstream (``address:port``) and the milliseconds the answer took.
_LINE = '%s - - [%s] "%s" %d %s "%s" "%s" %.3fms'
#: What a line says, each field as L{_LINE} takes it.
Entry = tuple[str, str, str, int, "int | str", str, str, float]


class AccessLog:
    """
    Access log lines, written as one log event per batch (at most every
    L{LOG_SECONDS}, or L{LOG_LINES} lines), not one event per request; each
    line is formatted only when its batch is written.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.entries: list[Entry] = []
        self._flush: Any = None
        self._second = -1
        self._clf = ""

    def add(self, entry: Entry) -> None:
        entries = self.entries
        entries.append(entry)
        if len(entries) >= LOG_LINES:
            self.flush()
        elif self._flush is None:
            self._flush = self.clock.callLater(LOG_SECONDS, self.flush)

    def flush(self) -> None:
        """Write what is held now."""
        if self._flush is not None:
            if self._flush.active():
                self._flush.cancel()
            self._flush = None
        if self.entries:
            entries, self.entries = self.entries, []
            _access.info("{lines}", lines="\n".join([_LINE % entry for entry in entries]))

    def now(self) -> str:
        """The time as the common log format writes it, formatted once a second."""
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._clf = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
        return self._clf


def _answer(code: int, body: bytes, close: bool) -> bytes:
    """One of the proxy's own answers."""
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n%s\r\n%s"
        % (
            code,
            _PHRASES[code],
            len(body),
            b"Connection: close\r\n" if close else b"",
            body,
        )
    )


class _Client(Protocol):
    """A client's connection: its requests, one after another, each to its backend."""

    def __init__(self, proxy: IngressProxy) -> None:
        self.proxy = proxy
        self.buffer = b""
        #: The request being answered (None: waiting for one).
        self.request: RequestHead | None = None
        self.backend: _Backend | None = None
        #: The request's body still to come, if it did not come with its head.
        self.body: BodyReader | None = None
        self.route: Route | None = None
        #: The ready endpoints of the request's backend.
        self.endpoints: list[Address] = []
        self.upstream = "-"
        self.started = 0.0
        self.sent = 0
        self.tries = 0
        self.idle = 0
        self.paused = False
        self.producing = False
        self.closed = False
        self.tunnel: Any = None
        self.peer = "-"
        self.peer_bytes = b"-"
        self.tail = b""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        peer = transport.getPeer()
        self.peer = getattr(peer, "host", "-")
        self.peer_bytes = self.peer.encode()
        port = getattr(transport.getHost(), "port", 0)
        # What every request of this connection gets, made once.
        self.tail = b"X-Forwarded-Proto: %s\r\nX-Forwarded-Port: %d\r\nX-Real-Ip: %s\r\n" % (
            self.proxy.scheme,
            port,
            self.peer_bytes,
        )
        # An answer must not wait for the client's delayed ACK (Go's servers set it too).
        no_delay = getattr(transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self.proxy.clients.add(self)
        self.proxy.sweeping()

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            _send(self.tunnel, data)
            return
        self.idle = 0
        body = self.body
        if body is not None:
            self._body(body, data)
            return
        if self.request is not None:
            self.buffer += data
            if len(self.buffer) > PIPELINE_LIMIT and not self.paused:
                self.paused = True
                self.transport.pauseProducing()  # type: ignore[union-attr]
            return
        self.buffer = self.buffer + data if self.buffer else data
        self._next()

    def _next(self) -> None:
        """Start on the next request in the buffer, if it has come whole."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                self._refuse(431, b"431 Request Header Fields Too Large")
            return
        if end > MAX_HEAD:
            self._refuse(431, b"431 Request Header Fields Too Large")
            return
        try:
            request = parse_request(buffer[:end])
        except BadRequest as e:
            self._refuse(e.code, b"%d %s: %s" % (e.code, _PHRASES[e.code], e.reason.encode()))
            return
        self.buffer = buffer[end + 4 :]
        self.request = request
        self.started = time.monotonic()
        self.sent = 0
        host = request.host.decode("latin-1")  # type: ignore[union-attr]
        found = self.proxy.lookup(host, request.target.decode("latin-1"))
        if found is None or found[1] is None:
            self.route, self.upstream = (found[0] if found else None), "-"
            self._local(404, NOT_FOUND)
            return
        self.route, endpoints = found
        if not endpoints:
            self.upstream = "-"
            self._local(503, UNAVAILABLE)
            return
        self.tries = min(len(endpoints), CONNECT_TRIES)
        self.endpoints = endpoints
        self._dispatch()

    def _dispatch(self) -> None:
        route = self.route
        request = self.request
        assert route is not None and request is not None
        address = self.proxy.pick(route.backend, self.endpoints)
        self.upstream = self.proxy.pool.name(address)
        self.proxy.pool.get(address, self, fresh=request.upgrade is not None)

    # The backend's side

    def attach(self, backend: _Backend) -> None:
        """A backend connection for the request: send it the head and what body came."""
        request = self.request
        if request is None or self.closed:
            backend.release(False)
            return
        self.backend = backend
        backend.client = self
        backend.state = _HEAD
        backend.idle = 0
        backend.pool.busy.add(backend)
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        previous = request.forwarded_for
        client = self.peer_bytes
        framing = b""
        if request.upgrade is not None:
            framing = b"Connection: Upgrade\r\nUpgrade: %s\r\n" % request.upgrade
        if request.chunked:
            framing += b"Transfer-Encoding: chunked\r\n"
        elif request.length is not None:
            framing += b"Content-Length: %d\r\n" % request.length
        head = b"%s %s HTTP/1.1%s\r\nX-Forwarded-For: %s\r\nX-Forwarded-Host: %s\r\n%s%s\r\n" % (
            request.method,
            request.target,
            request.headers,
            previous + b", " + client if previous else client,
            request.host,
            framing,
            self.tail,
        )
        if request.chunked or request.length:
            self.body = BodyReader(request.length, request.chunked)
            data, self.buffer = self.buffer, b""
            backend.head = head
            self._body(self.body, data)
        else:
            _send(backend.transport, head)

    def _body(self, body: BodyReader, data: bytes) -> None:
        """Send on the request body in C{data}; what follows it waits in the buffer."""
        backend = self.backend
        try:
            piece = body.feed(data)
        except BackendError:
            self._cut()
            return
        if backend is None:
            return
        out = backend.head
        backend.head = b""
        if piece:
            out += b"%x\r\n%s\r\n" % (len(piece), piece) if body._chunked else piece
        if body.finished:
            self.body = None
            if body._chunked:
                out += b"0\r\n\r\n"
            self.buffer = body.leftover
            if self.producing:
                self.producing = False
                backend.transport.unregisterProducer()  # type: ignore[union-attr]
                self.transport.resumeProducing()  # type: ignore[union-attr]
        elif not self.producing:
            self.producing = True
            backend.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
        if out:
            _send(backend.transport, out)

    def failed(self, reason: Failure) -> None:
        """No connection to the endpoint: the next one, or a 502 (504 if it timed out)."""
        if self.closed or self.request is None:
            return
        timed_out = reason.check(TimeoutError) is not None
        if not timed_out and reason.check(ConnectError) and self.tries > 1:
            self.tries -= 1
            self._dispatch()
            return
        if timed_out:
            self._local(504, GATEWAY_TIMEOUT, close=self.body is not None)
        else:
            self._local(502, BAD_GATEWAY, close=self.body is not None)

    def write(self, data: bytes) -> None:
        self.sent += len(data)
        _send(self.transport, data)

    def finished(self, code: int, keep_alive: bool) -> None:
        """The response has gone whole: the next request, if the connection stays."""
        self._log(code)
        self.backend = None
        if self.body is not None or not keep_alive or not self.request.keep_alive:  # type: ignore[union-attr]
            self.request = None
            self.body = None
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.request = None
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        if self.buffer:
            self._next()

    def cut(self, code: int) -> None:
        """The backend failed after part of its answer went: the client must not think it whole."""
        self._log(code)
        self.backend = None
        self.request = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    def switch(self, backend: _Backend) -> None:
        """The backend switched protocols: splice the two connections."""
        self._log(101)
        self.tunnel = backend.transport
        backend.tunnel = self.transport
        backend.state = _TUNNEL
        backend.client = None
        backend.pool.busy.discard(backend)
        self.request = None
        if self.producing:
            self.producing = False
            backend.transport.unregisterProducer()  # type: ignore[union-attr]
        self.transport.registerProducer(backend.transport, True)  # type: ignore[union-attr]
        backend.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        data, self.buffer = self.buffer, b""
        if data:
            _send(self.tunnel, data)

    # Answers of the proxy's own

    def _local(self, code: int, body: bytes, close: bool = False) -> None:
        request = self.request
        assert request is not None
        close = close or not request.keep_alive or bool(request.length) or request.chunked
        answer = _answer(code, body, close)
        if request.method == b"HEAD":
            answer = answer[: len(answer) - len(body)]
        self.backend = None
        self.write(answer)
        self.sent = len(body)
        self._log(code)
        self.request = None
        if close:
            self.body = None
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif self.buffer:
            self._next()

    def _refuse(self, code: int, body: bytes) -> None:
        """A request that cannot be read: answered, and the connection closed."""
        self.buffer = b""
        self.transport.write(_answer(code, body, True))  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _cut(self) -> None:
        """A request body that cannot be read: its backend and its client let go."""
        backend, self.backend = self.backend, None
        self.body = None
        if backend is not None:
            backend.client = None
            backend.release(False)
        self._log(400)
        self.request = None
        self._refuse(400, b"400 Bad Request: malformed chunked encoding")

    def _log(self, code: int) -> None:
        request = self.request
        assert request is not None
        proxy = self.proxy
        seconds = time.monotonic() - self.started
        route = self.route
        ingress, backend = (route.ingress, route.backend.key) if route else ("-", "-")
        proxy.metrics.observe(ingress, backend, code, request.method.decode("latin-1"), seconds)
        log = proxy.access
        log.add(
            (
                self.peer,
                log.now(),
                request.line.decode("latin-1"),
                code,
                self.sent or "-",
                ingress,
                self.upstream,
                seconds * 1000,
            )
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.proxy.clients.discard(self)
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.unregisterProducer()
            tunnel.loseConnection()
            return
        backend, self.backend = self.backend, None
        if self.request is not None:
            # Gone before its answer: nginx's 499.
            self._log(499)
            self.request = None
        if backend is not None:
            backend.client = None
            backend.release(False)


class _Backend(Protocol):
    """A connection to a backend endpoint, answering one request at a time, pooled between."""

    def __init__(self, pool: BackendPool, address: Address) -> None:
        self.pool = pool
        self.address = address
        self.client: _Client | None = None
        self.state = _WAITING
        self.buffer = b""
        self.body: BodyReader | None = None
        self.code = 0
        self.keep_alive = True
        self.chunk = False
        self.producing = False
        #: Whether any answer came (a reused connection closing before one is retried anew).
        self.answered = False
        self.head = b""
        self.idle = 0
        self.reused = False
        self.tunnel: Any = None

    def connectionMade(self) -> None:
        self.pool.opened(self)

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            _send(self.tunnel, data)
            return
        self.idle = 0
        self.answered = True
        client = self.client
        if client is None:
            # Nothing asked, yet it talks: not a connection to keep.
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if self.state == _BODY:
            self._body(client, data)
            return
        buffer = self.buffer + data if self.buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                if len(buffer) > MAX_HEAD:
                    self._fail(client, "the response's head is too long")
                return
            try:
                head = parse_response(buffer[:end])
            except ValueError as e:
                self._fail(client, str(e))
                return
            rest = buffer[end + 4 :]
            code = head.code
            if code == 101 and client.request is not None and client.request.upgrade is not None:
                self.buffer = b""
                client.write(buffer[: end + 4] + rest)
                client.switch(self)
                return
            if code >= 200:
                break
            # An interim answer (100 Continue): relayed, and the final one still to come.
            client.write(buffer[: end + 4])
            buffer = rest
        self.buffer = b""
        request = client.request
        assert request is not None
        self.code = code
        self.keep_alive = head.keep_alive and request.upgrade is None
        if request.method == b"HEAD" or code in (204, 304):
            length: int | None = 0
            chunked = False
        else:
            length, chunked = head.length, head.chunked
        # How the client learns where the body ends.
        close = not request.keep_alive
        self.chunk = False
        if head.verbatim:
            # Its Content-Length is the framing, and nothing else changes.
            if close:
                out = buffer[:end] + b"\r\nConnection: close\r\n\r\n"
                request.keep_alive = False
            elif request.http10:
                out = buffer[:end] + b"\r\nConnection: keep-alive\r\n\r\n"
            else:
                out = buffer[: end + 4]
        else:
            framing = b""
            if head.length is not None and not head.chunked:
                framing = b"\r\nContent-Length: %d" % head.length
            elif length != 0:
                if head.chunked and not request.http10:
                    self.chunk = True
                    framing = b"\r\nTransfer-Encoding: chunked"
                else:
                    close = True
            if close:
                framing += b"\r\nConnection: close"
                request.keep_alive = False
            elif request.http10:
                framing += b"\r\nConnection: keep-alive"
            out = b"HTTP/1.1 %s%s%s\r\n\r\n" % (head.status, head.headers, framing)
        if length == len(rest) and not chunked:
            # The whole answer came in this read (most small ones do).
            client.write(out + rest)
            client.sent -= len(out)
            self._done(client)
            return
        body = BodyReader(None, True) if chunked else BodyReader(length)
        self.state = _BODY
        self.body = body
        if body.finished and rest:
            # More than the answer: the connection cannot be trusted again.
            self.keep_alive = False
        piece = self._piece(client, body, rest)
        if piece is None:
            return
        client.sent -= len(out)
        client.write(out + piece if piece else out)
        if body.finished:
            self._done(client)
        else:
            self.producing = True
            client.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]

    def _piece(self, client: _Client, body: BodyReader, data: bytes) -> bytes | None:
        """The body bytes of C{data} as the client gets them (None: the answer is broken)."""
        try:
            piece = body.feed(data)
        except BackendError:
            self.state = _WAITING
            self.release(False)
            client.cut(self.code)
            return None
        if self.chunk:
            if piece:
                piece = b"%x\r\n%s\r\n" % (len(piece), piece)
            if body.finished:
                piece += b"0\r\n\r\n"
        if body.finished and body.leftover:
            # More than the answer: the connection cannot be trusted again.
            self.keep_alive = False
        return piece

    def _body(self, client: _Client, data: bytes) -> None:
        body = self.body
        assert body is not None
        piece = self._piece(client, body, data)
        if piece is None:
            return
        if piece:
            client.write(piece)
        if body.finished:
            self._done(client)

    def _done(self, client: _Client) -> None:
        """The answer came whole."""
        if self.producing:
            self.producing = False
            client.transport.unregisterProducer()  # type: ignore[union-attr]
            self.transport.resumeProducing()  # type: ignore[union-attr]
        reuse = self.keep_alive and client.body is None
        self.client = None
        self.body = None
        self.state = _WAITING
        self.release(reuse)
        client.finished(self.code, True)

    def _fail(self, client: _Client, error: str) -> None:
        self.pool._log.debug(
            "Ingress backend {upstream} failed: {error}",
            upstream=client.upstream,
            error=error,
        )
        self.client = None
        self.release(False)
        client._local(502, BAD_GATEWAY, close=client.body is not None)

    def release(self, reuse: bool) -> None:
        """Back to the pool, or closed."""
        self.pool.busy.discard(self)
        self.answered = False
        if reuse:
            self.reused = True
            self.pool.put(self)
        elif self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def timed_out(self) -> None:
        """Silent too long while a request waits."""
        client = self.client
        self.client = None
        self.release(False)
        if client is None:
            return
        if self.state == _HEAD:
            client._local(504, GATEWAY_TIMEOUT, close=client.body is not None)
        else:
            client.cut(self.code)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        pool = self.pool
        pool.lost(self)
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.unregisterProducer()
            tunnel.loseConnection()
            return
        client, self.client = self.client, None
        if client is None:
            return
        if self.state == _HEAD:
            if self.reused and not self.answered and client.body is None:
                # A kept connection the backend had closed as we sent: once more, anew.
                client.backend = None
                pool.get(self.address, client, fresh=True)
                return
            client._local(502, BAD_GATEWAY, close=client.body is not None)
        elif self.body is not None and self.body.until_close:
            self.keep_alive = False
            client.finished(self.code, False)
        else:
            client.cut(self.code)


class _Connecting(ClientFactory):
    """Connects one backend connection for a waiting client."""

    def __init__(self, pool: BackendPool, address: Address, client: _Client) -> None:
        self.pool = pool
        self.address = address
        self.client: _Client | None = client

    def buildProtocol(self, addr: Any) -> _Backend:
        backend = _Backend(self.pool, self.address)
        backend.factory = self
        return backend

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.failed(reason)


class BackendPool:
    """Idle keep-alive connections per backend endpoint (the last used first)."""

    _log = Logger()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.idle: dict[Address, list[_Backend]] = {}
        #: Connections answering a request now (watched for silence).
        self.busy: set[_Backend] = set()
        self._names: dict[Address, str] = {}
        self._sweep: Any = None

    def get(self, address: Address, client: _Client, fresh: bool = False) -> None:
        """A connection to C{address} for C{client}: an idle one, or a new one when it connects."""
        idle = None if fresh else self.idle.get(address)
        while idle:
            backend = idle.pop()
            if backend.transport is not None and not backend.transport.disconnecting:  # type: ignore[attr-defined]
                client.attach(backend)
                return
        factory = _Connecting(self, address, client)
        host, port = address
        self.reactor.connectTCP(host.strip("[]"), port, factory, timeout=CONNECT_TIMEOUT)

    def name(self, address: Address) -> str:
        """C{address} as the access log writes it (``address:port``), made once."""
        name = self._names.get(address)
        if name is None:
            if len(self._names) >= NAMES_KEPT:
                self._names.clear()
            name = self._names[address] = f"{address[0]}:{address[1]}"
        return name

    def opened(self, backend: _Backend) -> None:
        factory: Any = getattr(backend, "factory", None)
        transport: Any = backend.transport
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
        self.sweeping()
        client = factory.client if factory is not None else None
        if factory is not None:
            factory.client = None
        if client is None:
            backend.release(False)
        else:
            client.attach(backend)

    def sweeping(self) -> None:
        """Sweep once a second while there are connections."""
        if self._sweep is None:
            self._sweep = self.reactor.callLater(SWEEP_SECONDS, self.sweep)

    def put(self, backend: _Backend) -> None:
        idle = self.idle.setdefault(backend.address, [])
        if len(idle) >= POOL_PER_ENDPOINT:
            backend.transport.loseConnection()  # type: ignore[union-attr]
            return
        backend.idle = 0
        idle.append(backend)
        self.sweeping()

    def lost(self, backend: _Backend) -> None:
        self.busy.discard(backend)
        idle = self.idle.get(backend.address)
        if idle and backend in idle:
            idle.remove(backend)
            if not idle:
                del self.idle[backend.address]

    def sweep(self) -> None:
        """End idle pooled connections and answer for backends gone silent."""
        self._sweep = None
        for idle in list(self.idle.values()):
            for backend in list(idle):
                backend.idle += 1
                if backend.idle * SWEEP_SECONDS >= POOL_IDLE_SECONDS:
                    backend.transport.loseConnection()  # type: ignore[union-attr]
        for backend in list(self.busy):
            backend.idle += 1
            if backend.idle * SWEEP_SECONDS >= BACKEND_TIMEOUT and backend.state != _TUNNEL:
                backend.timed_out()
        if self.idle or self.busy:
            self.sweeping()

    def close(self) -> None:
        """Close every idle connection; stop sweeping."""
        for idle in list(self.idle.values()):
            for backend in list(idle):
                backend.transport.loseConnection()  # type: ignore[union-attr]
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None


class IngressProxy(Factory):
    """
    The proxy's listening side: every request, routed by C{lookup} and sent
    to the endpoint C{pick} chooses.

    :param scheme: ``http`` or ``https``, for ``X-Forwarded-Proto``.
    :param pool: backend connections, shared by the proxy's ports.
    :param access: the access log, likewise shared.
    """

    noisy = False

    def __init__(
        self,
        reactor: Any,
        lookup: Lookup,
        pick: Picker,
        metrics: IngressMetrics,
        pool: BackendPool | None = None,
        scheme: str = "http",
        access: AccessLog | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.lookup = lookup
        self.pick = pick
        self.metrics = metrics
        self.scheme = scheme.encode()
        self.pool = pool if pool is not None else BackendPool(reactor)
        self.access = access if access is not None else AccessLog(reactor)
        self.idle_timeout = idle_timeout
        self.clients: set[_Client] = set()
        self._sweep: Any = None

    def buildProtocol(self, addr: Any) -> _Client:
        return _Client(self)

    def sweeping(self) -> None:
        """Sweep once a second while there are connections."""
        if self._sweep is None:
            self._sweep = self.reactor.callLater(SWEEP_SECONDS, self.sweep)

    def sweep(self) -> None:
        """End clients idle past the timeout."""
        self._sweep = None
        for client in list(self.clients):
            if client.request is None and client.tunnel is None:
                client.idle += 1
                if client.idle * SWEEP_SECONDS >= self.idle_timeout:
                    client.transport.loseConnection()  # type: ignore[union-attr]
        if self.clients:
            self.sweeping()

    def stop(self) -> None:
        """Close the pool's idle connections, write the access log, stop sweeping."""
        self.pool.close()
        self.access.flush()
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
