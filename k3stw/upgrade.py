"""
Relaying an HTTP upgrade (``kubectl exec``, ``attach``, ``port-forward``:
websocket or SPDY/3.1) to a backend, as the UpgradeAwareHandler of
kube-apiserver (to a kubelet) and of the kubelet (to containerd's streaming
server) does: the request goes on with its ``Connection`` and
``Upgrade`` headers; a ``101 Switching Protocols`` answer is written to the
client as it came and from then on the two connections are spliced byte for
byte, each registered as the other's producer (as
C{twisted.protocols.portforward}), so neither side's bytes wait in memory
without bound; any other answer is relayed as an ordinary response.

The client's connection is taken from Twisted Web's HTTP channel once the
backend has switched protocols (L{take_over}): the one place that reaches
into the channel's internals, held to the installed Twisted by
``tests/test_upgrade.py``.

The pieces that read bytes (L{HeadReader}, L{BodyReader}) are sans-IO.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.server import Request

from k3stw.logs import Logger
from k3stw.web import HOP_BY_HOP

__all__ = [
    "BodyReader",
    "HeadReader",
    "ResponseHead",
    "UpgradeRelay",
    "is_upgrade",
    "request_head",
    "take_over",
]

#: The most a response's head may take: far past any real one.
MAX_HEAD = 64 * 1024
#: The longest chunk-size line (with extensions) a chunked body may send.
MAX_CHUNK_LINE = 4096
#: The most a spliced TCP connection reads at once (Twisted's default is 64 KiB).
SPLICED_READ = 256 * 1024

#: Never sent on to the backend: the caller's credentials were for this
#: server, and the body's framing is recomputed.  ``Connection`` and
#: ``Upgrade`` go on: they are the request.
_NOT_FORWARDED = frozenset(
    {
        b"host",
        b"authorization",
        b"proxy-authorization",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"content-length",
    }
)
#: Connection-level headers of a backend's non-101 answer, never relayed.
_HOP_BY_HOP = HOP_BY_HOP | {b"content-length"}


class BackendError(Exception):
    """The backend's answer could not be read as HTTP."""


def _tokens(value: bytes | None) -> list[bytes]:
    return [token.strip().lower() for token in (value or b"").split(b",")]


def is_upgrade(request: Request) -> bool:
    """Whether C{request} asks to switch protocols (``Connection: Upgrade`` and an ``Upgrade``)."""
    return b"upgrade" in _tokens(request.getHeader(b"connection")) and bool(
        request.getHeader(b"upgrade")
    )


def request_head(request: Request, host: bytes, target: bytes, body: bytes) -> bytes:
    """
    The head of C{request} as sent on to C{host} for C{target} (path and
    query): its own headers, less credentials, impersonation and framing.
    """
    lines = [b"%s %s HTTP/1.1" % (request.method, target), b"Host: " + host]
    for name, values in request.requestHeaders.getAllRawHeaders():
        lower = name.lower()
        if lower in _NOT_FORWARDED or lower.startswith(b"impersonate-"):
            continue
        lines.extend(name + b": " + value for value in values)
    if body or request.method in (b"POST", b"PUT", b"PATCH"):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n"


class ResponseHead:
    """A response's status line and headers, with the bytes they came as."""

    def __init__(
        self, code: int, phrase: bytes, headers: list[tuple[bytes, bytes]], raw: bytes
    ) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.raw = raw

    def header(self, name: bytes) -> bytes | None:
        """The last value of header C{name}, if any."""
        found = [value for key, value in self.headers if key.lower() == name]
        return found[-1] if found else None


class HeadReader:
    """Reads a response head from the bytes fed to it (sans-IO)."""

    def __init__(self, limit: int = MAX_HEAD) -> None:
        self._buffer = b""
        self._limit = limit

    def feed(self, data: bytes) -> tuple[ResponseHead, bytes] | None:
        """
        The head and the bytes after it, once C{data} completes it.

        :raises BackendError: malformed, or longer than the limit.
        """
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > self._limit:
                raise BackendError("the response's head is too long")
            return None
        raw, rest = self._buffer[: end + 4], self._buffer[end + 4 :]
        self._buffer = b""
        status, *lines = raw[:end].split(b"\r\n")
        version, _, tail = status.partition(b" ")
        code_text, _, phrase = tail.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not code_text.isdigit() or len(code_text) != 3:
            raise BackendError(f"malformed HTTP status line {status[:80]!r}")
        headers = []
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise BackendError(f"malformed HTTP header {line[:80]!r}")
            headers.append((name, value.strip()))
        return ResponseHead(int(code_text), phrase, headers, raw), rest


