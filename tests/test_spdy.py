"""
SPDY/3.1 (L{k3stw.spdy}): the framing, read whole or a byte at a time, the
header compression that lasts the connection, and the client session
against an in-memory peer: streams opened, replied, fed, half-closed and
reset, pings, a peer that refuses, breaks the framing or dies mid-stream,
and back-pressure through the connection.
"""

from __future__ import annotations

import struct
import zlib

from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from k3stw.spdy import (
    DICTIONARY,
    Data,
    Frame,
    GoAway,
    HeadersFrame,
    Ping,
    ProtocolError,
    RstStream,
    Settings,
    SpdyCodec,
    SpdySession,
    StreamReset,
    SynReply,
    SynStream,
    WindowUpdate,
)

FRAMES: list[Frame] = [
    SynStream(1, [(b"streamtype", b"error"), (b"port", b"80"), (b"port", b"81")], fin=True),
    SynReply(1, [(b"x", b"y")]),
    HeadersFrame(3, [(b"a", b"b")], fin=True),
    RstStream(5, 3),
    Settings([(0, 7, 65536)]),
    Ping(2),
    GoAway(7, 0),
    WindowUpdate(1, 4096),
    Data(1, b"hello", fin=True),
]


class Peer:
    """The server's end of a session: decodes what the client wrote, encodes answers."""

    def __init__(self, session: SpdySession, transport: StringTransport) -> None:
        self.session = session
        self.transport = transport
        self.reader = SpdyCodec()
        self.writer = SpdyCodec()

    def received(self) -> list[Frame]:
        frames = self.reader.feed(self.transport.value())
        self.transport.clear()
        return frames

    def send(self, *frames: Frame) -> None:
        self.session.dataReceived(b"".join(self.writer.encode(f) for f in frames))


