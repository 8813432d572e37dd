"""
Tunnel sessions in memory: a server session and a client session joined by
queues of frames, a fake local dialer and a L{task.Clock}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from k3stw.tunnel.address import loopback_ports_authorizer, split_host_port
from k3stw.tunnel.codec import Data, Error, Pause, Resume, SyncConnections, encode
from k3stw.tunnel.interfaces import ILocalDialer, IStreamReceiver, ITunnelTransport
from k3stw.tunnel.session import Session, SessionClosed, SessionSettings
from tests.support.tunnel import (
    FakeDialer,
    QueueTransport,
    RecordingProducer,
    RecordingReceiver,
    pump,
)

KUBELET = "127.0.0.1:10250"
MiB = 1024 * 1024


class Pair:
    """A server session and a client (agent) session over queued frames."""

    def __init__(self, clock: Clock, settings: SessionSettings | None = None) -> None:
        self.clock = clock
        self.to_client = QueueTransport()
        self.to_server = QueueTransport()
        self.dialer = FakeDialer()
        self.server = Session(self.to_client, clock, role="server", settings=settings, name="n1")
        self.client = Session(
            self.to_server,
            clock,
            role="client",
            authorizer=loopback_ports_authorizer({10250, 10010}),
            dialer=self.dialer,
            settings=settings,
            name="server-a",
        )
        self.server.start()
        self.client.start()

    def pump(self) -> int:
        return pump((self.to_client, self.client), (self.to_server, self.server))


class SessionTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pair = Pair(self.clock)
        self.addCleanup(self.assertNoDelayedCalls)

    def assertNoDelayedCalls(self) -> None:
        self.pair.server.close()
        self.pair.client.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class StreamTests(SessionTestCase):
    """Streams open, carry bytes both ways and close."""

    def test_interfaces(self) -> None:
        """The fakes provide the tunnel's interfaces."""
        verifyObject(ITunnelTransport, self.pair.to_client)
        verifyObject(ILocalDialer, self.pair.dialer)
        verifyObject(IStreamReceiver, RecordingReceiver())

    def test_first_connection_id_is_two(self) -> None:
        """Like remotedialer, the server's first stream is connection 2, the next 3."""
        self.assertEqual(self.pair.server.dial(KUBELET).conn_id, 2)
        self.assertEqual(self.pair.server.dial(KUBELET).conn_id, 3)

    def test_many_streams(self) -> None:
        """Fifty streams at once each carry their own bytes both ways."""
        pair = self.pair
        streams = [pair.server.dial(KUBELET) for _ in range(50)]
        receivers = {}
        for stream in streams:
            receivers[stream.conn_id] = RecordingReceiver()
            stream.attach(receivers[stream.conn_id])
            stream.write(b"request %d" % stream.conn_id)
        pair.pump()
        self.assertEqual(len(pair.dialer.dials), 50)
        for conn_id, agent_stream in pair.dialer.streams.items():
            self.assertEqual(pair.dialer.receivers[conn_id].data, b"request %d" % conn_id)
            agent_stream.write(b"answer %d" % conn_id)
        pair.pump()
        for stream in streams:
            self.assertEqual(receivers[stream.conn_id].data, b"answer %d" % stream.conn_id)

    def test_large_write_is_chunked(self) -> None:
        """A write larger than C{data_chunk} becomes several Data messages, in order."""
        stream = self.pair.server.dial(KUBELET)
        payload = bytes(range(256)) * 1000
        stream.write(payload)
        data = [m for m in self.pair.to_client.sent if isinstance(m, Data)]
        self.assertEqual(len(data), 8)
        self.assertTrue(all(len(m.data) <= 32 * 1024 for m in data))
        self.pair.pump()
        self.assertEqual(self.pair.dialer.receivers[stream.conn_id].data, payload)

    def test_eof_from_the_server(self) -> None:
        """The server closes: the agent's end sees a clean end, and forgets the stream."""
        stream = self.pair.server.dial(KUBELET)
        self.pair.pump()
        stream.close()
        self.assertEqual(self.pair.to_client.kinds()[-1], "Error")
        self.pair.pump()
        receiver = self.pair.dialer.receivers[stream.conn_id]
        self.assertTrue(receiver.ended)
        self.assertIsNone(receiver.reason)
        self.assertEqual(list(self.pair.client.streams), [])
        self.assertEqual(list(self.pair.server.streams), [])

    def test_error_from_the_agent(self) -> None:
        """The agent's connection fails: the server's receiver gets the error text."""
        stream = self.pair.server.dial(KUBELET)
        receiver = RecordingReceiver()
        stream.attach(receiver)
        self.pair.pump()
        self.pair.dialer.streams[stream.conn_id].close("connection reset by peer")
        self.pair.pump()
        self.assertTrue(receiver.ended)
        self.assertEqual(receiver.reason, "connection reset by peer")
        self.assertTrue(stream.closed)

    def test_held_data_is_delivered_before_eof(self) -> None:
        """Bytes held for a paused reader still arrive before the end."""
        stream = self.pair.server.dial(KUBELET)
        receiver = RecordingReceiver()
        stream.attach(receiver)
        stream.pauseProducing()
        self.pair.pump()
        agent = self.pair.dialer.streams[stream.conn_id]
        agent.write(b"last words")
        agent.close()
        self.pair.pump()
        self.assertFalse(receiver.ended)
        stream.resumeProducing()
        self.assertEqual(receiver.data, b"last words")
        self.assertTrue(receiver.ended)
        self.assertIsNone(receiver.reason)

    def test_data_before_attach_is_held(self) -> None:
        """Bytes that arrive before a receiver is attached wait for it."""
        self.pair.dialer.hold = True
        stream = self.pair.server.dial(KUBELET)
        stream.write(b"early")
        self.pair.pump()
        agent = self.pair.dialer.streams[stream.conn_id]
        self.assertEqual(agent.buffered, 5)
        receiver = self.pair.dialer.connect(agent)
        self.pair.dialer.pending[stream.conn_id].callback(None)
        self.assertEqual(receiver.data, b"early")

    def test_data_for_unknown_connection(self) -> None:
        """Data for a connection the receiver does not have is answered with an Error."""
        self.pair.client.frame_received(encode(Data(1, 77, b"x")))
        reply = self.pair.to_server.sent[-1]
        assert isinstance(reply, Error)
        self.assertEqual((reply.conn_id, reply.text), (77, "connection not found server-a/77"))

    def test_dial_on_closed_session(self) -> None:
        """A closed session opens no stream."""
        self.pair.server.close()
        self.assertRaises(SessionClosed, self.pair.server.dial, KUBELET)


