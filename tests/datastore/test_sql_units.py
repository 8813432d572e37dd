"""Units of the kine log that need no database: fake time, fake reads."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from k3stw.datastore.interface import (
    Conflict,
    DatastoreUnavailable,
    Event,
    EventType,
    IWatch,
    KeyValue,
    WatchOverflow,
)
from k3stw.datastore.lease import LeaseKeeper
from k3stw.datastore.location import MySQLEndpoint, PostgresEndpoint
from k3stw.datastore.mysql import MySQLDialect
from k3stw.datastore.postgres import PostgresDialect
from k3stw.datastore.sql import (
    COMPACT_KEY,
    CompactionPolicy,
    LogFollower,
    Row,
    prefix_end,
)
from k3stw.datastore.sqlite import SQLiteDialect
from k3stw.datastore.watch import BufferedWatch


def _row(id_: int, name: str = "/k", **kw: object) -> Row:
    fields: dict[str, object] = {
        "created": False,
        "deleted": False,
        "create_revision": 1,
        "prev_revision": id_ - 1,
        "lease": 0,
        "value": b"v%d" % id_,
        "old_value": b"",
    }
    fields.update(kw)
    return Row(id_, name, **fields)  # type: ignore[arg-type]


def _event(rev: int, key: str = "/k", size: int = 1) -> Event:
    return Event(EventType.CREATE, rev, KeyValue(key, b"x" * size, rev, rev), None)


class PrefixEndTests(SynchronousTestCase):
    def test_prefix_end(self) -> None:
        self.assertEqual(prefix_end("/registry/pods/"), "/registry/pods0")
        self.assertEqual(prefix_end("a\U0010ffff"), "b")
        self.assertEqual(prefix_end("x\ud7ff"), "x\ue000")
        self.assertIsNone(prefix_end(""))
        self.assertIsNone(prefix_end("\U0010ffff"))


class RowTests(SynchronousTestCase):
    def test_events_from_rows(self) -> None:
        create = _row(5, created=True, create_revision=0, prev_revision=0)
        self.assertEqual(
            create.event(), Event(EventType.CREATE, 5, KeyValue("/k", b"v5", 5, 5), None)
        )
        update = _row(7, create_revision=5, prev_revision=5, old_value=b"v5")
        self.assertEqual(
            update.event(),
            Event(EventType.UPDATE, 7, KeyValue("/k", b"v7", 5, 7), KeyValue("/k", b"v5", 5, 5)),
        )
        delete = _row(
            9, deleted=True, create_revision=5, prev_revision=7, value=b"v7", old_value=b"v7"
        )
        self.assertEqual(
            delete.event(),
            Event(EventType.DELETE, 9, KeyValue("/k", b"v7", 5, 9), KeyValue("/k", b"v7", 5, 7)),
        )

    def test_internal_rows(self) -> None:
        self.assertTrue(_row(1, COMPACT_KEY, created=True).internal)
        self.assertTrue(_row(2, "gap-2", deleted=True, prev_revision=0).internal)
        self.assertFalse(_row(3, "/k", deleted=True, prev_revision=2).internal)

    def test_names_from_binary_columns(self) -> None:
        raw = (3, "/ü".encode(), 1, 0, 0, 0, 0, memoryview(b"v"), None)
        row = Row.from_db(raw)
        self.assertEqual((row.name, row.value, row.old_value), ("/ü", b"v", b""))


class DialectTests(SynchronousTestCase):
    def test_placeholders(self) -> None:
        sql = "SELECT id FROM kine WHERE name = ? AND id <= ?"
        self.assertEqual(SQLiteDialect("/tmp/x.db").sql(sql), sql)
        self.assertEqual(
            PostgresDialect(PostgresEndpoint()).sql(sql),
            "SELECT id FROM kine WHERE name = %s AND id <= %s",
        )
        self.assertEqual(
            MySQLDialect(MySQLEndpoint()).sql(sql),
            "SELECT id FROM kine WHERE name = %s AND id <= %s",
        )

    def test_every_schema_has_the_race_deciding_unique_index(self) -> None:
        for dialect in (
            SQLiteDialect("/tmp/x.db"),
            PostgresDialect(PostgresEndpoint()),
            MySQLDialect(MySQLEndpoint()),
        ):
            ddl = " ".join(dialect.schema)
            self.assertIn("kine_name_prev_revision_uindex", ddl)
            self.assertRegex(
                ddl, r"UNIQUE INDEX [^(]*kine_name_prev_revision_uindex[^(]*\(name, prev_revision\)"
            )

    def test_mysql_names_are_bytes(self) -> None:
        self.assertEqual(MySQLDialect(MySQLEndpoint()).name_param("/ü"), "/ü".encode())

    def test_sqlite_synchronous_is_checked(self) -> None:
        self.assertRaises(ValueError, SQLiteDialect, "/tmp/x.db", "OFF")


class CompactionPolicyTests(SynchronousTestCase):
    def test_keeps_the_last_revisions_or_the_last_minutes_whichever_is_more(self) -> None:
        clock = Clock()
        policy = CompactionPolicy(keep_revisions=1000, keep_seconds=300)
        # Nothing is old enough yet.
        policy.observe(clock.seconds(), 5000)
        self.assertEqual(policy.target(clock.seconds(), 5000), 0)
        clock.advance(60)
        policy.observe(clock.seconds(), 5500)
        clock.advance(240)
        # 5000 was current 5 minutes ago, but keeping 1000 revisions keeps more.
        policy.observe(clock.seconds(), 5800)
        self.assertEqual(policy.target(clock.seconds(), 5800), 4800)
        clock.advance(60)
        # Busy: 10000 revisions in the last minutes; the 5-minute window wins.
        policy.observe(clock.seconds(), 15000)
        self.assertEqual(policy.target(clock.seconds(), 15000), 5500)

    def test_quiet_store_is_compacted_to_the_revision_count(self) -> None:
        clock = Clock()
        policy = CompactionPolicy(keep_revisions=1000, keep_seconds=300)
        policy.observe(clock.seconds(), 1500)
        clock.advance(3600)
        policy.observe(clock.seconds(), 1500)
        self.assertEqual(policy.target(clock.seconds(), 1500), 500)
        self.assertEqual(policy.target(clock.seconds(), 900), 0)


class LeaseKeeperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.deleted: list[tuple[str, int]] = []
        self.results: list[Deferred[int]] = []
        self.keeper = LeaseKeeper(self.clock, self._delete)
        self.keeper.start()
        self.addCleanup(self.keeper.stop)

    def _delete(self, key: str, revision: int) -> Deferred[int]:
        self.deleted.append((key, revision))
        return self.results.pop(0) if self.results else succeed(revision + 100)

    def _put(self, key: str, rev: int, lease: int, kind: EventType = EventType.CREATE) -> None:
        self.keeper.observe([Event(kind, rev, KeyValue(key, b"", rev, rev, lease), None)])

    def test_key_expires_after_its_ttl(self) -> None:
        self._put("/lease/a", 10, 5)
        self.clock.advance(4.9)
        self.assertEqual(self.deleted, [])
        self.clock.advance(0.2)
        self.assertEqual(self.deleted, [("/lease/a", 10)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_update_restarts_the_ttl_and_delete_or_no_lease_cancels_it(self) -> None:
        self._put("/lease/a", 10, 5)
        self.clock.advance(3)
        self._put("/lease/a", 11, 5, EventType.UPDATE)
        self.clock.advance(3)
        self.assertEqual(self.deleted, [])
        self.clock.advance(2)
        self.assertEqual(self.deleted, [("/lease/a", 11)])
        self._put("/lease/b", 20, 5)
        self._put("/lease/b", 21, 0, EventType.UPDATE)
        self._put("/lease/c", 22, 5)
        self.keeper.observe(
            [Event(EventType.DELETE, 23, KeyValue("/lease/c", b"", 22, 23, 5), None)]
        )
        self.clock.advance(10)
        self.assertEqual(self.deleted, [("/lease/a", 11)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lost_races_are_ignored_and_outages_retried(self) -> None:
        self.results = [
            fail(Conflict("/lease/a", 10, KeyValue("/lease/a", b"", 10, 12))),
            fail(DatastoreUnavailable("down")),
        ]
        self._put("/lease/a", 10, 1)
        self._put("/lease/b", 11, 1)
        self.clock.advance(1)
        self.assertEqual(self.deleted, [("/lease/a", 10), ("/lease/b", 11)])
        self.clock.advance(1)
        self.assertEqual(self.deleted[-1], ("/lease/b", 11))
        self.assertEqual(len(self.deleted), 3)
        self.flushLoggedErrors()

    def test_stop_cancels_the_timer(self) -> None:
        self._put("/lease/a", 10, 1)
        self.keeper.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class WatchTests(SynchronousTestCase):
    def _watch(
        self, max_events: int = 3, max_bytes: int = 1 << 20
    ) -> tuple[BufferedWatch, list[Sequence[Event]], list[BufferedWatch]]:
        batches: list[Sequence[Event]] = []
        ended: list[BufferedWatch] = []
        watch = BufferedWatch("/a/", 1, batches.append, max_events, max_bytes, ended.append)
        return watch, batches, ended

    def test_provides_iwatch(self) -> None:
        watch, _, _ = self._watch()
        self.assertTrue(verifyObject(IWatch, watch))

    def test_filters_prefix_and_skips_duplicates(self) -> None:
        watch, batches, _ = self._watch()
        watch.offer([_event(1, "/a/x"), _event(2, "/b/x"), _event(3, "/a/y")])
        watch.offer([_event(3, "/a/y"), _event(4, "/a/z")])
        self.assertEqual([[e.revision for e in batch] for batch in batches], [[1, 3], [4]])

    def test_paused_watch_holds_then_overflows(self) -> None:
        watch, batches, ended = self._watch(max_events=3)
        watch.pauseProducing()
        watch.offer([_event(1, "/a/1"), _event(2, "/a/2"), _event(3, "/a/3")])
        self.assertEqual(batches, [])
        self.assertFalse(watch.ended.called)
        watch.offer([_event(4, "/a/4")])
        self.failureResultOf(watch.ended, WatchOverflow)
        self.assertEqual(ended, [watch])
        watch.resumeProducing()
        watch.offer([_event(5, "/a/5")])
        self.assertEqual(batches, [])

    def test_byte_bound(self) -> None:
        watch, _, _ = self._watch(max_events=100, max_bytes=1000)
        watch.pauseProducing()
        watch.offer([_event(1, "/a/1", 600)])
        self.assertFalse(watch.ended.called)
        watch.offer([_event(2, "/a/2", 600)])
        self.failureResultOf(watch.ended, WatchOverflow)

    def test_resume_delivers_in_order(self) -> None:
        watch, batches, _ = self._watch()
        watch.pauseProducing()
        watch.offer([_event(1, "/a/1"), _event(2, "/a/2")])
        watch.resumeProducing()
        watch.offer([_event(3, "/a/3")])
        self.assertEqual([[e.revision for e in b] for b in batches], [[1, 2], [3]])

    def test_cancel_is_idempotent_and_quiet(self) -> None:
        watch, batches, ended = self._watch()
        watch.cancel()
        watch.cancel()
        self.assertIsNone(self.successResultOf(watch.ended))
        watch.offer([_event(1, "/a/1")])
        self.assertEqual((batches, ended), ([], [watch]))

    def test_consumer_errors_do_not_kill_the_watch(self) -> None:
        def broken(events: Sequence[Event]) -> None:
            raise RuntimeError("consumer bug")

        watch = BufferedWatch("/a/", 1, broken, 10, 1 << 20, lambda w: None)
        watch.offer([_event(1, "/a/1")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(watch.ended.called)


class LogFollowerTests(SynchronousTestCase):
    """The follower releases rows strictly in id order and fills holes."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.log: dict[int, Row] = {}
        self.filled: list[int] = []
        self.follower = LogFollower(self.clock, self._read, self._fill, 1.0, gap_wait=0.2)
        self.seen: list[int] = []
        self.follower.listeners.append(lambda events: self.seen.extend(e.revision for e in events))

    def _read(self, after: int) -> Deferred[tuple[list[Row], int]]:
        rows = [self.log[i] for i in sorted(self.log) if i > after][:500]
        return succeed((rows, 0))

    def _fill(self, missing: int) -> Deferred[None]:
        self.filled.append(missing)
        self.log[missing] = _row(missing, f"gap-{missing}", deleted=True, prev_revision=0)
        return succeed(None)

    def _add(self, *ids: int) -> None:
        for i in ids:
            self.log[i] = _row(i, f"/k{i}", created=True, prev_revision=0)

    def test_releases_in_order_and_waits_for_a_late_row(self) -> None:
        self.follower.start(0)
        self._add(1, 2, 4)
        self.follower.poke()
        self.clock.advance(0)
        self.assertEqual(self.seen, [1, 2])
        self._add(3)
        self.follower.poke()
        self.clock.advance(0)
        self.assertEqual(self.seen, [1, 2, 3, 4])
        self.assertEqual(self.filled, [])
        self.follower.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fills_a_hole_that_stays(self) -> None:
        self.follower.start(0)
        self._add(1, 3)
        self.follower.poke()
        self.clock.advance(0)
        self.assertEqual(self.seen, [1])
        for _ in range(10):
            self.clock.advance(0.05)
        self.assertEqual(self.filled, [2])
        self.clock.advance(0)
        self.assertEqual(self.seen, [1, 3])
        self.assertEqual(self.follower.position, 3)
        self.follower.stop()

    def test_read_failures_are_retried(self) -> None:
        calls = []

        def flaky(after: int) -> Deferred[tuple[list[Row], int]]:
            calls.append(after)
            if len(calls) == 1:
                return fail(DatastoreUnavailable("down"))
            return self._read(after)

        follower = LogFollower(self.clock, flaky, self._fill, 1.0)
        follower.listeners.append(lambda events: self.seen.extend(e.revision for e in events))
        self._add(1)
        follower.start(0)
        self.clock.advance(1)
        self.assertEqual(self.seen, [])
        self.clock.advance(1)
        self.assertEqual(self.seen, [1])
        follower.stop()