class CodecTests(SynchronousTestCase):
    def test_dictionary_is_spdy3s(self) -> None:
        """The header dictionary is the spec's, byte for byte (its length and checksum)."""
        self.assertEqual((len(DICTIONARY), zlib.adler32(DICTIONARY)), (1423, 3821447106))

    def test_every_frame_round_trips(self) -> None:
        writer, reader = SpdyCodec(), SpdyCodec()
        wire = b"".join(writer.encode(frame) for frame in FRAMES)
        self.assertEqual(reader.feed(wire), FRAMES)

    def test_byte_at_a_time(self) -> None:
        """Frames complete across reads; a DATA payload comes out as it arrives."""
        writer, reader = SpdyCodec(), SpdyCodec()
        wire = b"".join(writer.encode(frame) for frame in FRAMES)
        frames: list[Frame] = []
        for i in range(len(wire)):
            frames.extend(reader.feed(wire[i : i + 1]))
        controls = [f for f in frames if not isinstance(f, Data)]
        self.assertEqual(controls, FRAMES[:-1])
        data = [f for f in frames if isinstance(f, Data)]
        self.assertEqual(b"".join(f.data for f in data), b"hello")
        self.assertEqual([f.fin for f in data], [False] * 4 + [True])

    def test_wire_format(self) -> None:
        """Control frames say version 3 and their type; header names are lower-cased."""
        wire = SpdyCodec().encode(SynStream(1, [(b"StreamType", b"stdin")]))
        self.assertEqual(wire[:4], b"\x80\x03\x00\x01")
        block = zlib.decompressobj(zdict=DICTIONARY).decompress(wire[18:])
        self.assertEqual(block, struct.pack(">II", 1, 10) + b"streamtype\x00\x00\x00\x05stdin")
        self.assertEqual(SpdyCodec().encode(Data(3, b"ab", fin=True)), b"\0\0\0\3\1\0\0\2ab")

    def test_compression_context_lasts_the_connection(self) -> None:
        """The second header block needs the first's context: a fresh reader cannot read it."""
        writer, reader = SpdyCodec(), SpdyCodec()
        first = writer.encode(SynStream(1, [(b"streamtype", b"error")]))
        second = writer.encode(SynStream(3, [(b"streamtype", b"error")]))
        self.assertEqual(len(reader.feed(first + second)), 2)
        self.assertRaises(ProtocolError, SpdyCodec().feed, second)

    def test_broken_framing(self) -> None:
        self.assertRaises(ProtocolError, SpdyCodec().feed, b"\x80\x02\x00\x06\x00\x00\x00\x04abcd")
        self.assertRaises(ProtocolError, SpdyCodec().feed, b"\x80\x03\x00\x01\x00\xff\xff\xff")
        self.assertRaises(ProtocolError, SpdyCodec().feed, b"\x80\x03\x00\x03\x00\x00\x00\x02ab")
        self.assertRaises(ProtocolError, SpdyCodec().feed, b"\0\0\0\0\0\0\0\0")
        garbage = b"\x80\x03\x00\x02\x00\x00\x00\x08\x00\x00\x00\x01nothing!"
        self.assertRaises(ProtocolError, SpdyCodec().feed, garbage)


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.session = SpdySession(self.clock, ping_period=5.0)
        self.transport = StringTransport()
        self.session.makeConnection(self.transport)
        self.peer = Peer(self.session, self.transport)

    def lose(self, reason: Failure) -> None:
        self.session.connectionLost(reason)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stream_life(self) -> None:
        """Opened with its headers, replied, fed, half-closed both ways: then forgotten."""
        stream = self.session.open_stream([(b"streamtype", b"stdout")])
        replied: list[object] = []
        stream.replied.addCallback(replied.append)
        got: list[bytes] = []
        ended: list[bool] = []
        stream.on_data = got.append
        stream.on_end = lambda: ended.append(True)
        self.assertEqual(self.peer.received(), [SynStream(1, [(b"streamtype", b"stdout")])])
        self.peer.send(SynReply(1, []), Data(1, b"out"), Data(1, b"put", fin=True))
        self.assertEqual((replied, got, ended), ([[]], [b"out", b"put"], [True]))
        stream.write(b"in")
        stream.close()
        stream.write(b"ignored")
        self.assertEqual(self.peer.received(), [Data(1, b"in"), Data(1, b"", fin=True)])
        self.assertEqual(self.session._streams, {})
        self.assertEqual(self.session.open_stream([]).stream_id, 3)

    def test_half_close_keeps_the_other_way(self) -> None:
        """After our FIN the peer still sends; after its FIN we still send."""
        stream = self.session.open_stream([(b"streamtype", b"stdin")])
        got: list[bytes] = []
        stream.on_data = got.append
        self.peer.send(SynReply(1, []))
        stream.close()
        self.peer.send(Data(1, b"late"))
        self.assertEqual(got, [b"late"])
        other = self.session.open_stream([])
        self.peer.send(SynReply(3, [], fin=True))
        other.write(b"still")
        self.assertIn(Data(3, b"still"), self.peer.received())

    def test_reset_by_the_peer(self) -> None:
        stream = self.session.open_stream([])
        reasons: list[Failure] = []
        stream.on_reset = reasons.append
        self.peer.send(RstStream(1, 3))
        self.failureResultOf(stream.replied, StreamReset)
        [reason] = reasons
        self.assertIn("reset (status 3)", reason.getErrorMessage())
        stream.write(b"dropped")
        self.peer.received()
        stream.write(b"dropped")
        self.assertEqual(self.peer.received(), [])

    def test_reset_by_us(self) -> None:
        stream = self.session.open_stream([])
        self.peer.received()
        stream.reset()
        self.assertEqual(self.peer.received(), [RstStream(1, 5)])
        self.failureResultOf(stream.replied, StreamReset)

    def test_pings(self) -> None:
        """The peer's pings are echoed, its replies to ours are not; ours go every period."""
        self.peer.send(Ping(2), Ping(1))
        self.assertEqual(self.peer.received(), [Ping(2)])
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(self.peer.received(), [Ping(1), Ping(3)])
        self.lose(Failure(ConnectionLost()))

    def test_peer_streams_refused_and_flow_control_ignored(self) -> None:
        self.peer.send(SynStream(2, []), Settings([(0, 7, 1)]), WindowUpdate(0, 1))
        self.assertEqual(self.peer.received(), [RstStream(2, 3)])
        stream = self.session.open_stream([])
        self.peer.send(SynReply(1, []))
        # A 64 KiB window would stop here; spdystream never opens it.
        stream.write(b"x" * 200_000)
        sent = [f for f in self.peer.received() if isinstance(f, Data)]
        self.assertEqual(sum(len(f.data) for f in sent), 200_000)

    def test_peer_dies_mid_stream(self) -> None:
        """Every open stream hears why; closed fires; no stream can open after."""
        half = self.session.open_stream([])
        whole = self.session.open_stream([])
        done = self.session.open_stream([])
        reasons: list[Failure] = []
        half.on_reset = whole.on_reset = done.on_reset = reasons.append
        self.peer.send(SynReply(1, []), SynReply(5, [], fin=True), Data(1, b"partial"))
        self.lose(Failure(ConnectionLost("gone")))
        self.assertEqual(len(reasons), 2)
        self.assertTrue(all(r.check(ConnectionLost) for r in reasons))
        self.failureResultOf(whole.replied, ConnectionLost)
        self.assertIsNone(self.successResultOf(self.session.closed))
        self.assertRaises(StreamReset, self.session.open_stream, [])

    def test_broken_framing_aborts(self) -> None:
        stream = self.session.open_stream([])
        self.session.dataReceived(b"\x80\x09\x00\x01\x00\x00\x00\x00")
        self.assertTrue(self.transport.disconnecting)
        self.failureResultOf(stream.replied, ProtocolError)

    def test_goaway_and_close(self) -> None:
        self.peer.send(GoAway(0))
        self.assertRaises(StreamReset, self.session.open_stream, [])
        self.session.close()
        self.assertTrue(self.transport.disconnecting)

    def test_back_pressure(self) -> None:
        """A producer registered pauses with the connection; reading pauses on demand."""
        producer = StringTransport()
        self.session.register_producer(producer)
        self.assertIs(self.transport.producer, producer)
        self.session.pause_reading()
        self.assertEqual(self.transport.producerState, "paused")
        self.session.resume_reading()
        self.assertEqual(self.transport.producerState, "producing")
