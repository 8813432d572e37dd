"""The conformance suite and the crash test against the embedded SQLite datastore."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import provider

from k3stw.datastore.interface import (
    Compacted,
    DatastoreUnavailable,
    EventType,
    IDatastore,
    KeyValue,
)
from k3stw.datastore.sql import CompactionPolicy
from k3stw.datastore.sqlite import SQLiteDatastore, default_path
from tests.datastore.conformance import DatastoreConformance, EventCollector
from tests.datastore.sqlsupport import check_acknowledged, kill_writer_mid_stream, start_store


class SQLiteConformanceTests(DatastoreConformance, TestCase):
    """Every conformance test against a fresh SQLite file."""

    timeout = 60

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="k3stw-sqlite-")
        self.addCleanup(_rmtree, self.directory)

    async def _start(self, path: str) -> SQLiteDatastore:
        store = SQLiteDatastore(reactor, path, watch_buffer_events=self.watch_buffer_limit)
        store.startService()
        self.addCleanup(_stop, store)
        await store.when_ready()
        return store

    async def make_datastore(self) -> IDatastore:
        return await self._start(default_path(self.directory))

    async def second_client(self, store: IDatastore) -> IDatastore:
        assert isinstance(store, SQLiteDatastore)
        return await self._start(store.path)

    async def reopen_datastore(self, store: IDatastore) -> IDatastore:
        assert isinstance(store, SQLiteDatastore)
        await _stop(store)
        return await self._start(store.path)


async def _stop(store: SQLiteDatastore) -> None:
    if store.running:
        await store.stopService()


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class SQLiteCrashTests(TestCase):
    """Acknowledged writes survive ``kill -9`` of the writing process."""

    timeout = 60

    async def test_acknowledged_writes_survive_kill_9(self) -> None:
        directory = tempfile.mkdtemp(prefix="k3stw-crash-")
        self.addCleanup(_rmtree, directory)
        endpoint = f"sqlite://{default_path(directory)}"
        acknowledged = kill_writer_mid_stream(endpoint, 300)
        store = await start_store(self, endpoint)
        await check_acknowledged(self, store, acknowledged)


class SQLiteBehaviourTests(TestCase):
    """What only the embedded backend promises, or what is cheapest to prove on it."""

    timeout = 60

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="k3stw-sqlite-")
        self.addCleanup(_rmtree, self.directory)
        self.path = default_path(self.directory)

    async def _start(self, poll_interval: float | None = None, **kwargs: Any) -> SQLiteDatastore:
        store = SQLiteDatastore(reactor, self.path, **kwargs)
        if poll_interval is not None:
            store.follower.poll_interval = poll_interval
        store.startService()
        self.addCleanup(_stop, store)
        await store.when_ready()
        return store

    async def test_file_is_in_wal_mode_at_the_k3s_path(self) -> None:
        store = await self._start()
        await store.create("/registry/x", b"1")
        self.assertTrue(self.path.endswith("/server/db/state.db"))
        conn = sqlite3.connect(self.path)
        try:
            self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
            names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
        self.assertLessEqual(
            {"kine", "kine_name_prev_revision_uindex", "kine_name_id_index"}, names
        )

    async def test_calls_before_ready_and_after_stop_are_unavailable(self) -> None:
        store = SQLiteDatastore(reactor, self.path)
        await self.assertFailure(store.get("/registry/x"), DatastoreUnavailable)
        store.startService()
        self.addCleanup(_stop, store)
        await store.when_ready()
        collector = EventCollector()
        watch = await store.watch("/registry/", 0, collector.deliver)
        await store.stopService()
        await self.assertFailure(watch.ended, DatastoreUnavailable)
        await self.assertFailure(store.create("/registry/x", b"1"), DatastoreUnavailable)

    async def test_unwritable_directory_is_reported_and_retried(self) -> None:
        blocker = os.path.join(self.directory, "file")
        with open(blocker, "w"):
            pass
        store = SQLiteDatastore(reactor, os.path.join(blocker, "state.db"))
        lines: list[str] = []

        @provider(ILogObserver)
        def observer(event: LogEvent) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        store.startService()
        self.addCleanup(_stop, store)
        while not any("unreachable" in line for line in lines):
            await deferLater(reactor, 0.05)
        self.assertIn(f"sqlite://{blocker}/state.db", next(x for x in lines if "unreachable" in x))
        self.assertFalse(store.when_ready().called)

    async def test_background_compactor_keeps_recent_history(self) -> None:
        store = await self._start(
            compact_interval=0.05, compaction_policy=CompactionPolicy(10, keep_seconds=0)
        )
        first = await store.create("/registry/c", b"0")
        rev = first
        for i in range(40):
            rev = await store.update("/registry/c", b"%d" % (i + 1), rev)
        while await store.compacted_revision() < rev - 10:
            await deferLater(reactor, 0.05)
        compacted = await store.compacted_revision()
        self.assertLessEqual(compacted, rev - 10)
        await self.assertFailure(store.get("/registry/c", first), Compacted)
        kv = await store.get("/registry/c", rev - 10)
        assert kv is not None
        self.assertEqual(kv.value, b"%d" % (40 - 10))
        self.assertEqual(
            (await store.get("/registry/c")), KeyValue("/registry/c", b"40", first, rev)
        )

    async def test_ttl_keys_still_expire_after_a_restart(self) -> None:
        store = await self._start()
        await store.create("/registry/lease/x", b"1", lease_ttl=1)
        await store.create("/registry/lease/y", b"1")
        await _stop(store)
        store = await self._start()
        collector = EventCollector()
        watch = await store.watch("/registry/lease/", 0, collector.deliver)
        self.addCleanup(watch.cancel)
        events = await collector.wait_for_count(1)
        self.assertEqual(
            [(e.type, e.kv.key) for e in events], [(EventType.DELETE, "/registry/lease/x")]
        )
        self.assertIsNotNone(await store.get("/registry/lease/y"))

    async def test_a_write_wakes_watchers_of_another_local_client_at_once(self) -> None:
        # Poll interval far beyond the test timeout: only the in-process wake-up can deliver.
        store = await self._start(poll_interval=3600)
        other = await self._start(poll_interval=3600)
        collector = EventCollector()
        watch = await other.watch("/registry/", 0, collector.deliver)
        self.addCleanup(watch.cancel)
        rev = await store.create("/registry/w", b"1")
        events = await collector.wait_for_revision(rev)
        self.assertEqual([e.revision for e in events], [rev])
