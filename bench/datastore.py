"""
Datastore benchmark: every IDatastore backend against its real server, and raw
etcd (its own JSON gateway, no k3stw layer) as the peer, in one run.

    python bench/datastore.py [--quick] [--output docs/datastore-benchmark.md]
                              [--backends sqlite,postgres,mysql,etcd,raw-etcd]

It starts the servers itself (the same fixtures the tests use), runs bounded
loops (a count and a time limit, whichever comes first), stops everything by
PID and prints one table.  ``--quick`` is the CI mode: smaller counts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

if __package__ in (None, ""):
    # Run as a script: make the checkout (k3stw, tests.support) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import react
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from k3stw.datastore.etcd.gateway import JSONBody, b64, prefix_end, read_body
from k3stw.datastore.interface import Event, IDatastore

Stop = Callable[[], Awaitable[None]]
Started = tuple[IDatastore, Stop]

ROWS = [
    ("create_1", "create, 1 writer (ops/s)"),
    ("create_16", "create, 16 writers (ops/s)"),
    ("update_1", "update, 1 writer (ops/s)"),
    ("update_16", "update, 16 writers (ops/s)"),
    ("get_p50", "get latency p50 (ms)"),
    ("get_p99", "get latency p99 (ms)"),
    ("list", "list {list_keys} keys, one call (ms)"),
    ("list_paged", "list {list_keys} keys, pages of 500 (ms)"),
    ("watch_p50", "watch delivery p50 (ms)"),
    ("watch_p99", "watch delivery p99 (ms)"),
]


@dataclass(frozen=True)
class Budget:
    """How much work each loop may do: it stops at C{ops} or C{seconds}, whichever is first."""

    ops: int
    seconds: float
    list_keys: int
    list_repeats: int
    watch_events: int


#: A backend that does not start, or does not finish, in this time gets a note in its column.
START_LIMIT = 120.0
BACKEND_LIMIT = 600.0

FULL = Budget(ops=3000, seconds=10.0, list_keys=10_000, list_repeats=5, watch_events=1000)
QUICK = Budget(ops=300, seconds=2.0, list_keys=10_000, list_repeats=2, watch_events=100)


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def run_workers(
    writers: int, budget: Budget, op: Callable[[int, int], Awaitable[Any]]
) -> float:
    """
    Run C{op(worker, i)} from C{writers} concurrent workers until C{budget.ops}
    operations or C{budget.seconds} passed; return operations per second.
    """
    done = 0
    started = time.perf_counter()
    deadline = started + budget.seconds

    async def worker(w: int) -> None:
        nonlocal done
        while done < budget.ops and time.perf_counter() < deadline:
            i = done
            done += 1
            await op(w, i)

    await gather([worker(w) for w in range(writers)])
    return done / (time.perf_counter() - started)


async def gather(coroutines: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run C{coroutines} together; raise the first failure once all ended."""
    results = await DeferredList(
        [Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True
    )
    for ok, value in results:
        if not ok:
            cast(Failure, value).raiseException()


async def fill(store: IDatastore, prefix: str, count: int) -> None:
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < count:
            i = position
            position += 1
            await store.create(f"{prefix}{i:06d}", b"v" * 100)

    await gather([worker() for _ in range(16)])


async def bench_datastore(store: IDatastore, budget: Budget) -> dict[str, float]:
    """Every measurement on one backend, through IDatastore only."""
    out: dict[str, float] = {}
    value = b"x" * 256

    for writers in (1, 16):

        async def create(w: int, i: int, p: str = f"/bench/create{writers}/") -> None:
            await store.create(f"{p}{i:07d}", value)

        out[f"create_{writers}"] = await run_workers(writers, budget, create)

    for writers in (1, 16):
        revisions: dict[int, int] = {}
        for w in range(writers):
            revisions[w] = await store.create(f"/bench/update{writers}/{w}", value)

        async def update(
            w: int, i: int, n: int = writers, revs: dict[int, int] = revisions
        ) -> None:
            revs[w] = await store.update(f"/bench/update{n}/{w}", value, revs[w])

        out[f"update_{writers}"] = await run_workers(writers, budget, update)

    latencies: list[float] = []

    async def get(w: int, i: int) -> None:
        started = time.perf_counter()
        await store.get(f"/bench/create16/{i % 100:07d}")
        latencies.append(time.perf_counter() - started)

    await run_workers(1, budget, get)
    out["get_p50"] = percentile(latencies, 0.50) * 1000
    out["get_p99"] = percentile(latencies, 0.99) * 1000

    await fill(store, "/bench/list/", budget.list_keys)
    timings = []
    for _ in range(budget.list_repeats):
        started = time.perf_counter()
        page = await store.list("/bench/list/")
        timings.append(time.perf_counter() - started)
        assert len(page.items) == budget.list_keys, len(page.items)
    out["list"] = percentile(timings, 0.5) * 1000
    timings = []
    for _ in range(budget.list_repeats):
        started = time.perf_counter()
        seen = 0
        page = await store.list("/bench/list/", limit=500)
        seen += len(page.items)
        while page.more:
            page = await store.list(
                "/bench/list/", limit=500, continue_from=page.items[-1].key, revision=page.revision
            )
            seen += len(page.items)
        timings.append(time.perf_counter() - started)
        assert seen == budget.list_keys, seen
    out["list_paged"] = percentile(timings, 0.5) * 1000

    out["watch_p50"], out["watch_p99"] = await watch_latency(store, budget)
    return out


async def watch_latency(store: IDatastore, budget: Budget) -> tuple[float, float]:
    """
    Time from issuing a write to the watcher receiving its event (so it
    includes the write itself), one write at a time.
    """
    waiting: dict[str, tuple[float, Deferred[None]]] = {}
    latencies: list[float] = []

    def deliver(events: Sequence[Event]) -> None:
        now = time.perf_counter()
        for event in events:
            entry = waiting.pop(event.kv.key, None)
            if entry is not None:
                latencies.append(now - entry[0])
                entry[1].callback(None)

    watch = await store.watch("/bench/watch/", 0, deliver)
    deadline = time.perf_counter() + budget.seconds
    try:
        for i in range(budget.watch_events):
            if time.perf_counter() > deadline:
                break
            key = f"/bench/watch/{i:07d}"
            seen: Deferred[None] = Deferred()
            waiting[key] = (time.perf_counter(), seen)
            await store.create(key, b"w")
            await seen
    finally:
        watch.cancel()
    return percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000


class RawEtcd:
    """The peer: etcd's own gateway with plain POSTs, no datastore layer on top."""

    def __init__(self, reactor: Any, endpoint: str) -> None:
        self._endpoint = endpoint
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 64
        self._agent = Agent(reactor, pool=self.pool)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._agent.request(
            b"POST",
            (self._endpoint + path).encode(),
            Headers({b"Content-Type": [b"application/json"]}),
            JSONBody(json.dumps(body).encode()),
        )
        answer: dict[str, Any] = json.loads(await read_body(response))
        if response.code != 200:
            raise RuntimeError(f"etcd answered {response.code}: {answer}")
        return answer

    def put(self, key: str, value: bytes) -> Awaitable[dict[str, Any]]:
        return self.post("/v3/kv/put", {"key": b64(key), "value": b64(value)})


async def bench_raw_etcd(raw: RawEtcd, budget: Budget) -> dict[str, float]:
    out: dict[str, float] = {}
    value = b"x" * 256
    for writers in (1, 16):

        async def create(w: int, i: int, n: int = writers) -> None:
            await raw.put(f"/raw/put{n}/{i:07d}", value)

        async def update(w: int, i: int, n: int = writers) -> None:
            await raw.put(f"/raw/upd{n}/{w}", value)

        out[f"create_{writers}"] = await run_workers(writers, budget, create)
        out[f"update_{writers}"] = await run_workers(writers, budget, update)
    latencies: list[float] = []

    async def get(w: int, i: int) -> None:
        started = time.perf_counter()
        await raw.post("/v3/kv/range", {"key": b64(f"/raw/put16/{i % 100:07d}")})
        latencies.append(time.perf_counter() - started)

    await run_workers(1, budget, get)
    out["get_p50"] = percentile(latencies, 0.50) * 1000
    out["get_p99"] = percentile(latencies, 0.99) * 1000
    position = 0

    async def filler() -> None:
        nonlocal position
        while position < budget.list_keys:
            i = position
            position += 1
            await raw.put(f"/raw/list/{i:06d}", b"v" * 100)

    await gather([filler() for _ in range(16)])
    timings = []
    prefix = b"/raw/list/"
    for _ in range(budget.list_repeats):
        started = time.perf_counter()
        answer = await raw.post(
            "/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        )
        timings.append(time.perf_counter() - started)
        assert len(answer["kvs"]) == budget.list_keys
    out["list"] = percentile(timings, 0.5) * 1000
    return out


# Backends: each starts its real server (the test fixtures) and returns a
# started store, built the way the server builds it (--datastore-endpoint),
# and how to stop both.


async def open_store(reactor: Any, endpoint: str, workdir: str) -> IDatastore:
    from k3stw.datastore.endpoint import datastore_for_endpoint

    store = datastore_for_endpoint(reactor, endpoint, workdir, compact_interval=0)
    store.startService()
    await store.when_ready()
    return cast(IDatastore, store)


async def close_store(store: IDatastore) -> None:
    await cast(Service, store).stopService()


async def start_sqlite(reactor: Any, workdir: str) -> tuple[IDatastore, Stop]:
    store = await open_store(reactor, f"sqlite://{workdir}/state.db", workdir)
    return store, lambda: close_store(store)


async def start_postgres(reactor: Any, workdir: str) -> tuple[IDatastore, Stop]:
    from tests.support.postgres import PostgresServer, fresh_database_name

    # The fixture starts the server synchronously, before anything is measured.
    server = PostgresServer().start()
    try:
        store = await open_store(reactor, server.endpoint(fresh_database_name("bench")), workdir)
    except BaseException:
        server.destroy()
        raise

    async def stop() -> None:
        await close_store(store)
        server.destroy()

    return store, stop


async def start_mariadb(reactor: Any, workdir: str) -> tuple[IDatastore, Stop]:
    from tests.support.mariadb import MariaDBServer

    server = MariaDBServer().start()
    try:
        store = await open_store(reactor, server.endpoint("k3stw_bench"), workdir)
    except BaseException:
        server.destroy()
        raise

    async def stop() -> None:
        await close_store(store)
        server.destroy()

    return store, stop


async def start_etcd_store(reactor: Any, workdir: str) -> tuple[IDatastore, Stop]:
    from tests.support.etcd import start_etcd

    cluster = await start_etcd(reactor, 1)
    try:
        store = await open_store(reactor, ",".join(cluster.endpoints), workdir)
    except BaseException:
        await cluster.stop()
        raise

    async def stop() -> None:
        await close_store(store)
        await cluster.stop()

    return store, stop


async def run(reactor: Any, args: argparse.Namespace) -> str:
    budget = QUICK if args.quick else FULL
    backends: list[tuple[str, str, Callable[[str], Coroutine[Any, Any, Started]]]] = [
        ("sqlite", "SQLite", lambda d: start_sqlite(reactor, d)),
        ("postgres", "PostgreSQL", lambda d: start_postgres(reactor, d)),
        ("mysql", "MariaDB", lambda d: start_mariadb(reactor, d)),
        ("etcd", "etcd (k3stw)", lambda d: start_etcd_store(reactor, d)),
    ]
    wanted = {name.strip().lower() for name in args.backends.split(",")}
    columns: list[tuple[str, dict[str, float] | str]] = []
    for short, name, start in backends:
        if short not in wanted:
            continue
        workdir = tempfile.mkdtemp(prefix="k3stw-bench-")
        print(f"-- {name}", file=sys.stderr, flush=True)
        try:
            started: Deferred[Started] = Deferred.fromCoroutine(start(workdir))
            store, stop = await started.addTimeout(START_LIMIT, reactor)
        except ImportError as e:
            columns.append((name, f"not available ({e.name})"))
            shutil.rmtree(workdir, ignore_errors=True)
            continue
        except defer.TimeoutError:
            columns.append((name, f"did not start in {START_LIMIT:g} s"))
            shutil.rmtree(workdir, ignore_errors=True)
            continue
        try:
            measured: Deferred[dict[str, float]] = Deferred.fromCoroutine(
                bench_datastore(store, budget)
            )
            columns.append((name, await measured.addTimeout(BACKEND_LIMIT, reactor)))
        except defer.TimeoutError:
            columns.append((name, f"stopped after {BACKEND_LIMIT:g} s"))
        finally:
            await stop()
            shutil.rmtree(workdir, ignore_errors=True)
    if "raw-etcd" in wanted:
        from tests.support.etcd import start_etcd

        print("-- raw etcd", file=sys.stderr, flush=True)
        cluster = await start_etcd(reactor, 1)
        raw = RawEtcd(reactor, cluster.endpoints[0])
        try:
            columns.append(("raw etcd gateway (peer)", await bench_raw_etcd(raw, budget)))
        finally:
            await raw.pool.closeCachedConnections()
            await cluster.stop()
    return render(columns, budget, args.quick)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            memory = f"{int(f.readline().split()[1]) // (1024 * 1024)} GiB RAM"
    except (OSError, ValueError, IndexError):
        memory = "unknown RAM"
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {memory}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def render(columns: list[tuple[str, dict[str, float] | str]], budget: Budget, quick: bool) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Machine: {machine()}",
        f"Load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        "(other work on the machine shares its CPUs with the servers and the client)",
        f"Date: {now}; mode: {'--quick' if quick else 'full'} "
        f"(loops stop at {budget.ops} operations or {budget.seconds:g} s; "
        f"256-byte values; watch delivery = write issued -> event delivered)",
        "",
        "| measurement | " + " | ".join(name for name, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for key, label in ROWS:
        cells = []
        for _, result in columns:
            if isinstance(result, str):
                cells.append(result)
            elif key in result:
                number = result[key]
                cells.append(
                    f"{number:,.0f}" if key.startswith(("create", "update")) else f"{number:,.2f}"
                )
            else:
                cells.append("-")
        lines.append(
            f"| {label.format(list_keys=f'{budget.list_keys:,}')} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main(reactor: Any, argv: Sequence[str]) -> Deferred[None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts, for CI")
    parser.add_argument("--output", help="also write the table to this file")
    parser.add_argument(
        "--backends",
        default="sqlite,postgres,mysql,etcd,raw-etcd",
        help="comma-separated subset of sqlite,postgres,mysql,etcd,raw-etcd",
    )
    args = parser.parse_args(argv)

    async def go() -> None:
        table = await run(reactor, args)
        print(table)
        if args.output:
            with open(args.output, "w") as f:
                f.write(table)

    return Deferred.fromCoroutine(go())


if __name__ == "__main__":
    react(main, (sys.argv[1:],))