class BodyReader:
    """
    The body of a response, unframed (sans-IO): by ``Content-Length``,
    chunked, or up to the connection's end.
    """

    def __init__(self, length: int | None, chunked: bool = False) -> None:
        self._chunked = chunked
        self._remaining: int | None = None if chunked else length
        self._length = self._remaining
        # Chunked: bytes of the current chunk still to come, None while reading a size line.
        self._chunk: int | None = None
        self._line = b""
        self._trailers = False
        self.finished = self._remaining == 0
        #: What came after the body's end (a pipelined request's bytes).
        self.leftover = b""

    @classmethod
    def of(cls, head: ResponseHead, method: bytes) -> BodyReader:
        """The body of the response C{head} to a C{method} request."""
        if method == b"HEAD" or head.code in (204, 304):
            return cls(0)
        if b"chunked" in _tokens(head.header(b"transfer-encoding")):
            return cls(None, True)
        length = head.header(b"content-length")
        if length is None:
            return cls(None)
        if not length.strip().isdigit():
            raise BackendError(f"malformed Content-Length {length[:40]!r}")
        return cls(int(length))

    @property
    def length(self) -> int | None:
        """The body's length when the head states it."""
        return self._length

    @property
    def until_close(self) -> bool:
        """Whether only the connection's end ends the body."""
        return not self._chunked and self._remaining is None

    def feed(self, data: bytes) -> bytes:
        """
        The body bytes in C{data}; L{finished} once the body is complete
        (bytes after it are kept in L{leftover}).

        :raises BackendError: a malformed chunk.
        """
        if self.finished:
            return b""
        if not self._chunked:
            remaining = self._remaining
            if remaining is None:
                return data
            if len(data) < remaining:
                self._remaining = remaining - len(data)
                return data
            self._remaining = 0
            self.finished = True
            if len(data) > remaining:
                self.leftover = data[remaining:]
                return data[:remaining]
            return data
        return self._unchunk(data)

    def _unchunk(self, data: bytes) -> bytes:
        body = []
        while data and not self.finished:
            if self._chunk:
                piece, data = data[: self._chunk], data[self._chunk :]
                body.append(piece)
                self._chunk -= len(piece)
                continue
            end = data.find(b"\n")
            if end < 0:
                self._line += data
                if len(self._line) > MAX_CHUNK_LINE:
                    raise BackendError("a chunk's size line is too long")
                break
            line, data = (self._line + data[:end]).rstrip(b"\r"), data[end + 1 :]
            self._line = b""
            self._take_line(line)
        if data and self.finished:
            self.leftover = data
        return b"".join(body)

    def _take_line(self, line: bytes) -> None:
        if self._trailers:
            # Trailers end with an empty line; they are not relayed.
            self.finished = not line
        elif self._chunk == 0:
            # The CRLF after a chunk's data.
            if line:
                raise BackendError("a chunk is longer than its size")
            self._chunk = None
        else:
            size = line.split(b";")[0].strip()
            try:
                self._chunk = int(size, 16)
            except ValueError:
                raise BackendError(f"malformed chunk size {size[:20]!r}") from None
            if self._chunk < 0:
                raise BackendError(f"malformed chunk size {size[:20]!r}")
            if self._chunk == 0:
                self._trailers = True


def take_over(request: Request, protocol: Protocol) -> bytes:
    """
    Take C{request}'s connection from Twisted Web and give it to
    C{protocol}; return what the client has sent after the request.

    The channel keeps the transport only while it serves a request: once
    its C{transport} is None it writes nothing more, and, told its
    connection is gone, it lets the request and itself go (otherwise the
    pair waits for the cycle collector).
    """
    channel = request.channel
    transport: Any = channel.transport
    # What arrived while the request was served (a pipelining client's next request).
    leftover = b"".join(getattr(channel, "_dataBuffer", []))
    channel._dataBuffer = []
    channel.transport = None
    channel.setTimeout(None)
    transport.unregisterProducer()
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    protocol.makeConnection(transport)
    # The channel paused the connection if the client sent much while it was served.
    transport.resumeProducing()
    channel.connectionLost(Failure(ConnectionDone("the connection was upgraded")))
    return leftover


class _Spliced(Protocol):
    """One side of an upgraded connection: what it reads goes to the other side."""

    peer: _Spliced | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.peer = None
            transport: Any = peer.transport
            # A TLS transport closes only once its producer is gone.
            transport.unregisterProducer()
            transport.loseConnection()


