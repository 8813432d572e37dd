"""
The in-memory datastore: the shared conformance suite, run synchronously on
a clock, and what only a test double promises (answers at once, time on a clock).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.datastore.interface import (
    Compacted,
    DatastoreUnavailable,
    Event,
    EventType,
    FutureRevision,
    IDatastore,
    KeyValue,
)
from k3stw.datastore.memory import MemoryDatastore, MemoryLog
from tests.datastore.conformance import DatastoreConformance, EventCollector, on_its_clock


class MemoryTestBase(SynchronousTestCase):
    """Builds started in-memory datastores on one clock; no timer may outlive a test."""

    watch_buffer_limit = 1000

    def setUp(self) -> None:
        self.clock = Clock()
        # Registered first, so it runs after every other cleanup (stops included).
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def start(self, memory: MemoryLog | None = None) -> MemoryDatastore:
        store = MemoryDatastore(self.clock, memory, watch_buffer_events=self.watch_buffer_limit)
        store.startService()
        self.addCleanup(self.stop, store)
        return store

    def stop(self, store: MemoryDatastore) -> None:
        if store.running:
            self.successResultOf(store.stopService())


@on_its_clock
class MemoryConformanceTests(DatastoreConformance, MemoryTestBase):
    """The shared suite; a second client or a restart shares the first one's data."""

    async def make_datastore(self) -> IDatastore:
        return self.start()

    async def second_client(self, store: IDatastore) -> IDatastore:
        assert isinstance(store, MemoryDatastore)
        return self.start(store.memory)

    async def reopen_datastore(self, store: IDatastore) -> IDatastore:
        assert isinstance(store, MemoryDatastore)
        self.stop(store)
        return self.start(store.memory)


