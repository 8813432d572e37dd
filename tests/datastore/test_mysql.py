"""The datastore against a real MariaDB server started by the fixture."""

from __future__ import annotations

from twisted.internet.defer import DeferredList
from twisted.trial.unittest import TestCase

from k3stw.datastore.interface import DatastoreUnavailable, KeyExists
from tests.datastore.conformance import EventCollector
from tests.datastore.sqlsupport import (
    ServerConformance,
    SharedServerBehaviour,
    kill_writer_mid_stream,
    start_store,
)
from tests.support.mariadb import PASSWORD, MariaDBServer, shared_mariadb
from tests.support.postgres import fresh_database_name


def _endpoint() -> str:
    return shared_mariadb().endpoint(fresh_database_name())


class MariaDBConformanceTests(ServerConformance, TestCase):
    """Every conformance test, each on a fresh database of one shared server."""

    endpoint_for = staticmethod(_endpoint)


class MariaDBMultiProcessTests(SharedServerBehaviour, TestCase):
    endpoint_for = staticmethod(_endpoint)

    async def test_keys_differing_only_in_trailing_space_or_case_are_distinct(self) -> None:
        # A PAD SPACE or case-folding collation would make these one key.
        store = await start_store(self, _endpoint())
        results = await DeferredList(
            [store.create(key, b"x") for key in ("/registry/k", "/registry/k ", "/registry/K")],
            consumeErrors=True,
        )
        self.assertEqual([ok for ok, _ in results], [True, True, True])
        await self.assertFailure(store.create("/registry/k ", b"y"), KeyExists)


class MariaDBFaultTests(TestCase):
    timeout = 120

    async def test_server_lost_while_running_gives_unavailable_then_recovers(self) -> None:
        server = MariaDBServer(host="127.0.0.25")
        self.addCleanup(server.destroy)
        server.start()
        store = await start_store(self, server.endpoint("faults"))
        before = await store.create("/registry/m/a", b"1")
        server.stop()
        failure = await self.assertFailure(store.get("/registry/m/a"), DatastoreUnavailable)
        self.assertNotIn(PASSWORD, str(failure))
        server.start()
        from tests.datastore.test_postgres import _eventually

        kv = await _eventually(lambda: store.get("/registry/m/a"), "get")
        self.assertEqual(kv.mod_revision, before)
        self.assertGreater(await store.create("/registry/m/b", b"2"), before)


class MariaDBLogTests(TestCase):
    timeout = 60

    async def test_watchers_see_another_process_writes(self) -> None:
        endpoint = _endpoint()
        store = await start_store(self, endpoint)
        collector = EventCollector()
        watch = await store.watch("/registry/crash/", 0, collector.deliver)
        self.addCleanup(watch.cancel)
        acknowledged = kill_writer_mid_stream(endpoint, 20)
        last = max(acknowledged.values())
        events = await collector.wait_for_revision(last)
        revisions = [e.revision for e in events if e.revision <= last]
        self.assertEqual(revisions, sorted(acknowledged.values()))

    async def test_a_burned_revision_does_not_stall_watchers(self) -> None:
        import pymysql

        from tests.support.mariadb import USER

        server = shared_mariadb()
        database = fresh_database_name()
        store = await start_store(self, server.endpoint(database))
        collector = EventCollector()
        watch = await store.watch("/registry/", 0, collector.deliver)
        self.addCleanup(watch.cancel)
        conn = pymysql.connect(
            host=server.host, port=server.port, user=USER, password=PASSWORD, database=database
        )
        try:
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("INSERT INTO kine (name, created, deleted) VALUES ('/x', 1, 0)")
                burned = cur.lastrowid
                cur.execute("ROLLBACK")
        finally:
            conn.close()
        rev = await store.create("/registry/after-gap", b"1")
        self.assertEqual(rev, burned + 1)
        events = await collector.wait_for_revision(rev)
        self.assertEqual([e.revision for e in events], [rev])