def splice(left: _Spliced, right: _Spliced) -> None:
    """Join two connected sides: each writes to the other, and pauses it when full."""
    left.peer, right.peer = right, left
    assert left.transport is not None and right.transport is not None
    left.transport.registerProducer(IPushProducer(right.transport), True)  # type: ignore[attr-defined]
    right.transport.registerProducer(IPushProducer(left.transport), True)  # type: ignore[attr-defined]
    for side in (left, right):
        # Interactive streams (a keystroke, an echo) must not wait for Nagle's delayed ACK.
        no_delay = getattr(side.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        # Bulk streams (port-forward, cp) cost a reactor turn per read: read more at once.
        tcp: Any = getattr(side.transport, "transport", side.transport)
        if hasattr(tcp, "bufferSize"):
            tcp.bufferSize = SPLICED_READ


class UpgradeRelay(_Spliced):
    """
    The backend's end of a relayed request: sends it, reads the answer's
    head, then splices (``101``) or relays the answer as a response.

    L{answered} fires once the head has been read (the answer is the
    relay's from then on), or fails with why none came.

    :param request: the client's request.
    :param head: the request's head for the backend (L{request_head}).
    :param body: the request's body.
    """

    _log = Logger()

    def __init__(self, request: Request, head: bytes, body: bytes) -> None:
        self.request = request
        self._out = head + body
        self._head: HeadReader | None = HeadReader()
        self._body: BodyReader | None = None
        self.answered: Deferred[int] = Deferred(lambda _: self._abort())
        self.gone = False
        self.taken = False

    def timeout(self, seconds: float, clock: IReactorTime) -> None:
        """Give up (C{answered} fails with C{TimeoutError}) if no head comes in C{seconds}."""
        self.answered.addTimeout(seconds, clock)

    def client_gone(self, failure: Failure) -> None:
        """The client hung up (before the connection was taken over: after, the splice hears)."""
        if self.taken:
            return
        self.gone = True
        if not self.answered.called:
            self.answered.cancel()
        else:
            self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.gone or self.answered.called:
            self._abort()
            return
        self.transport.write(self._out)
        self._out = b""

    def dataReceived(self, data: bytes) -> None:
        if self._head is not None:
            try:
                parsed = self._head.feed(data)
            except BackendError as e:
                self._fail(e)
                return
            if parsed is None:
                return
            self._head = None
            self._answer(*parsed)
        elif self._body is not None:
            self._relay_body(data)
        else:
            super().dataReceived(data)

    def _fail(self, error: Exception) -> None:
        self._head = None
        self._abort()
        if not self.answered.called:
            self.answered.errback(Failure(error))

    def _answer(self, head: ResponseHead, rest: bytes) -> None:
        if self.answered.called:
            return
        if head.code == 101:
            self.request.setResponseCode(101)
            self.answered.callback(101)
            self._switch(head, rest)
            return
        try:
            self._body = BodyReader.of(head, self.request.method)
        except BackendError as e:
            self._fail(e)
            return
        request = self.request
        request.setResponseCode(head.code, head.phrase)
        for name, value in head.headers:
            if name.lower() not in _HOP_BY_HOP:
                request.responseHeaders.addRawHeader(name, value)
        if self._body.length is not None and request.method != b"HEAD":
            request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % self._body.length])
        self.answered.callback(head.code)
        assert self.transport is not None
        request.registerProducer(IPushProducer(self.transport), True)
        self._relay_body(rest)

    def _relay_body(self, data: bytes) -> None:
        assert self._body is not None
        try:
            piece = self._body.feed(data)
        except BackendError as e:
            self._log.warn("upgrade: malformed answer from the backend: {error}", error=str(e))
            self._cut_short()
            return
        if piece and not self.gone:
            self.request.write(piece)
        if self._body.finished:
            self._done()

    def _done(self) -> None:
        body, self._body = self._body, None
        if body is None:
            return
        if not self.gone:
            self.request.unregisterProducer()
            self.request.finish()
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _cut_short(self) -> None:
        self._body = None
        self._abort()
        if not self.gone:
            self.request.unregisterProducer()
            self.request.loseConnection()

    def _switch(self, head: ResponseHead, rest: bytes) -> None:
        client = _Spliced()
        self.taken = True
        leftover = take_over(self.request, client)
        assert client.transport is not None
        client.transport.write(head.raw + rest)
        splice(client, self)
        if leftover:
            client.dataReceived(leftover)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.answered.called:
            error = reason.value if not reason.check(ConnectionDone) else None
            self.answered.errback(
                Failure(BackendError(str(error) if error else "the backend closed the connection"))
            )
        elif self._body is not None:
            if self._body.until_close:
                self._done()
            else:
                self._cut_short()
        else:
            super().connectionLost(reason)