class MemoryDatastoreTests(MemoryTestBase):
    """What the in-memory datastore promises beyond the shared suite."""

    def watch(self, store: MemoryDatastore, prefix: str, start: int = 0) -> EventCollector:
        collector = EventCollector()
        watch = self.successResultOf(store.watch(prefix, start, collector.deliver))
        self.addCleanup(watch.cancel)
        return collector

    def test_every_call_has_answered_when_it_returns(self) -> None:
        store = self.start()
        collector = self.watch(store, "/registry/")
        rev = self.successResultOf(store.create("/registry/a", b"1"))
        self.assertEqual(collector.revisions(), [rev])
        rev = self.successResultOf(store.update("/registry/a", b"2", rev))
        self.assertEqual(
            self.successResultOf(store.get("/registry/a")), KeyValue("/registry/a", b"2", 2, rev)
        )
        self.assertEqual(self.successResultOf(store.count("/registry/")), 1)
        self.assertEqual(len(self.successResultOf(store.list("/registry/")).items), 1)
        self.assertEqual(self.successResultOf(store.current_revision()), rev)
        self.assertIsNone(self.successResultOf(store.compact(rev)))
        self.assertEqual(self.successResultOf(store.compacted_revision()), rev)
        self.assertIsNone(self.successResultOf(store.health()))
        rev = self.successResultOf(store.delete("/registry/a"))
        self.assertEqual(collector.revisions(), [2, 3, rev])

    def test_a_watch_from_the_past_has_its_history_before_watch_returns(self) -> None:
        store = self.start()
        first = self.successResultOf(store.create("/registry/h/a", b"1"))
        self.successResultOf(store.create("/registry/other", b"1"))
        second = self.successResultOf(store.create("/registry/h/b", b"1"))
        collector = self.watch(store, "/registry/h/", first)
        self.assertEqual(collector.revisions(), [first, second])

    def test_ttl_key_is_deleted_on_the_clock_with_a_delete_event(self) -> None:
        store = self.start()
        collector = self.watch(store, "/registry/lease/")
        rev = self.successResultOf(store.create("/registry/lease/a", b"v", lease_ttl=5))
        self.clock.advance(4.9)
        self.assertEqual(collector.revisions(), [rev])
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(store.get("/registry/lease/a")))
        created = KeyValue("/registry/lease/a", b"v", rev, rev, 5)
        self.assertEqual(
            collector.events[-1],
            Event(
                EventType.DELETE,
                rev + 1,
                KeyValue("/registry/lease/a", b"v", rev, rev + 1, 5),
                created,
            ),
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_update_restarts_the_ttl_and_an_update_without_one_keeps_the_key(self) -> None:
        store = self.start()
        rev = self.successResultOf(store.create("/registry/l", b"1", lease_ttl=5))
        self.clock.advance(4)
        rev = self.successResultOf(store.update("/registry/l", b"2", rev, lease_ttl=5))
        self.clock.advance(4)
        self.assertIsNotNone(self.successResultOf(store.get("/registry/l")))
        self.successResultOf(store.update("/registry/l", b"3", rev))
        self.clock.advance(60)
        kv = self.successResultOf(store.get("/registry/l"))
        assert kv is not None
        self.assertEqual((kv.value, kv.lease), (b"3", 0))

    def test_a_restarted_client_expires_keys_written_before_it_started(self) -> None:
        first = self.start()
        self.successResultOf(first.create("/registry/l", b"1", lease_ttl=5))
        self.stop(first)
        second = self.start(first.memory)
        self.clock.advance(5)
        self.assertIsNone(self.successResultOf(second.get("/registry/l")))

    def test_two_clients_on_one_memory_expire_a_key_once(self) -> None:
        first = self.start()
        second = self.start(first.memory)
        collector = self.watch(second, "/registry/")
        rev = self.successResultOf(first.create("/registry/l", b"1", lease_ttl=5))
        self.clock.advance(5)
        self.assertEqual(
            [(e.type, e.revision) for e in collector.events],
            [(EventType.CREATE, rev), (EventType.DELETE, rev + 1)],
        )

    def test_it_answers_only_while_it_runs(self) -> None:
        store = MemoryDatastore(self.clock)
        ready = store.when_ready()
        self.failureResultOf(store.get("/registry/a"), DatastoreUnavailable)
        self.failureResultOf(
            store.watch("/registry/", 0, lambda events: None), DatastoreUnavailable
        )
        self.assertNoResult(ready)
        store.startService()
        self.assertIsNone(self.successResultOf(ready))
        self.assertIsNone(self.successResultOf(store.when_ready()))
        self.successResultOf(store.create("/registry/a", b"1", lease_ttl=5))
        self.successResultOf(store.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        error = self.failureResultOf(store.create("/registry/b", b"1"), DatastoreUnavailable)
        self.assertEqual(str(error.value), "datastore memory is not running")

    def test_stop_ends_the_watches_with_unavailable(self) -> None:
        store = self.start()
        watch = self.successResultOf(store.watch("/registry/", 0, lambda events: None))
        self.stop(store)
        failure = self.failureResultOf(watch.ended, DatastoreUnavailable)
        self.assertEqual(str(failure.value), "datastore memory stopped")

    def test_a_write_made_while_delivering_reaches_every_watch_in_order(self) -> None:
        store = self.start()
        seen: dict[str, list[int]] = {"reacting": [], "other": []}

        def reacting(events: Sequence[Event]) -> None:
            seen["reacting"].extend(e.revision for e in events)
            if any(e.kv.key == "/registry/a" for e in events):
                store.create("/registry/b", b"reaction")

        def other(events: Sequence[Event]) -> None:
            seen["other"].extend(e.revision for e in events)

        for deliver in (reacting, other):
            watch = self.successResultOf(store.watch("/registry/", 0, deliver))
            self.addCleanup(watch.cancel)
        rev = self.successResultOf(store.create("/registry/a", b"1"))
        self.assertEqual(seen, {"reacting": [rev, rev + 1], "other": [rev, rev + 1]})

    def test_reads_outside_the_kept_history_fail_as_on_the_other_backends(self) -> None:
        store = self.start()
        r1 = self.successResultOf(store.create("/registry/a", b"1"))
        r2 = self.successResultOf(store.update("/registry/a", b"2", r1))
        failure = self.failureResultOf(store.get("/registry/a", r2 + 1), FutureRevision)
        self.assertEqual((failure.value.requested, failure.value.current), (r2 + 1, r2))
        self.failureResultOf(store.compact(r2 + 1), FutureRevision)
        self.successResultOf(store.compact(r2))
        # Compacting to an older revision again is not an error.
        self.successResultOf(store.compact(r1))
        failure = self.failureResultOf(store.list("/registry/", revision=r1), Compacted)
        self.assertEqual((failure.value.requested, failure.value.compact_revision), (r1, r2))
        self.failureResultOf(store.watch("/registry/", r1, lambda events: None), Compacted)

    def test_an_empty_store_is_at_revision_one(self) -> None:
        store = self.start()
        self.assertEqual(self.successResultOf(store.current_revision()), 1)
        self.assertEqual(self.successResultOf(store.compacted_revision()), 0)
        self.assertIsNone(self.successResultOf(store.get("/registry/a", 1)))
