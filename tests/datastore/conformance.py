"""
One conformance suite for every L{IDatastore} backend.

A backend's test module subclasses L{DatastoreConformance} together with
C{twisted.trial.unittest.TestCase} (or, for a backend that needs no reactor,
C{SynchronousTestCase} under L{on_its_clock}) and provides:

- C{async def make_datastore(self) -> IDatastore}: a started datastore on a
  fresh, empty store; the subclass registers its own cleanup (C{addCleanup}).
- C{async def second_client(self, store) -> IDatastore}: another, independent
  client (its own connections, its own watch machinery) on the same store,
  as a second server process would have; started and cleaned up likewise.
- C{async def reopen_datastore(self, store) -> IDatastore}: stop C{store}
  completely and return a new started client on the same data (a restart).
- C{watch_buffer_limit}: the most events a paused watch may hold before it
  is cut off with L{WatchOverflow}; the subclass builds its stores with it.

Tests never assert on timings; anything that waits for the backend (TTL
expiry, watch delivery) waits for the event itself under trial's timeout.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from k3stw.datastore.interface import (
    Compacted,
    Conflict,
    Event,
    EventType,
    FutureRevision,
    IDatastore,
    IWatch,
    KeyExists,
    KeyNotFound,
    KeyValue,
    WatchOverflow,
)

if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase

    _Base = TestCase
else:
    _Base = object

_Suite = TypeVar("_Suite", bound=type)
_Error = TypeVar("_Error", bound=BaseException)

#: The longest a test may wait for the backend, as trial's default timeout.
_WAIT_SECONDS = 120


class EventCollector:
    """A C{deliver} callback that records events and lets a test wait for them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.batches = 0
        self._waiters: list[tuple[Any, Deferred[list[Event]]]] = []

    def deliver(self, events: Sequence[Event]) -> None:
        self.batches += 1
        self.events.extend(events)
        still = []
        for predicate, d in self._waiters:
            if predicate(self.events):
                d.callback(list(self.events))
            else:
                still.append((predicate, d))
        self._waiters = still

    def wait_until(self, predicate: Any) -> Deferred[list[Event]]:
        """Fire with all events so far once C{predicate(events)} holds."""
        if predicate(self.events):
            return defer.succeed(list(self.events))
        d: Deferred[list[Event]] = Deferred()
        self._waiters.append((predicate, d))
        return d

    def wait_for_count(self, n: int) -> Deferred[list[Event]]:
        return self.wait_until(lambda events: len(events) >= n)

    def wait_for_revision(self, revision: int) -> Deferred[list[Event]]:
        return self.wait_until(lambda events: any(e.revision >= revision for e in events))

    def revisions(self) -> list[int]:
        return [e.revision for e in self.events]


async def failure_of(case: TestCase, deferred: Deferred[Any], expected: type[_Error]) -> _Error:
    """C{case.assertFailure(deferred, expected)}: the exception C{deferred} fails with."""
    # assertFailure's stub types what it fires with as the Deferred's result.
    return cast(_Error, await case.assertFailure(deferred, expected))


async def gather(ds: Sequence[Deferred[Any]]) -> list[Any]:
    """Wait for all of C{ds}; raise the first failure after all finished."""
    results = await defer.DeferredList(list(ds), consumeErrors=True)
    out = []
    for ok, value in results:
        if not ok:
            value.raiseException()
        out.append(value)
    return out


async def create_many(
    store: IDatastore, items: Sequence[tuple[str, bytes]], concurrency: int = 16
) -> list[int]:
    """Create every key in C{items} with up to C{concurrency} writes in flight."""
    revisions: list[int] = [0] * len(items)
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < len(items):
            i = position
            position += 1
            key, value = items[i]
            revisions[i] = await store.create(key, value)

    await gather([Deferred.fromCoroutine(worker()) for _ in range(concurrency)])
    return revisions


