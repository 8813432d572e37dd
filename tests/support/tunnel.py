"""
In-memory fakes of the tunnel's interfaces (L{k3stw.tunnel.interfaces}):
a pair of websocket stand-ins that queue frames until pumped, a local dialer,
a stream receiver and a push producer that record what happens to them.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from k3stw.tunnel.codec import Message, Unknown, decode
from k3stw.tunnel.interfaces import ILocalDialer, IStreamReceiver, ITunnelTransport
from k3stw.tunnel.session import Session, Stream


@implementer(ITunnelTransport)
class QueueTransport:
    """Frames a session sent, waiting to be delivered by L{pump}."""

    def __init__(self) -> None:
        self.queued: list[bytes] = []
        self.sent: list[Message | Unknown] = []
        self.closed: str | None = None

    def send_frame(self, frame: bytes) -> None:
        self.queued.append(frame)
        self.sent.append(decode(frame))

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason

    def kinds(self) -> list[str]:
        """The class names of every message sent, in order."""
        return [type(message).__name__ for message in self.sent]


def pump(*pairs: tuple[QueueTransport, Session]) -> int:
    """
    Deliver queued frames (C{transport}'s frames go to C{session}) until
    none are left; return how many were delivered.
    """
    delivered = 0
    while any(transport.queued for transport, _ in pairs):
        for transport, session in pairs:
            frames, transport.queued = transport.queued, []
            for frame in frames:
                session.frame_received(frame)
                delivered += 1
    return delivered


@implementer(IStreamReceiver)
class RecordingReceiver:
    """Collects a stream's bytes and its end."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ended = False
        self.reason: str | None = None
        self.on_data: Callable[[bytes], None] | None = None

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def stream_data(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.on_data is not None:
            self.on_data(data)

    def stream_ended(self, reason: str | None) -> None:
        assert not self.ended, "stream_ended twice"
        self.ended = True
        self.reason = reason


@implementer(IPushProducer)
class RecordingProducer:
    """A local source that remembers whether it is paused."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        assert not self.paused, "paused twice"
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        assert self.paused, "resumed while not paused"
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


@implementer(ILocalDialer)
class FakeDialer:
    """
    Local dials in memory.  By default every dial connects at once to a new
    L{RecordingReceiver} with a L{RecordingProducer}; C{refuse} makes dials to
    those addresses fail; C{hold} leaves dials pending in C{pending}.
    """

    def __init__(self) -> None:
        self.dials: list[tuple[str, str]] = []
        self.streams: dict[int, Stream] = {}
        self.receivers: dict[int, RecordingReceiver] = {}
        self.producers: dict[int, RecordingProducer] = {}
        self.refuse: set[str] = set()
        self.hold = False
        self.pending: dict[int, Deferred[None]] = {}

    def dial(self, proto: str, address: str, stream: Stream) -> Deferred[None]:
        self.dials.append((proto, address))
        if address in self.refuse:
            return fail(ConnectionRefusedError(address))
        self.streams[stream.conn_id] = stream
        if self.hold:
            waiting: Deferred[None] = Deferred()
            self.pending[stream.conn_id] = waiting
            return waiting
        self.connect(stream)
        return succeed(None)

    def connect(self, stream: Stream) -> RecordingReceiver:
        """Attach a receiver and producer to C{stream}, as a connected socket would."""
        receiver = self.receivers[stream.conn_id] = RecordingReceiver()
        producer = self.producers[stream.conn_id] = RecordingProducer()
        stream.register_producer(producer)
        stream.attach(receiver)
        return receiver