class RefusalTests(SessionTestCase):
    """A refused or failed Connect ends only its own stream (the improvement)."""

    def test_refused_connect_ends_only_its_stream(self) -> None:
        """A Connect the authorizer refuses gets C{connect not allowed}; the session lives on."""
        refused = self.pair.server.dial("127.0.10.1:22")
        allowed = self.pair.server.dial(KUBELET)
        refused_receiver, allowed_receiver = RecordingReceiver(), RecordingReceiver()
        refused.attach(refused_receiver)
        allowed.attach(allowed_receiver)
        allowed.write(b"ping")
        self.pair.pump()
        self.assertEqual(refused_receiver.reason, "connect not allowed")
        self.assertTrue(refused.closed)
        self.assertEqual(self.pair.dialer.dials, [("tcp", KUBELET)])
        self.assertEqual(self.pair.dialer.receivers[allowed.conn_id].data, b"ping")
        self.assertIsNone(self.pair.to_server.closed)
        self.assertIsNone(self.pair.to_client.closed)
        self.assertFalse(self.pair.client.ended.called)

    def test_failed_dial_ends_only_its_stream(self) -> None:
        """A local dial that fails sends its error; the session lives on."""
        self.pair.dialer.refuse.add("127.0.0.1:10010")
        stream = self.pair.server.dial("127.0.0.1:10010")
        receiver = RecordingReceiver()
        stream.attach(receiver)
        self.pair.pump()
        assert receiver.reason is not None
        self.assertIn("dial tcp 127.0.0.1:10010", receiver.reason)
        self.assertIn("Connection was refused", receiver.reason)
        self.assertFalse(self.pair.client.ended.called)
        self.assertEqual(self.pair.server.dial(KUBELET).conn_id, 3)

    def test_authorizer_exception_refuses(self) -> None:
        """An authorizer that raises refuses that Connect, and the failure is logged."""

        def broken(proto: str, address: str) -> bool:
            raise RuntimeError("boom")

        reply = QueueTransport()
        session = Session(reply, self.clock, role="client", authorizer=broken, dialer=FakeDialer())
        session.start()
        stream = self.pair.server.dial(KUBELET)
        receiver = RecordingReceiver()
        stream.attach(receiver)
        for frame in self.pair.to_client.queued:
            session.frame_received(frame)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(reply.sent[-1], Error(reply.sent[-1].message_id, 2, "connect not allowed"))
        session.close()

    def test_server_refuses_connect(self) -> None:
        """The server accepts no Connect from the agent, and stays up."""
        agent_side = self.pair.client.dial(KUBELET)
        receiver = RecordingReceiver()
        agent_side.attach(receiver)
        self.pair.pump()
        self.assertEqual(receiver.reason, "connect not allowed")
        self.assertFalse(self.pair.server.ended.called)

    def test_malformed_frame_ends_the_session(self) -> None:
        """A frame that does not decode ends the session with a protocol error."""
        stream = self.pair.server.dial(KUBELET)
        receiver = RecordingReceiver()
        stream.attach(receiver)
        self.pair.server.frame_received(b"\x02\x04")
        self.assertIn("protocol error", self.pair.to_client.closed or "")
        self.assertTrue(receiver.ended)
        self.assertIn("protocol error", self.successResultOf(self.pair.server.ended))