class DatastoreConformance(_Base):
    """The behaviour every backend shares; mix into a trial C{TestCase}."""

    watch_buffer_limit = 1000

    async def make_datastore(self) -> IDatastore:
        raise NotImplementedError

    async def second_client(self, store: IDatastore) -> IDatastore:
        raise NotImplementedError

    async def reopen_datastore(self, store: IDatastore) -> IDatastore:
        raise NotImplementedError

    async def _failure_of(self, d: Deferred[Any], kind: type[BaseException]) -> Any:
        try:
            result = await d
        except kind as e:
            return e
        self.fail(f"expected {kind.__name__}, got result {result!r}")

    async def _watch(
        self, store: IDatastore, prefix: str, start: int
    ) -> tuple[IWatch, EventCollector]:
        collector = EventCollector()
        watch = await store.watch(prefix, start, collector.deliver)
        self.addCleanup(watch.cancel)
        return watch, collector

    # -- basics -----------------------------------------------------------

    async def test_provides_interface(self) -> None:
        store = await self.make_datastore()
        self.assertTrue(verifyObject(IDatastore, store))
        # health() is declared to fire with None; the test proves it.
        self.assertIsNone(await store.health())  # type: ignore[func-returns-value]

    async def test_create_then_get(self) -> None:
        store = await self.make_datastore()
        before = await store.current_revision()
        rev = await store.create("/registry/a/one", b"1")
        self.assertGreater(rev, before)
        self.assertEqual(await store.current_revision(), rev)
        kv = await store.get("/registry/a/one")
        self.assertEqual(kv, KeyValue("/registry/a/one", b"1", rev, rev, 0))
        self.assertIsNone(await store.get("/registry/a/missing"))

    async def test_revisions_are_global_and_increasing(self) -> None:
        store = await self.make_datastore()
        revs = []
        for i in range(5):
            revs.append(await store.create(f"/registry/k{i}", b"x"))
        revs.append(await store.update("/registry/k0", b"y", revs[0]))
        revs.append(await store.delete("/registry/k1"))
        self.assertEqual(revs, sorted(set(revs)))
        self.assertEqual(await store.current_revision(), revs[-1])

    async def test_create_existing_key_raises_key_exists(self) -> None:
        store = await self.make_datastore()
        await store.create("/registry/dup", b"1")
        err = await self._failure_of(store.create("/registry/dup", b"2"), KeyExists)
        self.assertEqual(err.key, "/registry/dup")
        kv = await store.get("/registry/dup")
        assert kv is not None
        self.assertEqual(kv.value, b"1")

    async def test_update_replaces_value_and_keeps_create_revision(self) -> None:
        store = await self.make_datastore()
        created = await store.create("/registry/u", b"1")
        updated = await store.update("/registry/u", b"2", created)
        self.assertGreater(updated, created)
        self.assertEqual(
            await store.get("/registry/u"), KeyValue("/registry/u", b"2", created, updated, 0)
        )

    async def test_update_with_stale_revision_raises_conflict_with_current(self) -> None:
        store = await self.make_datastore()
        created = await store.create("/registry/c", b"1")
        updated = await store.update("/registry/c", b"2", created)
        err = await self._failure_of(store.update("/registry/c", b"3", created), Conflict)
        self.assertEqual(err.expected_revision, created)
        self.assertEqual(err.current, KeyValue("/registry/c", b"2", created, updated, 0))
        err = await self._failure_of(store.delete("/registry/c", created), Conflict)
        self.assertEqual(err.current.mod_revision, updated)

    async def test_update_or_delete_missing_key_raises_key_not_found(self) -> None:
        store = await self.make_datastore()
        await self._failure_of(store.update("/registry/none", b"1", 1), KeyNotFound)
        await self._failure_of(store.delete("/registry/none"), KeyNotFound)
        rev = await store.create("/registry/gone", b"1")
        await store.delete("/registry/gone", rev)
        await self._failure_of(store.update("/registry/gone", b"2", rev), KeyNotFound)
        await self._failure_of(store.delete("/registry/gone"), KeyNotFound)

    async def test_delete_then_recreate_starts_a_new_life(self) -> None:
        store = await self.make_datastore()
        first = await store.create("/registry/r", b"1")
        deleted = await store.delete("/registry/r")
        self.assertGreater(deleted, first)
        self.assertIsNone(await store.get("/registry/r"))
        again = await store.create("/registry/r", b"2")
        self.assertEqual(
            await store.get("/registry/r"), KeyValue("/registry/r", b"2", again, again, 0)
        )

    async def test_get_at_old_revision(self) -> None:
        store = await self.make_datastore()
        r1 = await store.create("/registry/h", b"1")
        r2 = await store.update("/registry/h", b"2", r1)
        r3 = await store.delete("/registry/h")
        await store.create("/registry/other", b"x")
        self.assertEqual(await store.get("/registry/h", r1), KeyValue("/registry/h", b"1", r1, r1))
        self.assertEqual(await store.get("/registry/h", r2), KeyValue("/registry/h", b"2", r1, r2))
        self.assertIsNone(await store.get("/registry/h", r3))
        self.assertIsNone(await store.get("/registry/h", r1 - 1))

    async def test_get_at_future_revision_raises(self) -> None:
        store = await self.make_datastore()
        rev = await store.create("/registry/f", b"1")
        err = await self._failure_of(store.get("/registry/f", rev + 1000), FutureRevision)
        self.assertEqual(err.requested, rev + 1000)

    # -- list and count ---------------------------------------------------

    async def test_list_returns_only_the_prefix_in_key_order(self) -> None:
        store = await self.make_datastore()
        for key in ["/registry/b/2", "/registry/bc/1", "/registry/b/1", "/registry/a", "/x"]:
            await store.create(key, key.encode())
        page = await store.list("/registry/b/")
        self.assertEqual([kv.key for kv in page.items], ["/registry/b/1", "/registry/b/2"])
        self.assertFalse(page.more)
        self.assertEqual(page.revision, await store.current_revision())
        self.assertEqual(page.items[0].value, b"/registry/b/1")

    async def test_list_skips_deleted_keys_and_reads_old_revisions(self) -> None:
        store = await self.make_datastore()
        r1 = await store.create("/registry/l/a", b"1")
        await store.create("/registry/l/b", b"1")
        mid = await store.update("/registry/l/a", b"2", r1)
        await store.delete("/registry/l/b")
        now = await store.list("/registry/l/")
        self.assertEqual([(kv.key, kv.value) for kv in now.items], [("/registry/l/a", b"2")])
        old = await store.list("/registry/l/", revision=mid)
        self.assertEqual(
            [(kv.key, kv.value) for kv in old.items],
            [("/registry/l/a", b"2"), ("/registry/l/b", b"1")],
        )
        self.assertEqual(old.revision, mid)

    async def test_count(self) -> None:
        store = await self.make_datastore()
        for i in range(7):
            await store.create(f"/registry/cnt/{i}", b"x")
        await store.create("/registry/cntx", b"x")
        await store.delete("/registry/cnt/3")
        self.assertEqual(await store.count("/registry/cnt/"), 6)
        self.assertEqual(await store.count("/registry/nothing/"), 0)

    async def test_list_ten_thousand_keys_in_stable_pages(self) -> None:
        store = await self.make_datastore()
        keys = [f"/registry/pods/ns/pod-{i:05d}" for i in range(10_000)]
        await create_many(store, [(k, b"v") for k in keys], concurrency=32)
        self.assertEqual(await store.count("/registry/pods/"), 10_000)

        first = await store.list("/registry/pods/", limit=1000)
        self.assertTrue(first.more)
        seen = [kv.key for kv in first.items]
        # Changes after the first page must not show in later pages.
        await store.delete(keys[5000])
        await store.create("/registry/pods/ns/pod-05000a", b"new")
        old_7000 = await store.get(keys[7000])
        assert old_7000 is not None
        await store.update(keys[7000], b"changed", old_7000.mod_revision)
        page = first
        values: dict[str, bytes] = {}
        while page.more:
            page = await store.list(
                "/registry/pods/", limit=1000, continue_from=seen[-1], revision=first.revision
            )
            self.assertEqual(page.revision, first.revision)
            seen.extend(kv.key for kv in page.items)
            values.update((kv.key, kv.value) for kv in page.items)
        self.assertEqual(seen, keys)
        self.assertEqual(values[keys[7000]], b"v")
        latest = await store.list("/registry/pods/ns/pod-05000", limit=10)
        self.assertEqual([kv.key for kv in latest.items], ["/registry/pods/ns/pod-05000a"])

    async def test_list_limit_sets_more_exactly(self) -> None:
        store = await self.make_datastore()
        for i in range(4):
            await store.create(f"/registry/m/{i}", b"x")
        page = await store.list("/registry/m/", limit=4)
        self.assertEqual(len(page.items), 4)
        self.assertFalse(page.more)
        page = await store.list("/registry/m/", limit=3)
        self.assertEqual(len(page.items), 3)
        self.assertTrue(page.more)
        rest = await store.list(
            "/registry/m/", limit=3, continue_from=page.items[-1].key, revision=page.revision
        )
        self.assertEqual([kv.key for kv in rest.items], ["/registry/m/3"])
        self.assertFalse(rest.more)

    # -- values and keys --------------------------------------------------

    async def test_non_ascii_keys(self) -> None:
        store = await self.make_datastore()
        keys = [
            "/registry/ü/a",
            "/registry/ü/日本",
            "/registry/ü/z",
            "/registry/ü/🙂",
            "/registry/ü/é",
        ]
        _, collector = await self._watch(store, "/registry/ü/", 0)
        for key in keys:
            await store.create(key, key.encode("utf-8"))
        kv = await store.get("/registry/ü/日本")
        assert kv is not None
        self.assertEqual(kv.value, "/registry/ü/日本".encode())
        page = await store.list("/registry/ü/")
        self.assertEqual([kv.key for kv in page.items], sorted(keys))
        events = await collector.wait_for_count(len(keys))
        self.assertEqual([e.kv.key for e in events], keys)
        self.assertEqual(await store.count("/registry/ü/"), len(keys))
        self.assertEqual(await store.count("/registry/u"), 0)

    async def test_one_mebibyte_values(self) -> None:
        store = await self.make_datastore()
        big1 = os.urandom(1 << 20)
        big2 = bytes(reversed(big1))
        _, collector = await self._watch(store, "/registry/big", 0)
        r1 = await store.create("/registry/big", big1)
        r2 = await store.update("/registry/big", big2, r1)
        kv = await store.get("/registry/big")
        assert kv is not None
        self.assertEqual(kv.value, big2)
        old = await store.get("/registry/big", r1)
        assert old is not None
        self.assertEqual(old.value, big1)
        events = await collector.wait_for_revision(r2)
        self.assertEqual(events[-1].kv.value, big2)
        assert events[-1].prev is not None
        self.assertEqual(events[-1].prev.value, big1)

    async def test_empty_value(self) -> None:
        store = await self.make_datastore()
        rev = await store.create("/registry/empty", b"")
        self.assertEqual(
            await store.get("/registry/empty"), KeyValue("/registry/empty", b"", rev, rev)
        )

    # -- watch -------------------------------------------------------------

    async def test_watch_from_old_revision_replays_history_then_live(self) -> None:
        store = await self.make_datastore()
        r1 = await store.create("/registry/w/a", b"1")
        r2 = await store.update("/registry/w/a", b"2", r1)
        await store.create("/registry/elsewhere", b"x")
        r3 = await store.create("/registry/w/b", b"1")
        r4 = await store.delete("/registry/w/a", r2)
        _, collector = await self._watch(store, "/registry/w/", r2)
        r5 = await store.update("/registry/w/b", b"2", r3)
        events = await collector.wait_for_revision(r5)
        self.assertEqual(
            events,
            [
                Event(
                    EventType.UPDATE,
                    r2,
                    KeyValue("/registry/w/a", b"2", r1, r2),
                    KeyValue("/registry/w/a", b"1", r1, r1),
                ),
                Event(EventType.CREATE, r3, KeyValue("/registry/w/b", b"1", r3, r3), None),
                Event(
                    EventType.DELETE,
                    r4,
                    KeyValue("/registry/w/a", b"2", r1, r4),
                    KeyValue("/registry/w/a", b"2", r1, r2),
                ),
                Event(
                    EventType.UPDATE,
                    r5,
                    KeyValue("/registry/w/b", b"2", r3, r5),
                    KeyValue("/registry/w/b", b"1", r3, r3),
                ),
            ],
        )

    async def test_watch_replays_a_long_history_in_order(self) -> None:
        store = await self.make_datastore()
        first = await store.create("/registry/long/0000", b"0")
        items = [(f"/registry/long/{i:04d}", b"%d" % i) for i in range(1, 1200)]
        revs = await create_many(store, items, concurrency=8)
        watch, collector = await self._watch(store, "/registry/long/", first)
        # A consumer that pauses in the middle of the replay still gets everything once.
        watch.pauseProducing()
        await store.current_revision()
        watch.resumeProducing()
        last = await store.update("/registry/long/0000", b"again", first)
        events = await collector.wait_for_revision(last)
        self.assertEqual(collector.revisions(), [first, *sorted(revs), last])
        self.assertEqual(len(events), 1201)

    async def test_watch_from_zero_sees_only_later_changes(self) -> None:
        store = await self.make_datastore()
        await store.create("/registry/z/old", b"1")
        _, collector = await self._watch(store, "/registry/z/", 0)
        rev = await store.create("/registry/z/new", b"1")
        events = await collector.wait_for_revision(rev)
        self.assertEqual(
            [(e.type, e.kv.key) for e in events], [(EventType.CREATE, "/registry/z/new")]
        )

    async def test_watch_filters_by_prefix(self) -> None:
        store = await self.make_datastore()
        _, collector = await self._watch(store, "/registry/p/", 0)
        await store.create("/registry/p", b"no")
        await store.create("/registry/pq/x", b"no")
        rev = await store.create("/registry/p/x", b"yes")
        events = await collector.wait_for_revision(rev)
        self.assertEqual([e.kv.key for e in events], ["/registry/p/x"])

    async def test_watch_has_no_gap_and_no_duplicate_under_concurrent_writers(self) -> None:
        store = await self.make_datastore()
        other = await self.second_client(store)
        _, collector = await self._watch(store, "/registry/o/", 0)
        _, collector2 = await self._watch(other, "/registry/o/", 0)
        revs = await gather(
            [
                Deferred.fromCoroutine(
                    create_many(c, [(f"/registry/o/{n}-{i}", b"x") for i in range(100)], 4)
                )
                for n, c in (("a", store), ("b", other))
            ]
        )
        acknowledged = sorted(revs[0] + revs[1])
        self.assertEqual(len(set(acknowledged)), 200)
        for c in (collector, collector2):
            await c.wait_for_count(200)
            self.assertEqual(c.revisions(), acknowledged)

    async def test_watch_start_before_compaction_raises_compacted(self) -> None:
        store = await self.make_datastore()
        r1 = await store.create("/registry/cw", b"1")
        r2 = await store.update("/registry/cw", b"2", r1)
        r3 = await store.update("/registry/cw", b"3", r2)
        await store.compact(r3)
        err = await self._failure_of(store.watch("/registry/", r1, lambda events: None), Compacted)
        self.assertEqual(err.compact_revision, r3)
        _, collector = await self._watch(store, "/registry/", r3)
        events = await collector.wait_for_revision(r3)
        self.assertEqual([(e.type, e.revision) for e in events], [(EventType.UPDATE, r3)])

    async def test_pausing_holds_events_and_resuming_delivers_them_in_order(self) -> None:
        store = await self.make_datastore()
        watch, collector = await self._watch(store, "/registry/s/", 0)
        watch.pauseProducing()
        revs = [await store.create(f"/registry/s/{i}", b"x") for i in range(20)]
        # A round trip through the store after the writes, so a backend
        # that delivers through the reactor has had its chance to (wrongly) deliver.
        await store.current_revision()
        self.assertEqual(collector.events, [])
        watch.resumeProducing()
        await collector.wait_for_count(20)
        self.assertEqual(collector.revisions(), revs)

    async def test_paused_watcher_that_never_resumes_is_cut_off(self) -> None:
        store = await self.make_datastore()
        watch, collector = await self._watch(store, "/registry/slow/", 0)
        _, fast = await self._watch(store, "/registry/slow/", 0)
        watch.pauseProducing()
        items = [
            (f"/registry/slow/{i:05d}", b"x" * 100) for i in range(self.watch_buffer_limit + 50)
        ]
        revs = await create_many(store, items, concurrency=16)
        await self._failure_of(watch.ended, WatchOverflow)
        watch.resumeProducing()
        self.assertEqual(collector.events, [])
        # The fast watcher on the same store was not affected.
        events = await fast.wait_for_count(len(items))
        self.assertEqual([e.revision for e in events], sorted(revs))

    async def test_cancel_ends_the_watch_quietly(self) -> None:
        store = await self.make_datastore()
        watch, collector = await self._watch(store, "/registry/cc/", 0)
        _, witness = await self._watch(store, "/registry/cc/", 0)
        watch.cancel()
        watch.cancel()
        self.assertIsNone(await watch.ended)
        rev = await store.create("/registry/cc/x", b"1")
        await witness.wait_for_revision(rev)
        self.assertEqual(collector.events, [])

    async def test_watch_from_old_revision_after_restart(self) -> None:
        store = await self.make_datastore()
        r1 = await store.create("/registry/rs/a", b"1")
        r2 = await store.update("/registry/rs/a", b"2", r1)
        store = await self.reopen_datastore(store)
        self.assertEqual(await store.current_revision(), r2)
        _, collector = await self._watch(store, "/registry/rs/", r1)
        r3 = await store.delete("/registry/rs/a")
        events = await collector.wait_for_revision(r3)
        self.assertEqual(
            [(e.type, e.revision) for e in events],
            [(EventType.CREATE, r1), (EventType.UPDATE, r2), (EventType.DELETE, r3)],
        )
        r4 = await store.create("/registry/rs/a", b"3")
        self.assertGreater(r4, r3)

    # -- concurrency between clients ----------------------------------------

    async def test_compare_and_swap_race_between_two_clients_loses_no_update(self) -> None:
        store = await self.make_datastore()
        other = await self.second_client(store)
        await store.create("/registry/counter", b"0")
        wins: list[int] = []

        async def increment(client: IDatastore, times: int) -> int:
            conflicts = 0
            for _ in range(times):
                while True:
                    kv = await client.get("/registry/counter")
                    assert kv is not None
                    try:
                        rev = await client.update(
                            "/registry/counter", b"%d" % (int(kv.value) + 1), kv.mod_revision
                        )
                    except Conflict as e:
                        self.assertGreater(e.current.mod_revision, kv.mod_revision)
                        conflicts += 1
                        continue
                    wins.append(rev)
                    break
            return conflicts

        await gather(
            [Deferred.fromCoroutine(increment(c, 40)) for c in (store, other, store, other)]
        )
        kv = await store.get("/registry/counter")
        assert kv is not None
        self.assertEqual(kv.value, b"160")
        self.assertEqual(len(set(wins)), 160)
        self.assertEqual(kv.mod_revision, max(wins))

    async def test_create_race_between_two_clients_has_one_winner(self) -> None:
        store = await self.make_datastore()
        other = await self.second_client(store)
        for round_ in range(10):
            key = f"/registry/race/{round_}"
            results = await defer.DeferredList(
                [store.create(key, b"a"), other.create(key, b"b")], consumeErrors=True
            )
            ok = [value for success, value in results if success]
            # The stub types every value as the result; a failed one is its Failure.
            failed = [cast(Failure, value) for success, value in results if not success]
            self.assertEqual(len(ok), 1)
            self.assertEqual(len(failed), 1)
            failed[0].trap(KeyExists)

    # -- compaction ---------------------------------------------------------

    async def test_compaction_forgets_history_but_keeps_live_keys(self) -> None:
        store = await self.make_datastore()
        r1 = await store.create("/registry/k/a", b"1")
        r2 = await store.update("/registry/k/a", b"2", r1)
        await store.create("/registry/k/b", b"1")
        r4 = await store.delete("/registry/k/b")
        r5 = await store.update("/registry/k/a", b"3", r2)
        self.assertEqual(await store.compacted_revision(), 0)
        await store.compact(r4)
        self.assertEqual(await store.compacted_revision(), r4)
        err = await self._failure_of(store.get("/registry/k/a", r2), Compacted)
        self.assertEqual((err.requested, err.compact_revision), (r2, r4))
        await self._failure_of(store.list("/registry/k/", revision=r1), Compacted)
        self.assertEqual(
            await store.get("/registry/k/a", r4), KeyValue("/registry/k/a", b"2", r1, r2)
        )
        self.assertIsNone(await store.get("/registry/k/b", r4))
        self.assertEqual(await store.get("/registry/k/a"), KeyValue("/registry/k/a", b"3", r1, r5))
        self.assertEqual(await store.count("/registry/k/"), 1)
        r6 = await store.update("/registry/k/a", b"4", r5)
        self.assertGreater(r6, r5)
        await self._failure_of(store.create("/registry/k/a", b"x"), KeyExists)
        await store.create("/registry/k/b", b"again")

    async def test_compaction_is_seen_by_another_client(self) -> None:
        store = await self.make_datastore()
        other = await self.second_client(store)
        r1 = await store.create("/registry/k2", b"1")
        r2 = await store.update("/registry/k2", b"2", r1)
        await store.compact(r2)
        self.assertEqual(await other.compacted_revision(), r2)
        await self._failure_of(other.get("/registry/k2", r1), Compacted)

    # -- leases ---------------------------------------------------------------

    async def test_ttl_key_is_deleted_with_a_delete_event(self) -> None:
        store = await self.make_datastore()
        _, collector = await self._watch(store, "/registry/lease/", 0)
        await store.create("/registry/lease/keep", b"k")
        rev = await store.create("/registry/lease/short", b"v", lease_ttl=1)
        kv = await store.get("/registry/lease/short")
        assert kv is not None
        self.assertGreater(kv.lease, 0)
        events = await collector.wait_until(
            lambda events: any(e.type is EventType.DELETE for e in events)
        )
        deletes = [e for e in events if e.type is EventType.DELETE]
        self.assertEqual([e.kv.key for e in deletes], ["/registry/lease/short"])
        self.assertGreater(deletes[0].revision, rev)
        assert deletes[0].prev is not None
        self.assertEqual(deletes[0].prev.value, b"v")
        self.assertIsNone(await store.get("/registry/lease/short"))
        self.assertIsNotNone(await store.get("/registry/lease/keep"))


def on_its_clock(suite: _Suite) -> _Suite:
    """
    Run every test of C{suite}, a L{DatastoreConformance} mixed into a
    C{SynchronousTestCase} with a C{clock} (a L{task.Clock}), to its end
    before the test method returns.  Where a test waits for the backend (a
    TTL's expiry), time passes on the clock, a second at a time, for as long
    as trial's timeout would have let it wait on a real reactor.
    """

    def on_the_clock(test: Callable[[Any], Coroutine[Any, Any, None]]) -> Callable[[Any], None]:
        @functools.wraps(test)
        def run(case: Any) -> None:
            outcome: list[object] = []
            Deferred.fromCoroutine(test(case)).addBoth(outcome.append)
            for _ in range(_WAIT_SECONDS):
                if outcome:
                    break
                case.clock.advance(1)
            if not outcome:
                case.fail(f"still waiting after {_WAIT_SECONDS} seconds on the clock")
            if isinstance(outcome[0], Failure):
                outcome[0].raiseException()

        return run

    for name, test in vars(DatastoreConformance).items():
        if name.startswith("test_"):
            setattr(suite, name, on_the_clock(test))
    return suite
