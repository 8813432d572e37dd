"""Shared pieces of the PostgreSQL and MariaDB datastore tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from k3stw.datastore.endpoint import datastore_for_endpoint
from k3stw.datastore.interface import IDatastore
from k3stw.datastore.sql import SQLDatastore
from tests.datastore.conformance import DatastoreConformance


async def start_store(test: TestCase, endpoint: str, **kwargs: Any) -> SQLDatastore:
    """A started datastore for C{endpoint}, stopped when C{test} ends."""
    store: SQLDatastore = datastore_for_endpoint(reactor, endpoint, tempfile.gettempdir(), **kwargs)
    store.startService()
    test.addCleanup(stop_store, store)
    await store.when_ready()
    return store


async def stop_store(store: SQLDatastore) -> None:
    if store.running:
        await store.stopService()


class ServerConformance(DatastoreConformance):
    """The conformance suite on a fresh database of a shared server per test."""

    timeout = 120
    endpoint_for: Callable[[], str]

    async def make_datastore(self) -> IDatastore:
        endpoint = self.endpoint_for()
        store = await start_store(
            self,
            endpoint,
            watch_buffer_events=self.watch_buffer_limit,
        )
        self._endpoints = getattr(self, "_endpoints", {})
        self._endpoints[id(store)] = endpoint
        return store

    async def second_client(self, store: IDatastore) -> IDatastore:
        endpoint = self._endpoints[id(store)]
        other = await start_store(
            self,
            endpoint,
            watch_buffer_events=self.watch_buffer_limit,
        )
        self._endpoints[id(other)] = endpoint
        return other

    async def reopen_datastore(self, store: IDatastore) -> IDatastore:
        assert isinstance(store, SQLDatastore)
        await stop_store(store)
        return await self.second_client(store)


CAS_WORKER = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor, defer
    from k3stw.datastore.endpoint import datastore_for_endpoint
    from k3stw.datastore.interface import Conflict

    endpoint, rounds = sys.argv[1], int(sys.argv[2])

    async def main():
        store = datastore_for_endpoint(reactor, endpoint, "/nonexistent")
        store.startService()
        await store.when_ready()
        sys.stdout.write("ready\\n")
        sys.stdout.flush()
        sys.stdin.readline()
        conflicts = 0
        for _ in range(rounds):
            while True:
                kv = await store.get("/registry/shared/counter")
                try:
                    rev = await store.update(
                        "/registry/shared/counter", b"%d" % (int(kv.value) + 1), kv.mod_revision
                    )
                except Conflict:
                    conflicts += 1
                    continue
                sys.stdout.write("won %d %d\\n" % (kv.mod_revision, rev))
                break
        sys.stdout.write("conflicts %d\\n" % conflicts)
        sys.stdout.flush()
        await store.stopService()

    def done(result):
        if hasattr(result, "printTraceback"):
            result.printTraceback()
        reactor.stop()

    defer.Deferred.fromCoroutine(main()).addBoth(done)
    reactor.run()
    """
)


def run_cas_workers(endpoint: str, workers: int, rounds: int) -> list[list[tuple[int, int]]]:
    """
    Run C{workers} processes that each win C{rounds} compare-and-swap increments
    of one counter; return each process's (read revision, new revision) wins.
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CAS_WORKER, endpoint, str(rounds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=os.getcwd(),
        )
        for _ in range(workers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            greeting = proc.stdout.readline()
            if greeting.strip() != b"ready":
                raise AssertionError(f"CAS worker did not start: {greeting!r}")
        # Release them together so they really race.
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise AssertionError(f"CAS worker failed ({proc.returncode}): {out!r}")
            wins = []
            for line in out.decode().splitlines():
                if line.startswith("won "):
                    _, read, new = line.split()
                    wins.append((int(read), int(new)))
            results.append(wins)
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


CRASH_WRITER = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor, defer
    from k3stw.datastore.endpoint import datastore_for_endpoint

    async def main():
        store = datastore_for_endpoint(reactor, sys.argv[1], "/nonexistent")
        store.startService()
        await store.when_ready()
        i = 0
        while True:
            rev = await store.create("/registry/crash/%08d" % i, b"value-%d" % i)
            # Printed only once the write was acknowledged.
            sys.stdout.write("%d %d\\n" % (i, rev))
            sys.stdout.flush()
            i += 1

    defer.Deferred.fromCoroutine(main()).addErrback(lambda f: (f.printTraceback(), reactor.stop()))
    reactor.run()
    """
)


def kill_writer_mid_stream(endpoint: str, writes: int) -> dict[int, int]:
    """
    Run a process writing a stream of keys to C{endpoint}; once it has
    acknowledged C{writes} of them, C{kill -9} it.  Return every write it
    acknowledged (index to revision).
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_WRITER, endpoint], stdout=subprocess.PIPE, cwd=os.getcwd()
    )
    acknowledged: dict[int, int] = {}
    try:
        assert proc.stdout is not None
        while len(acknowledged) < writes:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"writer exited early with {proc.wait()}")
            i, rev = map(int, line.split())
            acknowledged[i] = rev
        os.kill(proc.pid, signal.SIGKILL)
        # Whatever it printed before it died was acknowledged too.
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
    return acknowledged


async def check_acknowledged(test: TestCase, store: Any, acknowledged: dict[int, int]) -> None:
    """Every acknowledged write of L{kill_writer_mid_stream} is in C{store}."""
    for i, rev in acknowledged.items():
        kv = await store.get(f"/registry/crash/{i:08d}")
        test.assertIsNotNone(kv, f"acknowledged write {i} (revision {rev}) lost")
        test.assertEqual((kv.value, kv.mod_revision), (b"value-%d" % i, rev))
    test.assertGreaterEqual(await store.current_revision(), max(acknowledged.values()))


class SharedServerBehaviour:
    """
    What every external SQL server must show beyond the conformance suite,
    mixed into a C{TestCase} that sets C{endpoint_for} (a fresh database each call).
    """

    timeout = 180
    endpoint_for: Callable[[], str]

    async def test_two_processes_racing_compare_and_swap_lose_no_update(self) -> None:
        test: Any = self
        endpoint = self.endpoint_for()
        store = await start_store(test, endpoint)
        await store.create("/registry/shared/counter", b"0")
        wins = run_cas_workers(endpoint, workers=2, rounds=60)
        kv = await store.get("/registry/shared/counter")
        assert kv is not None
        test.assertEqual(kv.value, b"120")
        all_wins = wins[0] + wins[1]
        test.assertEqual(len(all_wins), 120)
        # Exactly one winner per round: every version was the base of one update.
        test.assertEqual(len({read for read, _ in all_wins}), 120)
        test.assertEqual(len({new for _, new in all_wins}), 120)

    async def test_acknowledged_writes_survive_kill_9_of_the_client(self) -> None:
        test: Any = self
        endpoint = self.endpoint_for()
        acknowledged = kill_writer_mid_stream(endpoint, 200)
        store = await start_store(test, endpoint)
        await check_acknowledged(test, store, acknowledged)