class BackPressureTests(SessionTestCase):
    """Pause above 2 MiB held, Resume below 256 KiB, producers paused on the far side."""

    def test_slow_reader_pauses_the_far_writer(self) -> None:
        """While the agent's reader is paused, the server's source pauses; memory stays bounded."""
        pair = self.pair
        stream = pair.server.dial(KUBELET)
        source = RecordingProducer()
        stream.register_producer(source)
        pair.pump()
        agent = pair.dialer.streams[stream.conn_id]
        agent.pauseProducing()  # the agent's socket is full
        chunk = b"x" * (32 * 1024)
        written = 0
        while not source.paused:
            stream.write(chunk)
            written += len(chunk)
            pair.pump()
            self.assertLessEqual(agent.buffered, 2 * MiB + len(chunk))
        self.assertGreater(agent.buffered, 2 * MiB)
        self.assertEqual(written, agent.buffered)
        self.assertEqual(pair.to_server.kinds().count("Pause"), 1)
        self.assertTrue(stream.paused_by_peer)

        agent.resumeProducing()
        self.assertEqual(agent.buffered, 0)
        self.assertEqual(len(pair.dialer.receivers[stream.conn_id].data), written)
        self.assertIsInstance(pair.to_server.sent[-1], Resume)
        pair.pump()
        self.assertFalse(source.paused)
        self.assertFalse(stream.paused_by_peer)

    def test_resume_waits_until_below_the_low_mark(self) -> None:
        """A reader that pauses again mid-drain gets Resume only below 256 KiB."""
        pair = self.pair
        stream = pair.server.dial(KUBELET)
        pair.pump()
        agent = pair.dialer.streams[stream.conn_id]
        receiver = pair.dialer.receivers[stream.conn_id]
        agent.pauseProducing()
        for _ in range(70):
            stream.write(b"y" * (32 * 1024))
        pair.pump()
        self.assertIn("Pause", pair.to_server.kinds())
        # The reader takes one chunk at a time, pausing again after each.
        receiver.on_data = lambda data: agent.pauseProducing()
        resumes = 0
        while agent.buffered:
            agent.resumeProducing()
            if pair.to_server.kinds().count("Resume") > resumes:
                resumes += 1
                self.assertLess(agent.buffered, 256 * 1024)
        self.assertEqual(resumes, 1)

    def test_peer_ignoring_pause_is_cut_off(self) -> None:
        """A stream held past the overflow limit ends with an Error, bounding memory."""
        pair = self.pair
        stream = pair.server.dial(KUBELET)
        pair.pump()
        agent = pair.dialer.streams[stream.conn_id]
        agent.pauseProducing()
        for _ in range(8 * 32 + 1):
            pair.client.frame_received(encode(Data(1, stream.conn_id, b"z" * (32 * 1024))))
        self.assertTrue(agent.closed)
        self.assertEqual(agent.buffered, 0)
        self.assertEqual(pair.to_server.sent[-1].text, "receive buffer overflow")  # type: ignore[union-attr]
        self.assertTrue(pair.dialer.receivers[stream.conn_id].ended)

    def test_peer_pause_and_resume(self) -> None:
        """Pause and Resume from the peer pause and resume the local source."""
        stream = self.pair.server.dial(KUBELET)
        source = RecordingProducer()
        stream.register_producer(source)
        self.pair.server.frame_received(encode(Pause(1, stream.conn_id)))
        self.assertTrue(source.paused)
        self.pair.server.frame_received(encode(Resume(2, stream.conn_id)))
        self.assertFalse(source.paused)

    def test_full_websocket_pauses_every_stream(self) -> None:
        """The websocket's transport pausing the session pauses every local source."""
        sources = []
        for _ in range(3):
            stream = self.pair.server.dial(KUBELET)
            sources.append(RecordingProducer())
            stream.register_producer(sources[-1])
        self.pair.server.pauseProducing()
        self.assertEqual([s.paused for s in sources], [True] * 3)
        self.pair.server.frame_received(encode(Pause(1, 2)))
        self.pair.server.resumeProducing()
        self.assertEqual([s.paused for s in sources], [True, False, False])


