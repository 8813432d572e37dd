"""
SPDY/3.1, as the kubelet's and containerd's streaming servers speak it
(Go's C{moby/spdystream}): the framing (L{SpdyCodec}, sans-IO) and the
client end of a session (L{SpdySession}) with its streams (L{SpdyStream}).

What C{spdystream} does, and so what is done here:

- Header blocks are zlib-compressed with SPDY/3's dictionary, one
  compression context per direction for the connection's life, each block
  ended with a sync flush.  Header names are lower case; a name's values
  are joined with NUL.
- No flow control: C{spdystream} neither sends WINDOW_UPDATE nor honours
  one, nor the SETTINGS initial window.  A sender that waited for windows
  would stall after 64 KiB; back-pressure is the TCP connection's (the
  session's transport takes producers, L{SpdySession.register_producer}).
- PING: a ping of the peer's parity is echoed; the client's own pings
  (odd ids) keep the connection alive (client-go pings every 5 s).
- A stream is half-closed by an empty DATA frame with FIN; RST_STREAM ends
  it both ways; GOAWAY (or the connection's end) ends every stream.

Nothing is buffered without bound: a control frame is read whole up to
L{MAX_CONTROL_FRAME}, a DATA frame's payload is handed on as it arrives,
and a header block inflates to at most L{MAX_HEADER_BLOCK}.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

__all__ = [
    "DICTIONARY",
    "Data",
    "GoAway",
    "HeadersFrame",
    "Ping",
    "ProtocolError",
    "RstStream",
    "Settings",
    "SpdyCodec",
    "SpdySession",
    "SpdyStream",
    "StreamReset",
    "SynReply",
    "SynStream",
    "WindowUpdate",
]

VERSION = 3
#: The largest control frame read (SYN_STREAM and friends carry only headers).
MAX_CONTROL_FRAME = 1 << 20
#: The most a header block inflates to.
MAX_HEADER_BLOCK = 1 << 20
#: The largest DATA frame written (the 24-bit length's limit).
MAX_DATA = (1 << 24) - 1

# Control frame types (SPDY/3 section 2.6).
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1,
    2,
    3,
    4,
    6,
    7,
    8,
    9,
)
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
# RST_STREAM status codes.
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, CANCEL = 1, 2, 3, 5

_WORDS = (
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502"
    "504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue,"
    " Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
#: SPDY/3's header compression dictionary (the spec's section 2.6.10.1).
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()

Headers = list[tuple[bytes, bytes]]


class ProtocolError(Exception):
    """The peer broke SPDY's framing: the connection cannot go on."""


class StreamReset(Exception):
    """The stream was reset (RST_STREAM) or its connection ended first."""


@dataclass
class SynStream:
    stream_id: int
    headers: Headers
    fin: bool = False
    unidirectional: bool = False
    associated: int = 0
    priority: int = 0


@dataclass
class SynReply:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass
class HeadersFrame:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass
class RstStream:
    stream_id: int
    status: int


@dataclass
class Settings:
    #: (flags, id, value) triples.
    entries: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class Ping:
    ping_id: int


@dataclass
class GoAway:
    last_good: int
    status: int = 0


@dataclass
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass
class Data:
    """Payload of a DATA frame (perhaps a piece of one); C{fin} on the frame's last piece."""

    stream_id: int
    data: bytes
    fin: bool = False


Frame = (
    SynStream | SynReply | HeadersFrame | RstStream | Settings | Ping | GoAway | WindowUpdate | Data
)


