"""L{IDatastore} over the kine table: the Twisted service that ties the pieces together."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar, TypeVar, cast

from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorTime,
)
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from k3stw.datastore.interface import (
    Compacted,
    DatastoreError,
    DatastoreUnavailable,
    Event,
    FutureRevision,
    IDatastore,
    IWatch,
    KeyValue,
    ListResult,
)
from k3stw.datastore.lease import LeaseKeeper
from k3stw.datastore.readiness import DatastoreReadiness
from k3stw.datastore.sql.dialect import ConnectionThreads, Dialect
from k3stw.datastore.sql.follow import LogFollower
from k3stw.datastore.sql.log import CompactionPolicy, Row
from k3stw.datastore.sql.queries import KineQueries
from k3stw.datastore.watch import BufferedWatch
from k3stw.logs import Logger
from k3stw.machinery.timing import PeriodicJob

_T = TypeVar("_T")


@implementer(IDatastore)
class SQLDatastore(Service):
    """
    L{IDatastore} over the kine table of one SQL database.

    :param reactor: provides L{IReactorTime} and L{IReactorFromThreads}.
    :param dialect: the database and its driver.
    :param watch_buffer_events: a paused watch holding more events than this is cut off.
    :param watch_buffer_bytes: likewise for the bytes of values it holds.
    :param compact_interval: seconds between background compactions (0: never).
    """

    _log = Logger()

    #: Local followers per database, so a write wakes every local client of it.
    _neighbours: ClassVar[dict[str, weakref.WeakSet[LogFollower]]] = {}

    def __init__(
        self,
        reactor: IReactorTime,
        dialect: Dialect,
        *,
        watch_buffer_events: int = 10_000,
        watch_buffer_bytes: int = 64 << 20,
        compact_interval: float = 60.0,
        compaction_policy: CompactionPolicy | None = None,
        gap_wait: float = 0.2,
    ) -> None:
        self._reactor = reactor
        self.dialect = dialect
        self.queries = KineQueries(dialect)
        self._watch_buffer_events = watch_buffer_events
        self._watch_buffer_bytes = watch_buffer_bytes
        self.policy = compaction_policy or CompactionPolicy()
        self._writer = ConnectionThreads(
            reactor, dialect, dialect.writer_threads, f"kine-writer-{dialect.name}"
        )
        self._listening = threading.Event()
        self._listener: threading.Thread | None = None
        self._readers = ConnectionThreads(
            reactor, dialect, dialect.reader_threads, f"kine-reader-{dialect.name}", True
        )
        self.follower = LogFollower(
            reactor, self._read_log, self._fill_gap, dialect.poll_interval, gap_wait
        )
        self.follower.listeners.append(self._observe)
        self.follower.on_compacted = self._follower_compacted
        self.leases = LeaseKeeper(reactor, self._expire)
        self._ready: Deferred[None] | None = None
        self._readiness = DatastoreReadiness(dialect.description, self._log)
        self._stopping = False
        self._compactor: PeriodicJob | None = None
        if compact_interval > 0:
            self._compactor = PeriodicJob(
                reactor,
                compact_interval,
                self._compact_tick,
                "background compaction",
                first=compact_interval,
            )
        self._shutdown_trigger: Any = None

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._writer.start()
        self._readers.start()
        if IReactorCore.providedBy(self._reactor):
            # Pool threads would keep the process alive if nobody stopped the service.
            self._shutdown_trigger = cast(IReactorCore, self._reactor).addSystemEventTrigger(
                "during", "shutdown", self._stop_pools
            )
        self._ready = Deferred.fromCoroutine(self._connect())
        self._ready.addErrback(self._connect_failed)

    def stopping(self) -> bool:
        """The service is being stopped."""
        return self._stopping

    def when_ready(self) -> Deferred[None]:
        """Fires once the database is reachable and the schema exists."""
        return self._readiness.when_ready()

    async def _connect(self) -> None:
        attempt = 0
        while not self._stopping:
            attempt += 1
            try:
                await self._writer.run_unbound(self.dialect.prepare)
                await self._writer.run(self.queries.prepare)
                position = await self._readers.run(self.queries.max_id)
                leased = await self._readers.run(
                    partial(self.queries.leased_keys, revision=position)
                )
                break
            except DatastoreUnavailable as e:
                delay = self._readiness.unreachable(attempt, e)
                await task.deferLater(self._reactor, delay)
        else:
            return
        if self.stopping():
            return
        self.follower.start(position)
        self._register_neighbour()
        self._start_listener()
        self.leases.start()
        for kv in leased:
            self.leases.track(kv.key, kv.mod_revision, kv.lease)
        if self._compactor is not None:
            self._compactor.startService()
        self._readiness.reached(position)

    def _connect_failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self._log.failure(
                "datastore {endpoint} could not start", failure, endpoint=self.dialect.description
            )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        self._readiness.lost()
        if self._ready is not None and not self._ready.called:
            self._ready.cancel()
            with contextlib.suppress(CancelledError, Exception):
                await self._ready
        if self._compactor is not None and self._compactor.running:
            # A compaction under way is cancelled between its transactions.
            self._compactor.stopService()
        self.leases.stop()
        self._unregister_neighbour()
        await self.follower.stop()
        for watch in list(self.follower.watches):
            watch.fail(DatastoreUnavailable(f"datastore {self.dialect.description} stopped"))
        if self._shutdown_trigger is not None:
            cast(IReactorCore, self._reactor).removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        pool_threads = cast(Any, self._reactor).getThreadPool()
        await deferToThreadPool(
            cast(IReactorFromThreads, self._reactor), pool_threads, self._stop_pools
        )

    def _stop_pools(self) -> None:
        # The listener notices within its wait timeout and closes its own
        # connection; joining it here would only slow every stop down.
        self._listening.set()
        self._listener = None
        self._writer.stop()
        self._readers.stop()

    def _start_listener(self) -> None:
        if type(self.dialect).listen is Dialect.listen:
            return
        self._listening.clear()
        from_threads = cast(IReactorFromThreads, self._reactor)

        def notified() -> None:
            from_threads.callFromThread(self.follower.poke)

        self._listener = threading.Thread(
            target=self.dialect.listen,
            args=(self._listening, notified),
            name=f"kine-listen-{self.dialect.name}",
            daemon=True,
        )
        self._listener.start()

    def _register_neighbour(self) -> None:
        group = self._neighbours.setdefault(self.dialect.identity, weakref.WeakSet())
        group.add(self.follower)

    def _unregister_neighbour(self) -> None:
        group = self._neighbours.get(self.dialect.identity)
        if group is not None:
            group.discard(self.follower)

    def _wake(self, result: _T) -> _T:
        for follower in list(self._neighbours.get(self.dialect.identity, ())):
            follower.poke()
        return result

    # -- plumbing ---------------------------------------------------------------

    def _check_ready(self) -> None:
        if not self._readiness.ready:
            raise DatastoreUnavailable(f"datastore {self.dialect.description} is not connected")

    def _read(self, fn: Callable[[Any], _T]) -> Deferred[_T]:
        try:
            self._check_ready()
        except DatastoreUnavailable as e:
            return _failed(e)
        return self._readers.run(fn)

    def _write(self, fn: Callable[[Any], _T]) -> Deferred[_T]:
        try:
            self._check_ready()
        except DatastoreUnavailable as e:
            return _failed(e)
        return self._writer.run(lambda conn: self.queries.transaction(conn, fn)).addCallback(
            self._wake
        )

    def _read_log(self, after: int) -> Deferred[tuple[list[Row], int]]:
        return self._readers.run(partial(self.queries.read_log, after=after))

    def _fill_gap(self, missing: int) -> Deferred[None]:
        return self._writer.run(partial(self.queries.fill_gap, missing=missing))

    def _expire(self, key: str, revision: int) -> Deferred[int]:
        if self._stopping:
            return _failed(CancelledError())
        return self._write(lambda cur: self.queries.delete(cur, key, revision))

    # -- compaction --------------------------------------------------------------------

    async def _compact(self, revision: int) -> None:
        current = await self._readers.run(self.queries.max_id)
        if revision > current:
            raise FutureRevision(revision, current)
        while True:
            reached = await self._write(lambda cur: self.queries.compact_step(cur, revision))
            if reached >= revision:
                return

    async def _compact_tick_async(self) -> None:
        current = await self.current_revision()
        now = self._reactor.seconds()
        self.policy.observe(now, current)
        target = self.policy.target(now, current)
        if target <= 0:
            return
        compacted = await self.compacted_revision()
        if target > compacted:
            self._log.info("compacting datastore to revision {rev}", rev=target)
            await self.compact(target)

    async def _compact_tick(self) -> None:
        try:
            await self._compact_tick_async()
        except Exception as e:
            if not self._stopping:  # a tick cut short by stopService is no failure
                self._log.warn("background compaction failed: {reason}", reason=str(e))

    # -- watch machinery ----------------------------------------------------------------

    def _observe(self, events: Sequence[Event]) -> None:
        self.leases.observe(events)

    def _follower_compacted(self, requested: int, compacted: int) -> None:
        for watch in list(self.follower.watches):
            watch.fail(Compacted(requested, compacted))

    async def _watch(
        self, prefix: str, start_revision: int, deliver: Callable[[Sequence[Event]], None]
    ) -> BufferedWatch:
        current, compacted = await self._read(lambda conn: self.queries.revisions(conn.cursor()))
        if start_revision and start_revision < compacted:
            raise Compacted(start_revision, compacted)
        start = start_revision or current + 1
        watch = BufferedWatch(
            prefix,
            start,
            deliver,
            self._watch_buffer_events,
            self._watch_buffer_bytes,
            self.follower.watches.discard,
        )
        head = self.follower.position
        self.follower.watches.add(watch)
        if start <= head:
            watch.catching_up = True
            catch_up = Deferred.fromCoroutine(self._catch_up(watch, head))
            catch_up.addErrback(self._catch_up_failed, watch)
        return watch

    async def _catch_up(self, watch: BufferedWatch, head: int) -> None:
        page = max(1, min(500, self._watch_buffer_events))
        while not watch.done and watch.next_revision <= head:
            await watch.wait_resumed()
            if watch.is_done():
                return
            first = watch.next_revision
            rows, compacted = await self._readers.run(
                partial(
                    self.queries.history, prefix=watch.prefix, first=first, last=head, limit=page
                )
            )
            if compacted > first:
                raise Compacted(first, compacted)
            events = [row.event() for row in rows if not row.internal]
            watch.push(events)
            if len(rows) < page:
                break
            if watch.next_revision <= rows[-1].id:
                watch.next_revision = rows[-1].id + 1
        if not watch.done:
            watch.next_revision = max(watch.next_revision, head + 1)
            watch.finish_catch_up()

    def _catch_up_failed(self, failure: Failure, watch: BufferedWatch) -> None:
        reason = failure.value
        if not isinstance(reason, DatastoreError):
            self._log.failure("watch catch-up failed", failure)
            reason = DatastoreUnavailable(f"watch failed: {failure.getErrorMessage()}")
        watch.fail(reason)

    # -- IDatastore ------------------------------------------------------------------------

    def get(self, key: str, revision: int = 0) -> Deferred[KeyValue | None]:
        return self._read(lambda conn: self.queries.get_key(conn, key, revision))

    def list(
        self, prefix: str, limit: int = 0, continue_from: str | None = None, revision: int = 0
    ) -> Deferred[ListResult]:
        return self._read(
            lambda conn: self.queries.list_keys(conn, prefix, limit, continue_from, revision)
        )

    def count(self, prefix: str) -> Deferred[int]:
        return self._read(lambda conn: self.queries.count_keys(conn, prefix))

    def create(self, key: str, value: bytes, lease_ttl: int | None = None) -> Deferred[int]:
        return self._write(lambda cur: self.queries.create(cur, key, value, lease_ttl or 0))

    def update(
        self, key: str, value: bytes, expected_revision: int, lease_ttl: int | None = None
    ) -> Deferred[int]:
        return self._write(
            lambda cur: self.queries.update(cur, key, value, expected_revision, lease_ttl or 0)
        )

    def delete(self, key: str, expected_revision: int | None = None) -> Deferred[int]:
        return self._write(lambda cur: self.queries.delete(cur, key, expected_revision))

    def watch(
        self, prefix: str, start_revision: int, deliver: Callable[[Sequence[Event]], None]
    ) -> Deferred[IWatch]:
        d = Deferred.fromCoroutine(self._watch(prefix, start_revision, deliver))
        return cast(Deferred[IWatch], d)

    def current_revision(self) -> Deferred[int]:
        return self._read(self.queries.max_id)

    def compact(self, revision: int) -> Deferred[None]:
        try:
            self._check_ready()
        except DatastoreUnavailable as e:
            return _failed(e)
        return Deferred.fromCoroutine(self._compact(revision))

    def compacted_revision(self) -> Deferred[int]:
        return self._read(lambda conn: self.queries.compact_rev(conn.cursor()))

    def health(self) -> Deferred[None]:
        return self._read(lambda conn: self.queries.fetch(conn.cursor(), "SELECT 1")).addCallback(
            lambda _: None
        )


def _failed(exc: BaseException) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(exc)
    return d
