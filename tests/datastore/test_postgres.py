"""The datastore against a real PostgreSQL server started by the fixture."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from k3stw.datastore.interface import DatastoreUnavailable, EventType
from tests.datastore.conformance import EventCollector
from tests.datastore.sqlsupport import (
    ServerConformance,
    SharedServerBehaviour,
    kill_writer_mid_stream,
    start_store,
)
from tests.support.postgres import PASSWORD, PostgresServer, fresh_database_name, shared_postgres


def _endpoint() -> str:
    return shared_postgres().endpoint(fresh_database_name())


class PostgresConformanceTests(ServerConformance, TestCase):
    """Every conformance test, each on a fresh database of one shared server."""

    endpoint_for = staticmethod(_endpoint)


class PostgresMultiProcessTests(SharedServerBehaviour, TestCase):
    endpoint_for = staticmethod(_endpoint)


@implementer(ILogObserver)
class _LogCapture:
    def __init__(self, test: TestCase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        from twisted.logger import formatEvent

        self.lines.append(formatEvent(event))


async def _eventually(check: Any, what: str, attempts: int = 400) -> Any:
    for _ in range(attempts):
        try:
            return await check()
        except DatastoreUnavailable:
            await deferLater(reactor, 0.05)
    raise AssertionError(f"never recovered: {what}")


class PostgresFaultTests(TestCase):
    """A private server that the tests stop and start under a running client."""

    timeout = 120

    def setUp(self) -> None:
        self.server = PostgresServer(host="127.0.0.23")
        self.addCleanup(self.server.destroy)

    async def test_server_lost_while_running_gives_unavailable_then_recovers(self) -> None:
        self.server.start()
        endpoint = self.server.endpoint("faults")
        store = await start_store(self, endpoint)
        collector = EventCollector()
        watch = await store.watch("/registry/f/", 0, collector.deliver)
        self.addCleanup(watch.cancel)
        acknowledged = [await store.create(f"/registry/f/{i}", b"before") for i in range(5)]

        self.server.stop()
        with self.assertRaises(DatastoreUnavailable) as caught:
            await store.create("/registry/f/during", b"x")
        self.assertNotIn(PASSWORD, str(caught.exception))
        with self.assertRaises(DatastoreUnavailable):
            await store.get("/registry/f/0")

        self.server.start()
        rev = await _eventually(lambda: store.create("/registry/f/after", b"after"), "create")
        for i, r in enumerate(acknowledged):
            kv = await store.get(f"/registry/f/{i}")
            assert kv is not None
            self.assertEqual(kv.mod_revision, r)
        # The watch resumed from where it was: every change, in order, once.
        events = await collector.wait_for_revision(rev)
        self.assertEqual([e.revision for e in events], [*acknowledged, rev])
        self.assertEqual({e.type for e in events}, {EventType.CREATE})
        self.assertFalse(watch.ended.called)

    async def test_unreachable_at_start_logs_the_redacted_endpoint_and_retries(self) -> None:
        capture = _LogCapture(self)
        endpoint = self.server.endpoint("late")
        store = await _started_later(self, endpoint)
        ready = store.when_ready()
        await _eventually_logged(capture, "unreachable")
        self.assertFalse(ready.called)
        self.server.start()
        await ready
        self.assertGreater(await store.create("/registry/x", b"1"), 0)
        warnings = [line for line in capture.lines if "unreachable" in line]
        self.assertIn(f"postgres://postgres:***@127.0.0.23:{self.server.port}/late", warnings[0])
        self.assertFalse([line for line in capture.lines if PASSWORD in line])


async def _started_later(test: TestCase, endpoint: str) -> Any:
    from k3stw.datastore.endpoint import datastore_for_endpoint
    from tests.datastore.sqlsupport import stop_store

    store = datastore_for_endpoint(reactor, endpoint, "/nonexistent")
    store.startService()
    test.addCleanup(stop_store, store)
    return store


async def _eventually_logged(capture: _LogCapture, text: str) -> None:
    for _ in range(400):
        if any(text in line for line in capture.lines):
            return
        await deferLater(reactor, 0.05)
    raise AssertionError(f"nothing logged with {text!r}")


class PostgresLogTests(TestCase):
    timeout = 60

    async def test_another_process_write_wakes_watchers_through_notify(self) -> None:
        from k3stw.datastore.endpoint import datastore_for_endpoint
        from tests.datastore.sqlsupport import stop_store

        endpoint = shared_postgres().endpoint(fresh_database_name())
        store = datastore_for_endpoint(reactor, endpoint, "/nonexistent")
        # Polling alone would take an hour: only LISTEN/NOTIFY can deliver in time.
        store.follower.poll_interval = 3600
        store.startService()
        self.addCleanup(stop_store, store)
        await store.when_ready()
        collector = EventCollector()
        watch = await store.watch("/registry/crash/", 0, collector.deliver)
        self.addCleanup(watch.cancel)
        # The listener reads the log once when its LISTEN is in place.
        while store.follower.polls < 1:
            await deferLater(reactor, 0.01)
        acknowledged = kill_writer_mid_stream(endpoint, 3)
        events = await collector.wait_for_revision(max(acknowledged.values()))
        self.assertEqual(
            [e.revision for e in events][: len(acknowledged)], sorted(acknowledged.values())
        )

    async def test_a_burned_revision_does_not_stall_watchers(self) -> None:
        import psycopg

        from tests.support.postgres import PASSWORD as password

        server = shared_postgres()
        database = fresh_database_name()
        store = await start_store(self, server.endpoint(database))
        collector = EventCollector()
        watch = await store.watch("/registry/", 0, collector.deliver)
        self.addCleanup(watch.cancel)
        # A transaction that took an id and rolled back, as a lost race on another server does.
        with psycopg.connect(
            host=server.host, port=server.port, user="postgres", password=password, dbname=database
        ) as conn:
            burned = conn.execute("SELECT nextval('kine_id_seq')").fetchone()
        assert burned is not None
        rev = await store.create("/registry/after-gap", b"1")
        self.assertEqual(rev, burned[0] + 1)
        events = await collector.wait_for_revision(rev)
        self.assertEqual([e.revision for e in events], [rev])
