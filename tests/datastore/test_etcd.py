"""
The etcd v3 backend against real etcd 3.4 processes: the shared conformance
suite, plus what only etcd has (members that die, TLS, the JSON gateway).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import provider
from zope.interface.verify import verifyObject

from k3stw.datastore.etcd import EtcdDatastore, EtcdTLS, EtcdWatch, parse_etcd_endpoints
from k3stw.datastore.etcd.codec import decode_event
from k3stw.datastore.etcd.gateway import prefix_end
from k3stw.datastore.interface import (
    Compacted,
    DatastoreUnavailable,
    Event,
    EventType,
    IDatastore,
    IWatch,
    KeyValue,
    WatchOverflow,
)
from k3stw.datastore.sql import CompactionPolicy
from tests.datastore.conformance import DatastoreConformance, EventCollector, failure_of
from tests.support.etcd import EtcdCluster, start_etcd
from tests.support.net import free_port

reactor: Any = _reactor


class EtcdTestBase(TestCase):
    """Starts real etcd members and datastores on them; everything is cleaned up."""

    timeout = 120
    watch_buffer_limit = 1000

    async def start_cluster(self, size: int = 1, tls: bool = False) -> EtcdCluster:
        cluster = await start_etcd(reactor, size, tls=tls)
        self.addCleanup(lambda: Deferred.fromCoroutine(cluster.stop()))
        return cluster

    def client(self, cluster: EtcdCluster, **kwargs: Any) -> EtcdDatastore:
        return self.client_for(cluster.endpoints, cluster.client_tls(), **kwargs)

    def client_for(
        self, endpoints: Sequence[str], tls: EtcdTLS | None = None, **kwargs: Any
    ) -> EtcdDatastore:
        kwargs.setdefault("watch_buffer_events", self.watch_buffer_limit)
        kwargs.setdefault("compact_interval", 0)
        store = EtcdDatastore(reactor, endpoints, tls, **kwargs)
        store.startService()
        self.addCleanup(store.stopService)
        return store

    async def ready_client(self, cluster: EtcdCluster, **kwargs: Any) -> EtcdDatastore:
        store = self.client(cluster, **kwargs)
        await store.when_ready()
        return store


class EtcdConformanceTests(DatastoreConformance, EtcdTestBase):
    """The shared suite on a fresh single-member etcd per test."""

    async def make_datastore(self) -> IDatastore:
        self._cluster = await self.start_cluster()
        return await self.ready_client(self._cluster)

    async def second_client(self, store: IDatastore) -> IDatastore:
        return await self.ready_client(self._cluster)

    async def reopen_datastore(self, store: IDatastore) -> IDatastore:
        # A real restart of both sides: the client, and etcd itself (kill -9).
        assert isinstance(store, EtcdDatastore)
        await store.stopService()
        member = self._cluster.members[0]
        member.kill()
        await self._cluster.restart(member)
        return await self.ready_client(self._cluster)


class EtcdSpecificTests(EtcdTestBase):
    """Behaviour of the etcd backend that the shared suite does not cover."""

    async def test_watch_resumes_on_another_member_when_the_leader_is_killed(self) -> None:
        cluster = await self.start_cluster(3)
        leader = await cluster.leader()
        others = [m for m in cluster.members if m is not leader]
        # The leader is listed first, so the watch and the requests start there.
        store = self.client_for([m.client_url for m in [leader, *others]])
        writer = self.client_for([m.client_url for m in others])
        first = await writer.create("/registry/fo/a", b"1")
        collector = EventCollector()
        watch = await store.watch("/registry/fo/", first, collector.deliver)
        self.addCleanup(watch.cancel)
        await collector.wait_for_revision(first)
        leader.kill()
        await leader.wait_dead(reactor)
        await cluster.wait_healthy(others)  # a new leader was elected
        revisions = [first]
        for i in range(20):
            revisions.append(await writer.create(f"/registry/fo/b{i}", b"x"))
        events = await collector.wait_for_revision(revisions[-1])
        self.assertEqual([e.revision for e in events], revisions)
        # Requests fail over too: the first endpoint is dead.
        self.assertEqual(await store.current_revision(), revisions[-1])
        rev = await store.update("/registry/fo/a", b"2", first)
        self.assertEqual((await collector.wait_for_revision(rev))[-1].revision, rev)
        self.assertFalse(watch.ended.called)

    async def test_requests_fail_over_and_come_back(self) -> None:
        cluster = await self.start_cluster(3)
        store = self.client(cluster)
        rev = await store.create("/registry/x", b"1")
        for member in cluster.members[:2]:
            member.kill()
            await member.wait_dead(reactor)
            await cluster.restart(member)
            rev = await store.update("/registry/x", b"%d" % rev, rev)
        kv = await store.get("/registry/x")
        assert kv is not None
        self.assertEqual(kv.mod_revision, rev)

    async def test_unreachable_endpoint_gives_datastore_unavailable(self) -> None:
        port = free_port("127.0.0.31")
        store = self.client_for([f"http://127.0.0.31:{port}"], request_timeout=0.5)
        for call in (
            store.get("/registry/a"),
            store.create("/registry/a", b"1"),
            store.list("/registry/"),
            store.health(),
            store.watch("/registry/", 0, lambda events: None),
        ):
            error = await failure_of(self, call, DatastoreUnavailable)
            self.assertIn(f"127.0.0.31:{port}", str(error))

    async def test_losing_every_member_ends_a_watch_with_unavailable(self) -> None:
        cluster = await self.start_cluster(1)
        store = self.client(cluster, request_timeout=0.5)
        collector = EventCollector()
        watch = await store.watch("/registry/", 0, collector.deliver)
        cluster.members[0].kill()
        await self.assertFailure(watch.ended, DatastoreUnavailable)
        await self.assertFailure(store.get("/registry/a"), DatastoreUnavailable)

    async def test_https_endpoint_with_client_certificate(self) -> None:
        cluster = await self.start_cluster(1, tls=True)
        self.assertTrue(cluster.endpoints[0].startswith("https://127.0.0.30:"))
        store = self.client(cluster)
        collector = EventCollector()
        watch = await store.watch("/registry/tls/", 0, collector.deliver)
        self.addCleanup(watch.cancel)
        rev = await store.create("/registry/tls/a", b"secret")
        kv = await store.get("/registry/tls/a")
        self.assertEqual(kv, KeyValue("/registry/tls/a", b"secret", rev, rev))
        events = await collector.wait_for_revision(rev)
        self.assertEqual([e.type for e in events], [EventType.CREATE])

    async def test_https_without_client_certificate_is_refused(self) -> None:
        cluster = await self.start_cluster(1, tls=True)
        assert cluster.certs is not None
        store = self.client_for(
            cluster.endpoints, EtcdTLS(cafile=cluster.certs.ca), request_timeout=1.0
        )
        await self.assertFailure(store.get("/registry/a"), DatastoreUnavailable)

    async def test_compacted_revision_reported_by_a_read_and_a_watch(self) -> None:
        cluster = await self.start_cluster(1)
        store = self.client(cluster)
        r1 = await store.create("/registry/c", b"1")
        r2 = await store.update("/registry/c", b"2", r1)
        r3 = await store.update("/registry/c", b"3", r2)
        await store.compact(r2)
        # Compacting to an older revision again is not an error.
        await store.compact(r1)
        error = await failure_of(self, store.list("/registry/", revision=r1), Compacted)
        self.assertEqual((error.requested, error.compact_revision), (r1, r2))
        error = await failure_of(self, store.watch("/registry/", r1, lambda e: None), Compacted)
        self.assertEqual(error.compact_revision, r2)
        collector = EventCollector()
        watch = await store.watch("/registry/", r2, collector.deliver)
        self.addCleanup(watch.cancel)
        events = await collector.wait_for_revision(r3)
        # prev of r2 (revision r1) was compacted away: etcd cannot send it.
        self.assertEqual([(e.revision, e.prev is None) for e in events], [(r2, True), (r3, False)])

    async def test_lease_ttl_is_reported_and_replaced_by_update(self) -> None:
        cluster = await self.start_cluster(1)
        store = self.client(cluster)
        rev = await store.create("/registry/leases/a", b"1", lease_ttl=600)
        kv = await store.get("/registry/leases/a")
        assert kv is not None
        self.assertEqual(kv.lease, 600)
        rev = await store.update("/registry/leases/a", b"2", rev, lease_ttl=1)
        collector = EventCollector()
        watch = await store.watch("/registry/leases/", rev, collector.deliver)
        self.addCleanup(watch.cancel)
        events = await collector.wait_until(
            lambda events: any(e.type is EventType.DELETE for e in events)
        )
        self.assertEqual([e.type for e in events], [EventType.UPDATE, EventType.DELETE])
        self.assertEqual(events[0].kv.lease, 1)
        self.assertEqual(
            events[1].kv,
            KeyValue("/registry/leases/a", b"2", kv.create_revision, events[1].revision, 1),
        )

    async def test_empty_prefix_means_every_key(self) -> None:
        cluster = await self.start_cluster(1)
        store = self.client(cluster)
        collector = EventCollector()
        watch = await store.watch("", 0, collector.deliver)
        self.addCleanup(watch.cancel)
        for key in ("/a", "b", "\x01"):
            rev = await store.create(key, b"x")
        self.assertEqual(await store.count(""), 3)
        page = await store.list("", limit=2)
        self.assertEqual(([kv.key for kv in page.items], page.more), (["\x01", "/a"], True))
        page = await store.list("", continue_from="/a", revision=page.revision)
        self.assertEqual([kv.key for kv in page.items], ["b"])
        events = await collector.wait_for_revision(rev)
        self.assertEqual([e.kv.key for e in events], ["/a", "b", "\x01"])

    async def test_unreachable_at_start_is_logged_with_the_endpoint(self) -> None:
        port = free_port("127.0.0.31")
        seen: Deferred[LogEvent] = Deferred()
        matches: list[LogEvent] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            if "unreachable" in event.get("log_format", ""):
                matches.append(event)
                if len(matches) == 1:
                    # Not from inside the datastore's own log call.
                    reactor.callLater(0, seen.callback, event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        store = self.client_for([f"http://127.0.0.31:{port}"], request_timeout=0.2)
        event = await seen
        self.assertIn(f"127.0.0.31:{port}", formatEvent(event))
        self.assertFalse(store.when_ready().called)

    async def test_overflow_is_reported_once_and_nothing_follows(self) -> None:
        cluster = await self.start_cluster(1)
        store = self.client(cluster, watch_buffer_events=5)
        collector = EventCollector()
        watch = await store.watch("/registry/o/", 0, collector.deliver)
        watch.pauseProducing()
        for i in range(10):
            await store.create(f"/registry/o/{i}", b"x")
        await self.assertFailure(watch.ended, WatchOverflow)
        watch.resumeProducing()
        watch.cancel()
        await store.create("/registry/o/late", b"x")
        self.assertEqual(collector.events, [])

    async def test_stop_service_ends_open_watches_with_unavailable(self) -> None:
        cluster = await self.start_cluster(1)
        store = self.client(cluster)
        watch = await store.watch("/registry/", 0, lambda events: None)
        await store.stopService()
        await self.assertFailure(watch.ended, DatastoreUnavailable)

    async def test_background_compactor_keeps_the_newest_revisions(self) -> None:
        cluster = await self.start_cluster(1)
        writer = self.client(cluster)
        rev = await writer.create("/registry/bg", b"0")
        for _ in range(30):
            rev = await writer.update("/registry/bg", b"x", rev)
        compactor = self.client(
            cluster,
            compact_interval=0.05,
            compaction_policy=CompactionPolicy(keep_revisions=10, keep_seconds=0),
        )
        while await writer.compacted_revision() == 0:
            await deferLater(reactor, 0.05)
        self.assertEqual(await writer.compacted_revision(), rev - 10)
        await compactor.stopService()
        self.assertIsNotNone(await writer.get("/registry/bg", rev - 10))
        await self.assertFailure(writer.get("/registry/bg", rev - 11), Compacted)


class EtcdPureTests(SynchronousTestCase):
    """Translation rules that need no server."""

    def test_prefix_end_follows_etcd(self) -> None:
        self.assertEqual(prefix_end(b"/registry/"), b"/registry0")
        self.assertEqual(prefix_end(b"a\xff"), b"b")
        self.assertEqual(prefix_end(b"\xff\xff"), b"\x00")
        self.assertEqual(prefix_end(b""), b"\x00")

    def test_endpoint_parsing(self) -> None:
        self.assertEqual(
            parse_etcd_endpoints("http://h1:2379, http://h2"),
            ["http://h1:2379", "http://h2:2379"],
        )
        self.assertEqual(parse_etcd_endpoints("https://[::1]:1"), ["https://[::1]:1"])
        for bad in ("", "h1:2379", "unix:///x", "http://h1,https://h2", "http://h:x"):
            with self.assertRaises(ValueError) as raised:
                parse_etcd_endpoints(bad)
            self.assertIn("http", str(raised.exception))

    def test_delete_event_carries_the_deleted_value(self) -> None:
        raw = {
            "type": "DELETE",
            "kv": {"key": "L2E=", "mod_revision": "7"},
            "prev_kv": {
                "key": "L2E=",
                "create_revision": "2",
                "mod_revision": "5",
                "version": "3",
                "value": "djI=",
            },
        }
        self.assertEqual(
            decode_event(raw),
            Event(
                EventType.DELETE,
                7,
                KeyValue("/a", b"v2", 2, 7),
                KeyValue("/a", b"v2", 2, 5),
            ),
        )

    def test_constructor_starts_nothing(self) -> None:
        clock = Clock()
        EtcdDatastore(clock, ["http://127.0.0.30:1"])
        self.assertEqual(clock.getDelayedCalls(), [])


class FakeGatewayStream:
    """The server end of one /v3/watch request on a MemoryReactor connection."""

    def __init__(self, clock: MemoryReactorClock, index: int) -> None:
        _, _, factory, _, _ = clock.tcpClients[index]
        self.transport = StringTransport()
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        self.protocol = protocol
        self.protocol.makeConnection(self.transport)

    def host(self) -> bytes:
        """The member the request was meant for (MemoryReactor resolves every name to 127.0.0.1)."""
        head: bytes = self.transport.value().split(b"\r\n\r\n", 1)[0]
        hosts = [line for line in head.split(b"\r\n") if line.lower().startswith(b"host:")]
        return hosts[0].split(b":", 1)[1].strip()

    def request_body(self) -> dict[str, Any]:
        raw = self.transport.value()
        body: dict[str, Any] = json.loads(raw.split(b"\r\n\r\n", 1)[1])
        return body

    def respond(self) -> None:
        self.protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(b"%x\r\n%s\r\n" % (len(data), data))

    def send_message(self, result: dict[str, Any]) -> None:
        self.send(json.dumps({"result": result}).encode() + b"\n")

    def die(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionLost("member killed")))


def _raw_put(key: str, revision: int, created: int) -> dict[str, Any]:
    return {
        "kv": {
            "key": base64.b64encode(key.encode()).decode(),
            "create_revision": str(created),
            "mod_revision": str(revision),
            "version": str(revision - created + 1),
            "value": base64.b64encode(b"v%d" % revision).decode(),
        }
    }


class EtcdWatchStreamTests(SynchronousTestCase):
    """The watch over a scripted gateway stream: parsing, pausing, resuming elsewhere."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.store = EtcdDatastore(
            self.clock, ["http://127.0.0.30:2379", "http://127.0.0.31:2379"], watch_buffer_events=3
        )
        self.collector = EventCollector()
        self.watch = EtcdWatch(
            self.store.gateway, "/r/", 5, self.collector.deliver, 3, lambda watch: None
        )
        self.watch.open_stream()
        self.stream = FakeGatewayStream(self.clock, 0)
        self.stream.respond()
        self.stream.send_message({"header": {"revision": "9"}, "created": True})
        self.assertEqual(self.successResultOf(self.watch.established), self.watch)
        self.assertTrue(verifyObject(IWatch, self.watch))

    def test_request_asks_for_prefix_from_revision_with_prev_kv(self) -> None:
        body = self.stream.request_body()["create_request"]
        self.assertEqual(self.stream.host(), b"127.0.0.30:2379")
        self.assertEqual(base64.b64decode(body["key"]), b"/r/")
        self.assertEqual(base64.b64decode(body["range_end"]), b"/r0")
        self.assertEqual((body["start_revision"], body["prev_kv"]), ("5", True))

    def test_a_message_split_over_reads_is_delivered_once_whole(self) -> None:
        line = json.dumps({"result": {"events": [_raw_put("/r/a", 5, 5), _raw_put("/r/a", 6, 5)]}})
        data = line.encode() + b"\n"
        for i in range(0, len(data), 7):
            self.stream.send(data[i : i + 7])
        self.assertEqual(self.collector.batches, 1)
        self.assertEqual(
            [(e.type, e.revision) for e in self.collector.events],
            [(EventType.CREATE, 5), (EventType.UPDATE, 6)],
        )

    def test_paused_watch_holds_then_overflows(self) -> None:
        self.watch.pauseProducing()
        self.stream.send_message({"events": [_raw_put("/r/a", 5, 5), _raw_put("/r/a", 6, 5)]})
        self.watch.resumeProducing()
        self.assertEqual(self.collector.revisions(), [5, 6])
        self.watch.pauseProducing()
        self.stream.send_message({"events": [_raw_put("/r/a", r, 5) for r in range(7, 11)]})
        self.failureResultOf(self.watch.ended, WatchOverflow)
        self.watch.resumeProducing()
        self.stream.send_message({"events": [_raw_put("/r/a", 11, 5)]})
        self.assertEqual(self.collector.revisions(), [5, 6])

    def test_lost_stream_resumes_on_the_next_member_without_gap_or_duplicate(self) -> None:
        self.stream.send_message({"events": [_raw_put("/r/a", 5, 5), _raw_put("/r/a", 6, 5)]})
        self.stream.die()
        self.assertFalse(self.watch.ended.called)
        self.clock.advance(0)
        second = FakeGatewayStream(self.clock, 1)
        self.assertEqual(second.host(), b"127.0.0.31:2379")
        self.assertEqual(second.request_body()["create_request"]["start_revision"], "7")
        second.respond()
        second.send_message({"header": {"revision": "9"}, "created": True})
        # A member may replay what was already delivered: it is dropped.
        second.send_message({"events": [_raw_put("/r/a", 6, 5), _raw_put("/r/b", 7, 7)]})
        self.assertEqual(self.collector.revisions(), [5, 6, 7])
        self.watch.cancel()
        self.assertIsNone(self.successResultOf(self.watch.ended))
        second.send_message({"events": [_raw_put("/r/c", 8, 8)]})
        self.assertEqual(self.collector.revisions(), [5, 6, 7])

    def test_compaction_cancel_ends_the_watch_with_compacted(self) -> None:
        self.stream.send_message({"canceled": True, "compact_revision": "8"})
        failure = self.failureResultOf(self.watch.ended, Compacted)
        self.assertEqual((failure.value.requested, failure.value.compact_revision), (5, 8))