class SyncConnectionsTests(SessionTestCase):
    """The agent reports its connections every 60 s; the server drops the others."""

    def test_client_sends_every_interval(self) -> None:
        """SyncConnections goes out at 60 s, 120 s, ... with the sorted open ids."""
        for _ in range(3):
            self.pair.server.dial(KUBELET)
        self.pair.pump()
        self.clock.advance(59)
        self.assertNotIn("SyncConnections", self.pair.to_server.kinds())
        self.clock.advance(1)
        self.assertEqual(self.pair.to_server.sent[-1].conn_ids, (2, 3, 4))  # type: ignore[union-attr]
        self.clock.advance(60)
        self.assertEqual(self.pair.to_server.kinds().count("SyncConnections"), 2)
        self.assertNotIn("SyncConnections", self.pair.to_client.kinds())

    def test_server_prunes_stale_streams(self) -> None:
        """A stream the agent no longer lists is dropped, silently, one round later."""
        kept = self.pair.server.dial(KUBELET)
        stale = self.pair.server.dial(KUBELET)
        receiver = RecordingReceiver()
        stale.attach(receiver)
        sent = len(self.pair.to_client.sent)
        self.pair.server.frame_received(encode(SyncConnections(1, (kept.conn_id,))))
        self.assertFalse(stale.closed, "a stream gets one round to reach the agent")
        fresh = self.pair.server.dial(KUBELET)
        self.pair.server.frame_received(encode(SyncConnections(2, (kept.conn_id,))))
        self.assertTrue(stale.closed)
        self.assertTrue(receiver.ended)
        self.assertFalse(kept.closed)
        self.assertFalse(fresh.closed)
        self.assertEqual(self.pair.to_client.kinds()[sent:], ["Connect"])

    def test_no_delayed_calls_after_close(self) -> None:
        """Closing the session stops its timer and ends every stream."""
        self.pair.server.dial(KUBELET)
        self.pair.pump()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.pair.client.close("agent stopping")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.pair.to_server.closed, "agent stopping")
        self.assertTrue(all(r.ended for r in self.pair.dialer.receivers.values()))
        self.assertEqual(self.successResultOf(self.pair.client.ended), "agent stopping")

    def test_connection_lost_ends_streams(self) -> None:
        """A lost websocket ends every stream without trying to write."""
        stream = self.pair.server.dial(KUBELET)
        receiver = RecordingReceiver()
        stream.attach(receiver)
        sent = len(self.pair.to_client.sent)
        self.pair.server.connection_lost("gone")
        self.assertTrue(receiver.ended)
        self.assertIsNone(self.pair.to_client.closed)
        self.assertEqual(len(self.pair.to_client.sent), sent)

    def test_settings_are_remotedialers(self) -> None:
        """The defaults are remotedialer's timings and limits."""
        s = SessionSettings()
        self.assertEqual(
            (s.ping_interval, s.read_deadline, s.sync_interval, s.max_buffer, s.resume_below),
            (5.0, 60.0, 60.0, 2 * MiB, 256 * 1024),
        )
        self.assertRaises(ValueError, SessionSettings, max_buffer=100, resume_below=200)


class AddressTests(SynchronousTestCase):
    """Connect addresses and the agent's default authorizer."""

    def test_split(self) -> None:
        """IPv4, IPv6 in brackets and names split as Go's net.SplitHostPort."""
        self.assertEqual(split_host_port("127.0.0.1:10250"), ("127.0.0.1", 10250))
        self.assertEqual(split_host_port("[::1]:10250"), ("::1", 10250))
        self.assertEqual(split_host_port("node:1"), ("node", 1))
        for bad in ("127.0.0.1", "::1:10250", "[::1]", "h:99999", "h:x", "h:"):
            self.assertRaises(ValueError, split_host_port, bad)

    def test_loopback_authorizer(self) -> None:
        """Only tcp to loopback on the listed ports is allowed."""
        allow = loopback_ports_authorizer({10250, 10010})
        self.assertTrue(allow("tcp", "127.0.0.1:10250"))
        self.assertTrue(allow("tcp", "[::1]:10010"))
        self.assertFalse(allow("tcp", "127.0.0.1:22"))
        self.assertFalse(allow("tcp", "127.0.10.1:10250"))
        self.assertFalse(allow("udp", "127.0.0.1:10250"))
        self.assertFalse(allow("tcp", "localhost:10250"))
        self.assertFalse(allow("tcp", "garbage"))
