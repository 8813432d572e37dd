"""
A tunnel session, sans-IO: many streams multiplexed over one websocket.

The session is fed websocket messages (L{Session.frame_received}) and sends
them through an L{ITunnelTransport}; it opens local connections for the
peer's Connect messages through an L{ILocalDialer}.  Nothing here touches a
socket or the global reactor: time comes from the L{IReactorTime} it is given.

It follows remotedialer (see C{docs/tunnel-protocol.md}) with one deliberate
change: a Connect that is refused or whose local dial fails ends that stream
with an Error message, never the whole session.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from automat import TypeMachineBuilder
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from k3stw.logs import Logger
from k3stw.tunnel.address import Authorizer
from k3stw.tunnel.codec import (
    EOF,
    AddClient,
    Connect,
    Data,
    Error,
    Message,
    Pause,
    ProtocolError,
    RemoveClient,
    Resume,
    SyncConnections,
    Unknown,
    decode,
    decode_data,
    encode,
    encode_data_header,
)
from k3stw.tunnel.interfaces import ILocalDialer, IStreamReceiver, ITunnelTransport

__all__ = ["Role", "Session", "SessionClosed", "SessionOpened", "SessionSettings", "Stream"]

Role = Literal["client", "server"]

_MiB = 1024 * 1024
_INT64_MAX = (1 << 63) - 1

#: Websocket messages as C{(head, payload)}: each one is C{head + payload}.
Frames = Sequence[tuple[bytes, bytes | memoryview]]


@dataclass(frozen=True)
class SessionSettings:
    """
    A session's limits and timings; the defaults are remotedialer's.

    :ivar ping_interval: seconds between websocket pings (applied by the adapter).
    :ivar read_deadline: seconds without an answer to a ping before the
        websocket is dropped (applied by the adapter).
    :ivar handshake_timeout: seconds for the websocket opening handshake.
    :ivar sync_interval: seconds between the client's SyncConnections.
    :ivar max_buffer: a stream holding more than this for its local reader
        asks the peer to Pause.
    :ivar resume_below: ... and asks it to Resume once it holds less than this.
    :ivar overflow_limit: a stream holding more than this (a peer ignoring
        Pause) is ended with an Error.
    :ivar data_chunk: the largest Data payload sent.
    :ivar max_frame: the largest websocket message accepted.
    :ivar dial_timeout: seconds a local dial may take.
    """

    ping_interval: float = 5.0
    read_deadline: float = 60.0
    handshake_timeout: float = 5.0
    sync_interval: float = 60.0
    max_buffer: int = 2 * _MiB
    resume_below: int = _MiB // 4
    overflow_limit: int = 8 * _MiB
    data_chunk: int = 32 * 1024
    max_frame: int = _MiB
    dial_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.resume_below < self.max_buffer < self.overflow_limit:
            raise ValueError("need 0 < resume_below < max_buffer < overflow_limit")
        # 40 bytes leave room for the four varints in front of the payload.
        if not 0 < self.data_chunk <= self.max_frame - 40:
            raise ValueError("data_chunk must fit in max_frame with its header")


class SessionClosed(Exception):
    """The session is over; no stream can be opened on it."""


# -- one stream's lifecycle ----------------------------------------------------------------


class _StreamInput(Protocol):
    """What happens to a stream."""

    def connected(self) -> None:
        "The local connection for the peer's Connect is up (or: a stream we dialled)."

    def fail(self, reason: str) -> None:
        "End the stream with an error the peer is told about."

    def local_close(self, reason: str | None) -> None:
        "The local end closed (C{None}: cleanly)."

    def remote_close(self, reason: str | None) -> None:
        "The peer sent Error (C{None}: EOF)."

    def drained(self) -> None:
        "Everything the peer sent before it closed has been delivered."

    def abort(self, reason: str) -> None:
        "End the stream without a word to the peer (session over, or pruned)."


@dataclass
class _StreamCore:
    stream: Stream


_sb = TypeMachineBuilder(_StreamInput, _StreamCore)
_pending = _sb.state("pending")
_open = _sb.state("open")
_draining = _sb.state("draining")
_closed = _sb.state("closed")

_pending.upon(_StreamInput.connected).to(_open).returns(None)


@_pending.upon(_StreamInput.fail).to(_closed)
@_open.upon(_StreamInput.fail).to(_closed)
def _failed(inputs: _StreamInput, core: _StreamCore, reason: str) -> None:
    core.stream._end(send=reason, notify=True, reason=reason)


@_pending.upon(_StreamInput.local_close).to(_closed)
@_open.upon(_StreamInput.local_close).to(_closed)
def _closed_here(inputs: _StreamInput, core: _StreamCore, reason: str | None) -> None:
    core.stream._end(send=EOF if reason is None else reason, notify=False, reason=reason)


@_pending.upon(_StreamInput.remote_close).to(_closed)
def _closed_before_dial(inputs: _StreamInput, core: _StreamCore, reason: str | None) -> None:
    # remotedialer has no half-close: nothing could travel back, so the dial is moot.
    core.stream._end(send=None, notify=True, reason=reason)


@_open.upon(_StreamInput.remote_close).to(_draining)
def _closed_there(inputs: _StreamInput, core: _StreamCore, reason: str | None) -> None:
    core.stream._begin_drain(reason, inputs)


@_draining.upon(_StreamInput.drained).to(_closed)
def _drained(inputs: _StreamInput, core: _StreamCore) -> None:
    core.stream._end(send=None, notify=True, reason=core.stream._remote_reason)


@_draining.upon(_StreamInput.local_close).to(_closed)
def _closed_while_draining(inputs: _StreamInput, core: _StreamCore, reason: str | None) -> None:
    core.stream._end(send=None, notify=False, reason=reason)


@_draining.upon(_StreamInput.fail).to(_closed)
@_pending.upon(_StreamInput.abort).to(_closed)
@_open.upon(_StreamInput.abort).to(_closed)
@_draining.upon(_StreamInput.abort).to(_closed)
def _aborted(inputs: _StreamInput, core: _StreamCore, reason: str) -> None:
    core.stream._end(send=None, notify=True, reason=reason)


_draining.upon(_StreamInput.remote_close).loop().returns(None)
_closed.upon(_StreamInput.connected).loop().returns(None)
_closed.upon(_StreamInput.fail).loop().returns(None)
_closed.upon(_StreamInput.local_close).loop().returns(None)
_closed.upon(_StreamInput.remote_close).loop().returns(None)
_closed.upon(_StreamInput.drained).loop().returns(None)
_closed.upon(_StreamInput.abort).loop().returns(None)

_StreamMachine = _sb.build()


@implementer(IPushProducer)
class Stream:
    """
    One connection tunnelled through a L{Session}.

    The local side writes with L{write} and ends with L{close}; what the peer
    sends goes to the L{IStreamReceiver} given to L{attach}, held (and
    bounded by Pause/Resume) while there is none or while it is paused.  A
    stream is an L{IPushProducer} for its local consumer, and pauses the
    producer given to L{register_producer} while the peer (or the websocket
    under the session) cannot take more.

    :ivar conn_id: the connection id on the wire.
    :ivar proto: C{tcp}.
    :ivar address: C{host:port} at the agent's end.
    """

    _log = Logger()

    def __init__(self, session: Session, conn_id: int, proto: str, address: str) -> None:
        self.conn_id = conn_id
        self.proto = proto
        self.address = address
        self._session = session
        self._settings = session.settings
        self._generation = session._sync_generation
        self._receiver: IStreamReceiver | None = None
        self._held: deque[bytes] = deque()
        self._held_bytes = 0
        self._reader_paused = False
        self._flushing = False
        self._sent_pause = False
        self._peer_paused = False
        self._producer: IPushProducer | None = None
        self._producer_paused = False
        self._remote_ended = False
        self._remote_reason: str | None = None
        self._ended = False
        self._end_reason: str | None = None
        self._dialing: Deferred[None] | None = None
        self._inputs = _StreamMachine(_StreamCore(self))

    def __repr__(self) -> str:
        return f"<Stream {self.conn_id} {self.proto}/{self.address}>"

    # -- the local side's API

    @property
    def closed(self) -> bool:
        """Whether the stream is over."""
        return self._ended

    @property
    def buffered(self) -> int:
        """Bytes from the peer held for the local reader."""
        return self._held_bytes

    @property
    def paused_by_peer(self) -> bool:
        """Whether the peer asked us to stop sending."""
        return self._peer_paused

    def attach(self, receiver: IStreamReceiver) -> None:
        """
        Deliver the peer's bytes to C{receiver} from now on, starting with
        any held.  On a stream already over, C{receiver} is told at once.
        """
        if self._receiver is not None:
            raise RuntimeError(f"{self!r} already has a receiver")
        self._receiver = receiver
        if self._ended:
            receiver.stream_ended(self._end_reason)
        else:
            self._flush()

    def register_producer(self, producer: IPushProducer) -> None:
        """Pause C{producer} (the local source) while the peer cannot take more."""
        self._producer = producer
        self._producer_paused = False
        self._update_producer()

    def unregister_producer(self) -> None:
        """Forget the local source."""
        self._producer = None

    def write(self, data: bytes) -> None:
        """Send C{data} to the peer (dropped once the stream is over)."""
        if self._ended or self._remote_ended:
            return
        self._session._send_data(self.conn_id, data)

    def close(self, reason: str | None = None) -> None:
        """
        End the stream from the local side: the peer gets Error C{EOF}
        (C{reason} C{None}) or Error C{reason}.  Idempotent.
        """
        self._inputs.local_close(reason)

    # -- IPushProducer, for the local consumer of the peer's bytes

    def pauseProducing(self) -> None:
        self._reader_paused = True

    def resumeProducing(self) -> None:
        self._reader_paused = False
        self._flush()

    def stopProducing(self) -> None:
        self.close(None)

    # -- driven by the session

    def _connected(self) -> None:
        self._inputs.connected()

    def _dial_failed(self, failure: Failure) -> None:
        if self._ended and failure.check(CancelledError):
            return
        self._inputs.fail(f"dial {self.proto} {self.address}: {failure.getErrorMessage()}")

    def _remote_close(self, reason: str | None) -> None:
        self._inputs.remote_close(reason)

    def _abort(self, reason: str) -> None:
        self._inputs.abort(reason)

    def _data_received(self, data: bytes) -> None:
        if self._ended or self._remote_ended:
            return
        receiver = self._receiver
        if receiver is not None and not self._reader_paused and not self._held:
            receiver.stream_data(data)
            return
        self._held.append(data)
        self._held_bytes += len(data)
        settings = self._settings
        if self._held_bytes > settings.overflow_limit:
            self._log.warn(
                "tunnel stream {conn_id} to {address}: peer ignored Pause, "
                "{held} bytes held; closing it",
                conn_id=self.conn_id,
                address=self.address,
                held=self._held_bytes,
            )
            self._inputs.fail("receive buffer overflow")
        elif self._held_bytes > settings.max_buffer and not self._sent_pause:
            self._sent_pause = True
            self._session._send(Pause(self._session._id(), self.conn_id))

    def _set_peer_paused(self, paused: bool) -> None:
        self._peer_paused = paused
        self._update_producer()

    def _update_producer(self) -> None:
        producer = self._producer
        if producer is None or self._ended:
            return
        want = self._peer_paused or self._session.paused
        if want == self._producer_paused:
            return
        self._producer_paused = want
        if want:
            producer.pauseProducing()
        else:
            producer.resumeProducing()

    def _flush(self) -> None:
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._held and not self._reader_paused and not self._ended:
                receiver = self._receiver
                if receiver is None:
                    break
                data = self._held.popleft()
                self._held_bytes -= len(data)
                receiver.stream_data(data)
        finally:
            self._flushing = False
        if self._ended:
            return
        if (
            self._sent_pause
            and not self._remote_ended
            and self._held_bytes < self._settings.resume_below
        ):
            self._sent_pause = False
            self._session._send(Resume(self._session._id(), self.conn_id))
        if self._remote_ended and not self._held:
            self._inputs.drained()

    # -- outputs of the machine

    def _begin_drain(self, reason: str | None, inputs: _StreamInput) -> None:
        self._remote_ended = True
        self._remote_reason = reason
        if self._producer is not None:
            # Nothing we read locally can reach the peer any more.
            self._producer.pauseProducing()
            self._producer_paused = True
        if not self._held:
            inputs.drained()  # postponed by the machine until this transition is done

    def _end(self, send: str | None, notify: bool, reason: str | None) -> None:
        self._ended = True
        self._end_reason = reason
        self._held.clear()
        self._held_bytes = 0
        self._producer = None
        dialing, self._dialing = self._dialing, None
        self._session._forget(self)
        if send is not None:
            self._session._send(Error(self._session._id(), self.conn_id, send))
        if dialing is not None and not dialing.called:
            dialing.cancel()
        if notify and self._receiver is not None:
            self._receiver.stream_ended(reason)


# -- the session --------------------------------------------------------------------------


class _SessionInput(Protocol):
    """What happens to a session."""

    def start(self) -> None:
        "The websocket is open."

    def frame(self, frame: bytes) -> None:
        "One binary websocket message arrived."

    def close(self, reason: str) -> None:
        "End the session from this side."

    def lost(self, reason: str) -> None:
        "The websocket is gone."


@dataclass
class _SessionCore:
    session: Session


_ssb = TypeMachineBuilder(_SessionInput, _SessionCore)
_created = _ssb.state("created")
_running = _ssb.state("running")
_ended = _ssb.state("ended")


@_created.upon(_SessionInput.start).to(_running)
def _started(inputs: _SessionInput, core: _SessionCore) -> None:
    core.session._begin()


@_running.upon(_SessionInput.frame).loop()
def _handle(inputs: _SessionInput, core: _SessionCore, frame: bytes) -> None:
    core.session._handle_frame(frame, inputs)


@_created.upon(_SessionInput.close).to(_ended)
@_running.upon(_SessionInput.close).to(_ended)
def _closing(inputs: _SessionInput, core: _SessionCore, reason: str) -> None:
    core.session._teardown(reason, close_transport=True)


@_created.upon(_SessionInput.lost).to(_ended)
@_running.upon(_SessionInput.lost).to(_ended)
def _lost(inputs: _SessionInput, core: _SessionCore, reason: str) -> None:
    core.session._teardown(reason, close_transport=False)


_ended.upon(_SessionInput.start).loop().returns(None)
_ended.upon(_SessionInput.frame).loop().returns(None)
_ended.upon(_SessionInput.close).loop().returns(None)
_ended.upon(_SessionInput.lost).loop().returns(None)

_SessionMachine = _ssb.build()


@implementer(IPushProducer)
class Session:
    """
    One tunnel session: the streams multiplexed over one websocket.

    The adapter calls L{start} when the websocket opens, L{frame_received}
    for every binary message, L{connection_lost} when it closes, and
    registers the session as a streaming producer on the websocket's
    transport so that a full socket pauses every stream's local source.

    :param transport: where frames go.
    :param clock: the time source for SyncConnections.
    :param role: C{"client"} (the agent: sends SyncConnections, accepts
        Connect) or C{"server"} (dials).
    :param authorizer: decides each peer Connect; none: every Connect is refused.
    :param dialer: opens the local connection of an allowed Connect.
    :param name: who is at the other end, for logs (the node name).
    :ivar ended: fires with the reason once the session is over.
    """

    _log = Logger()

    def __init__(
        self,
        transport: ITunnelTransport,
        clock: IReactorTime,
        *,
        role: Role,
        authorizer: Authorizer | None = None,
        dialer: ILocalDialer | None = None,
        settings: SessionSettings | None = None,
        name: str = "",
        first_message_id: int | None = None,
    ) -> None:
        self.settings = settings if settings is not None else SessionSettings()
        self.role: Role = role
        self.name = name
        self.paused = False
        self.ended: Deferred[str] = Deferred()
        self._transport = transport
        self._clock = clock
        self._authorizer = authorizer
        self._dialer = dialer
        self._streams: dict[int, Stream] = {}
        self._last_conn_id = 1  # remotedialer: the first id it hands out is 2
        self._message_id = (
            first_message_id if first_message_id is not None else random.getrandbits(62)
        )
        self._sync_generation = 0
        self._sync_call: LoopingCall | None = None
        self._over = False
        self._running = False
        # A transport that can take several messages in one write (the websocket's).
        self._send_frames: Callable[[Frames], None] | None = getattr(transport, "send_frames", None)
        self._inputs = _SessionMachine(_SessionCore(self))

    def __repr__(self) -> str:
        return f"<Session {self.role} {self.name!r} streams={len(self._streams)}>"

    # -- API

    @property
    def streams(self) -> Iterator[Stream]:
        """The open streams."""
        return iter(list(self._streams.values()))

    def stream(self, conn_id: int) -> Stream | None:
        """The open stream with C{conn_id}, if any."""
        return self._streams.get(conn_id)

    def start(self) -> None:
        """The websocket is open: start the periodic SyncConnections (client role)."""
        self._inputs.start()

    def frame_received(self, frame: bytes) -> None:
        """Handle one binary websocket message."""
        if self._running:
            # The data path: a Data message for an open stream needs nothing
            # of the machine but that it runs (what _handle_frame would do).
            data = decode_data(frame)
            if data is not None:
                stream = self._streams.get(data[0])
                if stream is not None:
                    stream._data_received(data[1])
                    return
        self._inputs.frame(frame)

    def connection_lost(self, reason: str) -> None:
        """The websocket is gone: every stream ends."""
        self._inputs.lost(reason)

    def close(self, reason: str = "session closed") -> None:
        """End the session: close the websocket and every stream.  Idempotent."""
        self._inputs.close(reason)

    def dial(self, address: str, proto: str = "tcp") -> Stream:
        """
        Open a stream to C{address} (C{host:port}) at the peer's end.

        Like remotedialer, this does not wait for an answer: the stream can
        be written at once, and ends with the peer's Error if the peer
        refuses or cannot connect.

        :raises SessionClosed: the session is over.
        """
        if self._over:
            raise SessionClosed(f"tunnel session {self.name!r} is closed")
        conn_id = self._last_conn_id
        while True:
            conn_id = conn_id + 1 if conn_id < _INT64_MAX else 2
            if conn_id not in self._streams:
                break
        self._last_conn_id = conn_id
        stream = Stream(self, conn_id, proto, address)
        self._streams[conn_id] = stream
        self._send(Connect(self._id(), conn_id, proto, address))
        stream._connected()
        return stream

    # -- IPushProducer: the websocket's transport pushes back

    def pauseProducing(self) -> None:
        self.paused = True
        for stream in list(self._streams.values()):
            stream._update_producer()

    def resumeProducing(self) -> None:
        self.paused = False
        for stream in list(self._streams.values()):
            stream._update_producer()

    def stopProducing(self) -> None:
        self.connection_lost("websocket transport stopped")

    # -- internals

    def _id(self) -> int:
        """The next message id: remotedialer counts up from a random start."""
        self._message_id = (self._message_id + 1) & _INT64_MAX
        return self._message_id

    def _send(self, message: Message) -> None:
        if not self._over:
            self._transport.send_frame(encode(message))

    def _send_data(self, conn_id: int, data: bytes) -> None:
        """Send C{data} on C{conn_id} as Data messages of at most C{data_chunk} bytes."""
        if self._over or not data:
            return
        chunk = self.settings.data_chunk
        frames: list[tuple[bytes, bytes | memoryview]]
        if len(data) <= chunk:
            frames = [(encode_data_header(self._id(), conn_id), data)]
        else:
            view = memoryview(data)
            frames = [
                (encode_data_header(self._id(), conn_id), view[start : start + chunk])
                for start in range(0, len(data), chunk)
            ]
        send_frames = self._send_frames
        if send_frames is not None:
            send_frames(frames)
        else:
            for head, payload in frames:
                self._transport.send_frame(head + payload)

    def _forget(self, stream: Stream) -> None:
        if self._streams.get(stream.conn_id) is stream:
            del self._streams[stream.conn_id]

    def _begin(self) -> None:
        self._running = True
        if self.role == "client":
            self._sync_call = LoopingCall(self._send_sync)
            self._sync_call.clock = self._clock
            self._sync_call.start(self.settings.sync_interval, now=False).addErrback(
                self._sync_stopped
            )

    def _sync_stopped(self, failure: Failure) -> None:
        self._log.failure("tunnel {name}: SyncConnections loop stopped", failure, name=self.name)

    def _send_sync(self) -> None:
        try:
            self._send(SyncConnections(self._id(), tuple(sorted(self._streams))))
        except Exception:
            self._log.failure("tunnel {name}: could not send SyncConnections", name=self.name)

    def _teardown(self, reason: str, close_transport: bool) -> None:
        self._over = True
        self._running = False
        if self._sync_call is not None and self._sync_call.running:
            self._sync_call.stop()
        self._sync_call = None
        for stream in list(self._streams.values()):
            stream._abort(f"tunnel session closed: {reason}")
        if close_transport:
            self._transport.close(reason)
        self._log.info(
            "tunnel session {name} ({role}) ended: {reason}",
            name=self.name,
            role=self.role,
            reason=reason,
        )
        self.ended.callback(reason)

    def _handle_frame(self, frame: bytes, inputs: _SessionInput) -> None:
        try:
            message = decode(frame)
        except ProtocolError as error:
            self._log.warn(
                "tunnel session {name}: malformed message: {error}", name=self.name, error=error
            )
            inputs.close(f"protocol error: {error}")  # runs after this input
            return
        match message:
            case Data(_, conn_id, data):
                stream = self._streams.get(conn_id)
                if stream is None:
                    self._send(
                        Error(self._id(), conn_id, f"connection not found {self.name}/{conn_id}")
                    )
                else:
                    stream._data_received(data)
            case Connect():
                self._accept(message)
            case Error(_, conn_id, text):
                stream = self._streams.get(conn_id)
                if stream is not None:
                    stream._remote_close(None if message.is_eof else text)
            case Pause(_, conn_id) | Resume(_, conn_id):
                stream = self._streams.get(conn_id)
                if stream is not None:
                    stream._set_peer_paused(isinstance(message, Pause))
            case SyncConnections(_, conn_ids):
                self._prune(conn_ids)
            case AddClient() | RemoveClient() | Unknown():
                self._log.debug(
                    "tunnel session {name}: ignored {message!r}", name=self.name, message=message
                )

    def _accept(self, connect: Connect) -> None:
        conn_id = connect.conn_id
        if conn_id <= 0:
            self._send(Error(self._id(), conn_id, "invalid connection id"))
            return
        existing = self._streams.get(conn_id)
        if existing is not None:
            existing._abort("the peer reused its connection id")
            self._send(Error(self._id(), conn_id, "connection id already in use"))
            return
        allowed = False
        if self._authorizer is not None and self._dialer is not None:
            try:
                allowed = bool(self._authorizer(connect.proto, connect.address))
            except Exception:
                self._log.failure(
                    "tunnel session {name}: authorizer failed on {proto}/{address}",
                    name=self.name,
                    proto=connect.proto,
                    address=connect.address,
                )
        if not allowed or self._dialer is None:
            self._log.info(
                "tunnel session {name}: refused Connect {conn_id} to {proto}/{address}",
                name=self.name,
                conn_id=conn_id,
                proto=connect.proto,
                address=connect.address,
            )
            self._send(Error(self._id(), conn_id, "connect not allowed"))
            return
        stream = Stream(self, conn_id, connect.proto, connect.address)
        self._streams[conn_id] = stream
        try:
            dialing = self._dialer.dial(connect.proto, connect.address, stream)
        except Exception:
            dialing = fail()
        if not stream.closed:
            stream._dialing = dialing
        dialing.addCallbacks(lambda _: stream._connected(), stream._dial_failed)

    def _prune(self, conn_ids: tuple[int, ...]) -> None:
        # A stream opened after the previous SyncConnections arrived may not
        # have reached the peer when it wrote this list: it gets one more round.
        generation = self._sync_generation
        self._sync_generation += 1
        alive = set(conn_ids)
        for stream in list(self._streams.values()):
            if stream.conn_id not in alive and stream._generation < generation:
                stream._abort("closed: the peer no longer has this connection")


#: Told about each session once its websocket is open: C{(peer name, session)}.
SessionOpened = Callable[[str, Session], None]