class SpdyCodec:
    """
    Reads and writes a connection's frames (sans-IO): L{feed} takes bytes
    and returns frames, L{encode} turns a frame into bytes.  One codec per
    connection: the header compression contexts last as long as it.
    """

    def __init__(self) -> None:
        self._buffer = b""
        # The DATA frame being read: (stream id, flags, bytes still to come).
        self._data: tuple[int, int, int] | None = None
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zdict=DICTIONARY)

    def feed(self, data: bytes) -> list[Frame]:
        """
        The frames C{data} completes, DATA payloads as they come.

        :raises ProtocolError: a malformed or oversized frame.
        """
        self._buffer += data
        frames: list[Frame] = []
        while True:
            if self._data is not None:
                stream_id, flags, remaining = self._data
                piece, self._buffer = self._buffer[:remaining], self._buffer[remaining:]
                remaining -= len(piece)
                self._data = (stream_id, flags, remaining) if remaining else None
                last = not remaining
                if piece or last:
                    frames.append(Data(stream_id, piece, last and bool(flags & FLAG_FIN)))
                if not last:
                    return frames
                continue
            if len(self._buffer) < 8:
                return frames
            first, second = struct.unpack(">II", self._buffer[:8])
            flags, length = second >> 24, second & 0xFFFFFF
            if not first & 0x80000000:
                self._buffer = self._buffer[8:]
                stream_id = first & 0x7FFFFFFF
                if stream_id == 0:
                    raise ProtocolError("a DATA frame on stream 0")
                self._data = (stream_id, flags, length)
                continue
            if length > MAX_CONTROL_FRAME:
                raise ProtocolError(f"a control frame of {length} bytes")
            if len(self._buffer) < 8 + length:
                return frames
            body, self._buffer = self._buffer[8 : 8 + length], self._buffer[8 + length :]
            version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
            if version != VERSION:
                raise ProtocolError(f"SPDY version {version}")
            frame = self._control(kind, flags, body)
            if frame is not None:
                frames.append(frame)

    def _control(self, kind: int, flags: int, body: bytes) -> Frame | None:
        fin = bool(flags & FLAG_FIN)
        try:
            if kind == SYN_STREAM:
                stream_id, associated, priority = struct.unpack(">IIB", body[:9])
                return SynStream(
                    stream_id & 0x7FFFFFFF,
                    self._headers(body[10:]),
                    fin,
                    bool(flags & FLAG_UNIDIRECTIONAL),
                    associated & 0x7FFFFFFF,
                    priority >> 5,
                )
            if kind in (SYN_REPLY, HEADERS):
                (stream_id,) = struct.unpack(">I", body[:4])
                kept = SynReply if kind == SYN_REPLY else HeadersFrame
                return kept(stream_id & 0x7FFFFFFF, self._headers(body[4:]), fin)
            if kind == RST_STREAM:
                stream_id, status = struct.unpack(">II", body)
                return RstStream(stream_id & 0x7FFFFFFF, status)
            if kind == SETTINGS:
                (count,) = struct.unpack(">I", body[:4])
                entries = []
                for offset in range(4, 4 + 8 * count, 8):
                    key, value = struct.unpack(">II", body[offset : offset + 8])
                    entries.append((key >> 24, key & 0xFFFFFF, value))
                return Settings(entries)
            if kind == PING:
                return Ping(struct.unpack(">I", body)[0])
            if kind == GOAWAY:
                last_good, status = struct.unpack(">II", body)
                return GoAway(last_good & 0x7FFFFFFF, status)
            if kind == WINDOW_UPDATE:
                stream_id, delta = struct.unpack(">II", body)
                return WindowUpdate(stream_id & 0x7FFFFFFF, delta & 0x7FFFFFFF)
        except struct.error:
            raise ProtocolError(f"a malformed control frame of type {kind}") from None
        # SPDY says to ignore unknown control frames.
        return None

    def _headers(self, compressed: bytes) -> Headers:
        try:
            block = self._inflate.decompress(compressed, MAX_HEADER_BLOCK)
        except zlib.error as e:
            raise ProtocolError(f"a header block does not inflate: {e}") from None
        if self._inflate.unconsumed_tail:
            raise ProtocolError("a header block inflates past the limit")
        headers: Headers = []
        try:
            (count,) = struct.unpack(">I", block[:4])
            offset = 4
            for _ in range(count):
                (size,) = struct.unpack(">I", block[offset : offset + 4])
                name = block[offset + 4 : offset + 4 + size]
                offset += 4 + size
                (size,) = struct.unpack(">I", block[offset : offset + 4])
                value = block[offset + 4 : offset + 4 + size]
                offset += 4 + size
                if offset > len(block):
                    raise struct.error
                headers.extend((name.lower(), v) for v in value.split(b"\0"))
        except struct.error:
            raise ProtocolError("a malformed header block") from None
        return headers

    def _block(self, headers: Headers) -> bytes:
        merged: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            merged.setdefault(name.lower(), []).append(value)
        raw = [struct.pack(">I", len(merged))]
        for name, values in merged.items():
            value = b"\0".join(values)
            raw.append(struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value)
        return self._deflate.compress(b"".join(raw)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def encode(self, frame: Frame) -> bytes:
        """The bytes of C{frame} (a DATA frame's payload at most L{MAX_DATA})."""
        if isinstance(frame, Data):
            flags = FLAG_FIN if frame.fin else 0
            head = struct.pack(">II", frame.stream_id, flags << 24 | len(frame.data))
            return head + frame.data
        kind, flags, body = self._control_body(frame)
        return struct.pack(">HHI", 0x8000 | VERSION, kind, flags << 24 | len(body)) + body

    def _control_body(self, frame: Frame) -> tuple[int, int, bytes]:
        if isinstance(frame, SynStream):
            flags = (FLAG_FIN if frame.fin else 0) | (
                FLAG_UNIDIRECTIONAL if frame.unidirectional else 0
            )
            head = struct.pack(">IIBB", frame.stream_id, frame.associated, frame.priority << 5, 0)
            return SYN_STREAM, flags, head + self._block(frame.headers)
        if isinstance(frame, SynReply | HeadersFrame):
            kind = SYN_REPLY if isinstance(frame, SynReply) else HEADERS
            body = struct.pack(">I", frame.stream_id) + self._block(frame.headers)
            return kind, FLAG_FIN if frame.fin else 0, body
        if isinstance(frame, RstStream):
            return RST_STREAM, 0, struct.pack(">II", frame.stream_id, frame.status)
        if isinstance(frame, Settings):
            entries = b"".join(
                struct.pack(">II", flags << 24 | key, value) for flags, key, value in frame.entries
            )
            return SETTINGS, 0, struct.pack(">I", len(frame.entries)) + entries
        if isinstance(frame, Ping):
            return PING, 0, struct.pack(">I", frame.ping_id)
        if isinstance(frame, GoAway):
            return GOAWAY, 0, struct.pack(">II", frame.last_good, frame.status)
        assert isinstance(frame, WindowUpdate)
        return WINDOW_UPDATE, 0, struct.pack(">II", frame.stream_id, frame.delta)


class SpdyStream:
    """
    One stream of a L{SpdySession}, opened by this end.

    Its owner sets the callbacks: C{on_data(bytes)}, C{on_end()} (the peer
    half-closed it) and C{on_reset(Failure)} (reset, or the connection
    ended first); L{replied} fires with the peer's SYN_REPLY headers.
    """

    def __init__(self, session: SpdySession, stream_id: int, headers: Headers) -> None:
        self.session = session
        self.stream_id = stream_id
        self.headers = headers
        self.replied: Deferred[Headers] = Deferred()
        self.on_data: Callable[[bytes], object] = lambda data: None
        self.on_end: Callable[[], object] = lambda: None
        self.on_reset: Callable[[Failure], object] = lambda reason: None
        self.local_closed = False
        self.remote_closed = False
        self.reset_reason: Failure | None = None

    def write(self, data: bytes) -> None:
        """Send C{data} on the stream (dropped once it is closed our way or reset)."""
        if self.local_closed or self.reset_reason is not None:
            return
        for start in range(0, len(data), MAX_DATA):
            self.session._send(Data(self.stream_id, data[start : start + MAX_DATA]))

    def close(self) -> None:
        """Half-close our way (DATA with FIN); the peer may still send."""
        if self.local_closed or self.reset_reason is not None:
            return
        self.local_closed = True
        self.session._send(Data(self.stream_id, b"", fin=True))
        self.session._finished(self)

    def reset(self, status: int = CANCEL) -> None:
        """End the stream both ways (RST_STREAM)."""
        if self.reset_reason is not None:
            return
        self.session._send(RstStream(self.stream_id, status))
        self._ended(Failure(StreamReset(f"stream {self.stream_id} reset by us")))

    def _ended(self, reason: Failure) -> None:
        if self.reset_reason is not None:
            return
        self.reset_reason = reason
        self.session._forget(self)
        if not self.replied.called:
            self.replied.errback(reason)
        if not self.remote_closed:
            self.on_reset(reason)


class SpdySession(Protocol):
    """
    The client end of a SPDY/3.1 connection, once the HTTP upgrade is done:
    opens streams (odd ids), answers the peer's pings, pings every
    C{ping_period} seconds, refuses streams the peer opens.

    L{closed} fires (with None) once the connection is gone.

    :param clock: for the pings.
    :param ping_period: seconds between pings; 0 for none.
    """

    def __init__(self, clock: IReactorTime, ping_period: float = 5.0) -> None:
        self._codec = SpdyCodec()
        self._clock = clock
        self._ping_period = ping_period
        self._pinging: IDelayedCall | None = None
        self._next_id = 1
        self._next_ping = 1
        self._streams: dict[int, SpdyStream] = {}
        self.going_away = False
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self._schedule_ping()

    def _schedule_ping(self) -> None:
        if self._ping_period > 0 and not self.closed.called:
            self._pinging = self._clock.callLater(self._ping_period, self._ping)

    def _ping(self) -> None:
        self._pinging = None
        self._send(Ping(self._next_ping))
        self._next_ping = (self._next_ping + 2) & 0x7FFFFFFF or 1
        self._schedule_ping()

    def register_producer(self, producer: IPushProducer) -> None:
        """Let C{producer} be paused while the connection's write buffer is full."""
        if self.transport is not None:
            self.transport.registerProducer(producer, True)  # type: ignore[attr-defined]

    def pause_reading(self) -> None:
        """Stop reading from the peer (our consumer is full)."""
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        """Read from the peer again."""
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def open_stream(self, headers: Headers, fin: bool = False) -> SpdyStream:
        """
        A new stream with C{headers} (SYN_STREAM sent now).

        :raises StreamReset: the session is going away or gone.
        """
        if self.going_away or self.closed.called or self._next_id > 0x7FFFFFFF:
            raise StreamReset("the SPDY connection is closing")
        stream = SpdyStream(self, self._next_id, headers)
        self._next_id += 2
        self._streams[stream.stream_id] = stream
        self._send(SynStream(stream.stream_id, headers, fin=fin))
        if fin:
            stream.local_closed = True
        return stream

    def close(self) -> None:
        """Say GOAWAY and close the connection (its streams end)."""
        if self.transport is None or self.closed.called:
            return
        if not self.going_away:
            self.going_away = True
            self._send(GoAway(0))
        self.transport.loseConnection()

    def _send(self, frame: Frame) -> None:
        if self.transport is not None and not self.closed.called:
            self.transport.write(self._codec.encode(frame))

    def _forget(self, stream: SpdyStream) -> None:
        self._streams.pop(stream.stream_id, None)

    def _finished(self, stream: SpdyStream) -> None:
        if stream.local_closed and stream.remote_closed:
            self._forget(stream)

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self._codec.feed(data)
        except ProtocolError as e:
            self._abort(str(e))
            return
        for frame in frames:
            self._frame(frame)

    def _abort(self, why: str) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()
        self._end_all(Failure(ProtocolError(why)))

    def _frame(self, frame: Frame) -> None:
        if isinstance(frame, Data):
            stream = self._streams.get(frame.stream_id)
            if stream is None or stream.remote_closed:
                return
            if frame.data:
                stream.on_data(frame.data)
            if frame.fin:
                self._remote_end(stream)
        elif isinstance(frame, SynReply):
            stream = self._streams.get(frame.stream_id)
            if stream is not None and not stream.replied.called:
                stream.replied.callback(frame.headers)
                if frame.fin:
                    self._remote_end(stream)
        elif isinstance(frame, HeadersFrame):
            stream = self._streams.get(frame.stream_id)
            if stream is not None and frame.fin:
                self._remote_end(stream)
        elif isinstance(frame, RstStream):
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                stream._ended(
                    Failure(StreamReset(f"stream {frame.stream_id} reset (status {frame.status})"))
                )
        elif isinstance(frame, Ping):
            # Odd ids are ours (a reply); the peer's even ones are echoed.
            if not frame.ping_id & 1:
                self._send(frame)
        elif isinstance(frame, SynStream):
            # This end serves no streams.
            self._send(RstStream(frame.stream_id, REFUSED_STREAM))
        elif isinstance(frame, GoAway):
            self.going_away = True
        # SETTINGS and WINDOW_UPDATE: no flow control (see the module's docstring).

    def _remote_end(self, stream: SpdyStream) -> None:
        if stream.remote_closed:
            return
        stream.remote_closed = True
        self._finished(stream)
        stream.on_end()

    def _end_all(self, reason: Failure) -> None:
        for stream in list(self._streams.values()):
            stream._ended(reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._pinging is not None and self._pinging.active():
            self._pinging.cancel()
        self._pinging = None
        gone = reason if not reason.check(ConnectionDone) else None
        self._end_all(gone or Failure(StreamReset("the SPDY connection closed")))
        if not self.closed.called:
            self.closed.callback(None)
