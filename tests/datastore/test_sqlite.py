"""The conformance suite and the crash test against the embedded SQLite datastore."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from k3stw.datastore.interface import IDatastore
from k3stw.datastore.sqlite import SQLiteDatastore, default_path
from tests.datastore.conformance import DatastoreConformance


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


WRITER = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor, defer
    from k3stw.datastore.sqlite import SQLiteDatastore

    async def main():
        store = SQLiteDatastore(reactor, sys.argv[1])
        store.startService()
        await store.when_ready()
        i = 0
        while True:
            rev = await store.create("/registry/crash/%08d" % i, b"value-%d" % i)
            sys.stdout.write("%d %d\\n" % (i, rev))
            sys.stdout.flush()
            i += 1

    defer.Deferred.fromCoroutine(main()).addErrback(lambda f: (f.printTraceback(), reactor.stop()))
    reactor.run()
    """
)


class SQLiteCrashTests(TestCase):
    """Acknowledged writes survive ``kill -9`` of the writing process."""

    timeout = 60

    async def test_acknowledged_writes_survive_kill_9(self) -> None:
        directory = tempfile.mkdtemp(prefix="k3stw-crash-")
        self.addCleanup(_rmtree, directory)
        path = default_path(directory)
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, path],
            stdout=subprocess.PIPE,
            cwd=os.getcwd(),
        )
        acknowledged: dict[int, int] = {}
        try:
            assert proc.stdout is not None
            while len(acknowledged) < 300:
                line = proc.stdout.readline()
                if not line:
                    self.fail(f"writer exited early with {proc.wait()}")
                i, rev = map(int, line.split())
                acknowledged[i] = rev
            os.kill(proc.pid, signal.SIGKILL)
            # Whatever was printed before the kill was acknowledged too.
            for line in proc.stdout.read().splitlines():
                if line.strip():
                    i, rev = map(int, line.split())
                    acknowledged[i] = rev
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

        store = SQLiteDatastore(reactor, path)
        store.startService()
        self.addCleanup(_stop, store)
        await store.when_ready()
        for i, rev in acknowledged.items():
            kv = await store.get(f"/registry/crash/{i:08d}")
            assert kv is not None, f"acknowledged write {i} (revision {rev}) lost"
            self.assertEqual((kv.value, kv.mod_revision), (b"value-%d" % i, rev))
        self.assertGreaterEqual(await store.current_revision(), max(acknowledged.values()))
