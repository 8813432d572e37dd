"""
The kine log: L{IDatastore} over one SQL table, shared by SQLite, PostgreSQL and MySQL.

Every write appends a row to table ``kine``; the row's autoincrement ``id`` is
the global revision.  A key's current version is its newest row; a delete is
a tombstone row.  The unique index on ``(name, prev_revision)`` is what lets
several servers write to one database: two writers that both read revision
``n`` of a key both try to insert a row with ``prev_revision = n`` and only
one insert succeeds.  The loser re-reads and reports L{KeyExists} or
L{Conflict}.

Special rows, never shown to callers:

- ``compact_rev_key``: created once; its ``prev_revision`` holds the
  compacted revision (updated in place, so compaction uses no revision).
- fill rows (``gap-<id>``, ``deleted=1``, ``prev_revision=0``): written by
  the log follower when an id stays missing (a rolled-back insert on a
  server database burns its id), so watchers are never stuck on a hole.

Dialect differences (driver, placeholders, DDL, error classification) live
in a L{Dialect}; the SQL here is written once with ``?`` placeholders.
All SQL runs in thread pools: one writer thread, several reader threads,
each thread with its own connection.
"""

from __future__ import annotations

import contextlib
import heapq
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, TypeVar, cast

from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorCore,
    IReactorFromThreads,
    IReactorTime,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from k3stw.datastore.interface import (
    Compacted,
    Conflict,
    DatastoreError,
    DatastoreUnavailable,
    Event,
    EventType,
    FutureRevision,
    IDatastore,
    IWatch,
    KeyExists,
    KeyNotFound,
    KeyValue,
    ListResult,
    WatchOverflow,
)

COMPACT_KEY = "compact_rev_key"

COLUMNS = "id, name, created, deleted, create_revision, prev_revision, lease, value, old_value"

_T = TypeVar("_T")


# -- pure pieces ---------------------------------------------------------------


def prefix_end(prefix: str) -> str | None:
    """
    The smallest string greater than every string starting with C{prefix}
    (None for the empty prefix, which has no upper bound).
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None


@dataclass(frozen=True, slots=True)
class Row:
    """One row of table ``kine``."""

    id: int
    name: str
    created: bool
    deleted: bool
    create_revision: int
    prev_revision: int
    lease: int
    value: bytes
    old_value: bytes

    @classmethod
    def from_db(cls, raw: Sequence[Any]) -> Row:
        name = raw[1]
        if isinstance(name, bytes | bytearray | memoryview):
            name = bytes(name).decode("utf-8")
        return cls(
            int(raw[0]),
            name,
            bool(raw[2]),
            bool(raw[3]),
            int(raw[4] or 0),
            int(raw[5] or 0),
            int(raw[6] or 0),
            bytes(raw[7] or b""),
            bytes(raw[8] or b""),
        )

    @property
    def internal(self) -> bool:
        """The compaction bookkeeping row or a fill row: never shown to callers."""
        return self.name == COMPACT_KEY or (self.deleted and self.prev_revision == 0)

    @property
    def key_create_revision(self) -> int:
        return self.id if self.created else self.create_revision

    def kv(self) -> KeyValue:
        return KeyValue(self.name, self.value, self.key_create_revision, self.id, self.lease)

    def event(self) -> Event:
        if self.deleted:
            kv = KeyValue(self.name, self.old_value, self.create_revision, self.id, self.lease)
            prev = KeyValue(
                self.name, self.old_value, self.create_revision, self.prev_revision, self.lease
            )
            return Event(EventType.DELETE, self.id, kv, prev)
        if self.created:
            return Event(EventType.CREATE, self.id, self.kv(), None)
        prev = KeyValue(self.name, self.old_value, self.create_revision, self.prev_revision)
        return Event(EventType.UPDATE, self.id, self.kv(), prev)


class CompactionPolicy:
    """
    Which revision the background compactor may compact to: keep the last
    C{keep_revisions} revisions or the last C{keep_seconds} of history,
    whichever is more.

    Time is sampled: L{observe} records (time, current revision) on every
    compactor tick, and the revision at "now - keep_seconds" is taken as the
    newest sample at least that old, which never keeps less than asked.
    """

    def __init__(self, keep_revisions: int = 1000, keep_seconds: float = 300.0) -> None:
        self.keep_revisions = keep_revisions
        self.keep_seconds = keep_seconds
        self._samples: deque[tuple[float, int]] = deque()

    def observe(self, now: float, revision: int) -> None:
        self._samples.append((now, revision))

    def target(self, now: float, current: int) -> int:
        """The revision to compact to now; 0 means nothing to do."""
        horizon = now - self.keep_seconds
        old_enough = 0
        while self._samples and self._samples[0][0] <= horizon:
            old_enough = self._samples[0][1]
            if len(self._samples) > 1 and self._samples[1][0] <= horizon:
                self._samples.popleft()
            else:
                break
        return max(0, min(current - self.keep_revisions, old_enough))


# -- dialects ------------------------------------------------------------------


class Dialect:
    """
    What differs between SQL databases.  Subclasses fill in the driver and DDL;
    everything runs in pool threads.

    :ivar description: the endpoint with any password redacted, for messages.
    :ivar identity: the same for every client of one database in a process,
        so that a local write wakes every local follower at once.
    """

    name: ClassVar[str] = "sql"
    paramstyle: ClassVar[str] = "qmark"
    begin_write: ClassVar[str] = "BEGIN"
    schema: ClassVar[Sequence[str]] = ()
    #: Seconds between polls of the log for writes from other processes.
    poll_interval: ClassVar[float] = 0.1
    #: Threads that read; SQLite and the servers all allow concurrent readers.
    reader_threads: ClassVar[int] = 4
    #: Threads that write.  Several are safe on a server database (the unique
    #: index decides races, the follower waits for ids committed out of order);
    #: SQLite has one writer anyway.
    writer_threads: ClassVar[int] = 1
    #: Run in every write transaction to tell other servers at commit (None: they poll).
    notify_sql: ClassVar[str | None] = None

    def __init__(self, description: str, identity: str) -> None:
        self.description = description
        self.identity = identity

    def sql(self, text: str) -> str:
        if self.paramstyle == "format":
            return text.replace("?", "%s")
        return text

    def name_param(self, name: str) -> Any:
        return name

    def connect(self) -> Any:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create the database if the server needs that (blocking); default: nothing."""

    def listen(self, stopping: threading.Event, notified: Callable[[], None]) -> None:
        """
        Blocking, in its own thread: call C{notified} whenever another client
        committed a write, until C{stopping} is set.  Default: no push channel.
        """

    def is_driver_error(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def is_unique_violation(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def is_retryable(self, exc: BaseException) -> bool:
        """Deadlocks, busy databases, serialization failures: run the transaction again."""
        return False

    def insert(self, cursor: Any, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT and return the new row id (default: C{lastrowid})."""
        cursor.execute(self.sql(sql), params)
        return int(cursor.lastrowid)

    def close(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.close()


class _Retry(Exception):
    """Internal: run the transaction again."""


class _Reconnect(Exception):
    """Internal: the connection failed before doing anything; reconnect and run again."""


class _ThreadedConnections:
    """
    A thread pool whose threads each keep one connection from C{dialect}.

    Driver exceptions never leave: a failing call closes its thread's
    connection (the next call reconnects) and fails with
    L{DatastoreUnavailable}.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        dialect: Dialect,
        threads: int,
        name: str,
        idempotent: bool = False,
    ) -> None:
        self._reactor = reactor
        self._idempotent = idempotent
        self._dialect = dialect
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[Any] = []

    def start(self) -> None:
        self._pool.start()

    def run(self, fn: Callable[[Any], _T]) -> Deferred[_T]:
        return deferToThreadPool(
            cast(IReactorFromThreads, self._reactor), self._pool, self._call, fn
        )

    def _call(self, fn: Callable[[Any], _T]) -> _T:
        dialect = self._dialect
        conn = getattr(self._local, "conn", None)
        # A kept connection may have died with the server since its last use
        # (a restart): such a call gets one more try on a fresh connection
        # when that is safe (reads, or a write that failed at its BEGIN).
        retry = conn is not None
        while True:
            try:
                if conn is None:
                    conn = dialect.connect()
                    self._local.conn = conn
                    with self._lock:
                        self._connections.append(conn)
                return fn(conn)
            except DatastoreError:
                raise
            except BaseException as e:
                cause = e.__cause__ if isinstance(e, _Reconnect) else e
                assert cause is not None
                if not dialect.is_driver_error(cause):
                    raise
                if conn is not None:
                    self._discard(conn)
                    conn = None
                if retry and (self._idempotent or isinstance(e, _Reconnect)):
                    retry = False
                    continue
                raise DatastoreUnavailable(
                    f"datastore {dialect.description}: {type(cause).__name__}: {str(cause).strip()}"
                ) from None

    def run_unbound(self, fn: Callable[[], _T]) -> Deferred[_T]:
        """Run C{fn} in the pool without a connection (driver errors mapped alike)."""
        return deferToThreadPool(
            cast(IReactorFromThreads, self._reactor), self._pool, self._call_unbound, fn
        )

    def _call_unbound(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except DatastoreError:
            raise
        except BaseException as e:
            if not self._dialect.is_driver_error(e):
                raise
            raise DatastoreUnavailable(
                f"datastore {self._dialect.description}: {type(e).__name__}: {str(e).strip()}"
            ) from None

    def _discard(self, conn: Any) -> None:
        self._local.conn = None
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        self._dialect.close(conn)

    def stop(self) -> None:
        """Blocking: join the threads and close every connection."""
        self._pool.stop()
        with self._lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            self._dialect.close(conn)


# -- the log follower and watches ----------------------------------------------------------


@implementer(IWatch)
class SQLWatch:
    """
    One watch: filters the follower's events to a prefix, holds them while
    paused (up to a bound), and replays history first when it starts in the past.
    """

    _log = Logger()

    def __init__(
        self,
        prefix: str,
        next_revision: int,
        deliver: Callable[[Sequence[Event]], None],
        max_events: int,
        max_bytes: int,
        on_end: Callable[[SQLWatch], None],
    ) -> None:
        self.prefix = prefix
        self.next_revision = next_revision
        self.ended: Deferred[None] = Deferred()
        self._deliver = deliver
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._on_end = on_end
        self._paused = False
        self._buffer: deque[Event] = deque()
        self._buffered_bytes = 0
        self._live_pending: list[Event] = []
        self.catching_up = False
        self.done = False
        self._resumed: Deferred[None] | None = None

    # The follower's side.

    def offer(self, events: Iterable[Event]) -> None:
        if self.done:
            return
        mine = [e for e in events if e.kv.key.startswith(self.prefix)]
        if not mine:
            return
        if self.catching_up:
            self._live_pending.extend(mine)
            self._check_bound(len(self._live_pending) + len(self._buffer), 0)
            return
        self.push(mine)

    def push(self, events: Sequence[Event]) -> None:
        """Deliver C{events} (already filtered, in order) or hold them while paused."""
        events = [e for e in events if e.revision >= self.next_revision]
        if self.done or not events:
            return
        self.next_revision = events[-1].revision + 1
        if self._paused or self._buffer:
            size = sum(len(e.kv.value) + (len(e.prev.value) if e.prev else 0) for e in events)
            self._buffer.extend(events)
            self._buffered_bytes += size
            self._check_bound(len(self._buffer), self._buffered_bytes)
            return
        self._call_deliver(events)

    def finish_catch_up(self) -> None:
        self.catching_up = False
        pending, self._live_pending = self._live_pending, []
        self.push(pending)

    def _check_bound(self, events: int, size: int) -> None:
        if events > self._max_events or size > self._max_bytes:
            self.fail(
                WatchOverflow(
                    f"watch on {self.prefix!r} fell behind by more than "
                    f"{self._max_events} events or {self._max_bytes} bytes"
                )
            )

    def _call_deliver(self, events: Sequence[Event]) -> None:
        try:
            self._deliver(events)
        except Exception:
            self._log.failure("watch consumer for {prefix!r} raised", prefix=self.prefix)

    def wait_resumed(self) -> Deferred[None]:
        if not self._paused:
            return succeed(None)
        if self._resumed is None:
            self._resumed = Deferred()
        return self._resumed

    def fail(self, reason: DatastoreError) -> None:
        if self.done:
            return
        self._end()
        self.ended.errback(reason)

    def _end(self) -> None:
        self.done = True
        self._buffer.clear()
        self._live_pending = []
        self._buffered_bytes = 0
        self._on_end(self)
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def is_done(self) -> bool:
        return self.done

    # IWatch / IPushProducer.

    def cancel(self) -> None:
        if self.done:
            return
        self._end()
        self.ended.callback(None)

    def stopProducing(self) -> None:
        self.cancel()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self.done or not self._paused:
            return
        self._paused = False
        while self._buffer and not self._paused and not self.done:
            batch = list(self._buffer)
            self._buffer.clear()
            self._buffered_bytes = 0
            self._call_deliver(batch)
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not self._paused:
            resumed.callback(None)


class LeaseKeeper:
    """
    Deletes keys written with a TTL once it has passed, like kine: the clock
    starts when this server sees the write.  Fed with every event of the log.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, delete: Callable[[str, int], Deferred[int]]) -> None:
        self._clock = clock
        self._delete = delete
        self._heap: list[tuple[float, int, str]] = []
        self._latest: dict[str, int] = {}
        self._call: IDelayedCall | None = None
        self._running = False
        self._pending: set[Deferred[int]] = set()

    def start(self) -> None:
        self._running = True
        self._reschedule()

    def stop(self) -> None:
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        for d in list(self._pending):
            d.cancel()

    def track(self, key: str, revision: int, ttl: int, delay: float | None = None) -> None:
        """Expire C{key} at C{revision} after C{ttl} seconds (or C{delay})."""
        if revision < self._latest.get(key, 0):
            return
        self._latest[key] = revision
        when = self._clock.seconds() + (ttl if delay is None else delay)
        heapq.heappush(self._heap, (when, revision, key))
        self._reschedule()

    def observe(self, events: Iterable[Event]) -> None:
        for e in events:
            if e.type is EventType.DELETE or not e.kv.lease:
                if e.revision >= self._latest.get(e.kv.key, 0) and e.kv.key in self._latest:
                    del self._latest[e.kv.key]
                continue
            self.track(e.kv.key, e.revision, e.kv.lease)

    def _reschedule(self) -> None:
        if not self._running:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        while self._heap and self._latest.get(self._heap[0][2]) != self._heap[0][1]:
            heapq.heappop(self._heap)
        if self._heap:
            delay = max(0.0, self._heap[0][0] - self._clock.seconds())
            self._call = self._clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._call = None
        now = self._clock.seconds()
        while self._heap and self._heap[0][0] <= now:
            _, revision, key = heapq.heappop(self._heap)
            if self._latest.get(key) != revision:
                continue
            d = self._delete(key, revision)
            self._pending.add(d)
            d.addBoth(self._deleted, key, revision)
        self._reschedule()

    def _deleted(self, result: object, key: str, revision: int) -> None:
        self._pending.difference_update(d for d in list(self._pending) if d.called)
        if not hasattr(result, "check"):
            return
        failure: Any = result
        if failure.check(KeyNotFound, Conflict, CancelledError):
            return
        self._log.warn(
            "could not expire {key} (revision {revision}): {reason}; retrying",
            key=key,
            revision=revision,
            reason=failure.getErrorMessage(),
        )
        if self._running and self._latest.get(key) == revision:
            heapq.heappush(self._heap, (self._clock.seconds() + 1.0, revision, key))
            self._reschedule()


class LogFollower:
    """
    Reads the log in id order and hands each new row to the watches.

    It wakes every C{poll_interval} seconds, or at once when poked after a
    local write.  Events are released strictly in sequence: when an id is
    missing (a transaction still in flight, or one that rolled back) it waits
    C{gap_wait} seconds, then writes a fill row for that id, which either
    succeeds (the id was burned) or fails because the real row landed.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        read: Callable[[int], Deferred[tuple[list[Row], int]]],
        fill: Callable[[int], Deferred[None]],
        poll_interval: float,
        gap_wait: float = 0.2,
    ) -> None:
        self._clock = clock
        self._read = read
        self._fill = fill
        self.poll_interval = poll_interval
        self.gap_wait = gap_wait
        self.position = 0
        #: How many times the log was read (for tests and metrics).
        self.polls = 0
        self.watches: set[SQLWatch] = set()
        self.listeners: list[Callable[[Sequence[Event]], None]] = []
        self.on_compacted: Callable[[int, int], None] | None = None
        self._call: IDelayedCall | None = None
        self._busy = False
        self._again = False
        self._running = False
        self._gap_since: float | None = None
        self._gap_id = 0
        self._failing = False
        self._current: Deferred[None] | None = None

    def start(self, position: int) -> None:
        self.position = position
        self._running = True
        self._schedule(self.poll_interval)

    def stop(self) -> Deferred[None]:
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        current = self._current
        if current is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        current.addBoth(lambda _: done.callback(None))
        return done

    def poke(self) -> None:
        """A local write happened: look now."""
        if not self._running:
            return
        if self._busy:
            self._again = True
            return
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if self._call is not None and self._call.active():
            if delay > 0:
                return
            self._call.cancel()
        self._call = self._clock.callLater(delay, self._poll)

    def _poll(self) -> None:
        self._call = None
        if not self._running or self._busy:
            return
        self.polls += 1
        self._busy = True
        self._again = False
        self._current = Deferred.fromCoroutine(self._poll_once())
        self._current.addBoth(self._polled)

    def _polled(self, result: object) -> None:
        self._busy = False
        self._current = None
        if hasattr(result, "check"):
            failure: Any = result
            if not self._failing:
                self._log.warn(
                    "datastore log follower: {reason}; retrying",
                    reason=failure.getErrorMessage(),
                )
            self._failing = True
            if self._running:
                self._schedule(max(self.poll_interval, 1.0))
            return
        if self._failing:
            self._log.info("datastore log follower recovered at revision {rev}", rev=self.position)
            self._failing = False
        if not self._running:
            return
        if self._again:
            self._schedule(0)
        elif self._gap_since is not None:
            self._schedule(min(self.poll_interval, self.gap_wait / 4))
        else:
            self._schedule(self.poll_interval)

    def _stopped(self) -> bool:
        return not self._running

    async def _poll_once(self) -> None:
        while self._running:
            rows, compacted = await self._read(self.position)
            if self._stopped():
                return
            expected = self.position + 1
            accepted: list[Row] = []
            gap = False
            for row in rows:
                if row.id < expected:
                    continue
                if row.id != expected:
                    gap = True
                    break
                accepted.append(row)
                expected += 1
            if accepted:
                self._release(accepted)
            if gap:
                if compacted > self.position + 1:
                    self._lost_history(compacted)
                    continue
                await self._handle_gap()
                return
            self._gap_since = None
            if len(rows) < 500:
                return

    async def _handle_gap(self) -> None:
        missing = self.position + 1
        now = self._clock.seconds()
        if self._gap_since is None or self._gap_id != missing:
            self._gap_since = now
            self._gap_id = missing
            return
        if now - self._gap_since < self.gap_wait:
            return
        await self._fill(missing)
        self._gap_since = None
        self._again = True

    def _lost_history(self, compacted: int) -> None:
        self._log.warn(
            "datastore log follower fell behind compaction ({position} < {compacted})",
            position=self.position,
            compacted=compacted,
        )
        requested = self.position + 1
        self.position = compacted - 1
        self._gap_since = None
        if self.on_compacted is not None:
            self.on_compacted(requested, compacted)

    def _release(self, rows: list[Row]) -> None:
        self.position = rows[-1].id
        events = [row.event() for row in rows if not row.internal]
        if not events:
            return
        for listener in self.listeners:
            try:
                listener(events)
            except Exception:
                self._log.failure("datastore listener raised")
        for watch in list(self.watches):
            watch.offer(events)


# -- the datastore -----------------------------------------------------------------------------


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

    write_retries = 8
    compact_batch = 1000

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
        self._watch_buffer_events = watch_buffer_events
        self._watch_buffer_bytes = watch_buffer_bytes
        self._compact_interval = compact_interval
        self.policy = compaction_policy or CompactionPolicy()
        self._writer = _ThreadedConnections(
            reactor, dialect, dialect.writer_threads, f"kine-writer-{dialect.name}"
        )
        self._listening = threading.Event()
        self._listener: threading.Thread | None = None
        self._readers = _ThreadedConnections(
            reactor, dialect, dialect.reader_threads, f"kine-reader-{dialect.name}", True
        )
        self.follower = LogFollower(
            reactor, self._read_log, self._fill_gap, dialect.poll_interval, gap_wait
        )
        self.follower.listeners.append(self._observe)
        self.follower.on_compacted = self._follower_compacted
        self.leases = LeaseKeeper(reactor, self._expire)
        self._ready: Deferred[None] | None = None
        self._ready_waiters: list[Deferred[None]] = []
        self._is_ready = False
        self._stopping = False
        self._compactor: task.LoopingCall | None = None
        self._compacting: Deferred[None] | None = None
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
        if self._is_ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        return d

    async def _connect(self) -> None:
        delay = 0.5
        attempt = 0
        while not self._stopping:
            attempt += 1
            try:
                await self._writer.run_unbound(self.dialect.prepare)
                await self._writer.run(self._prepare)
                position = await self._readers.run(self._max_id)
                leased = await self._readers.run(partial(self._leased_keys, revision=position))
                break
            except DatastoreUnavailable as e:
                self._log.warn(
                    "datastore {endpoint} unreachable (attempt {attempt}): {reason}; "
                    "retrying in {delay:.1f}s",
                    endpoint=self.dialect.description,
                    attempt=attempt,
                    reason=str(e),
                    delay=delay,
                )
                await task.deferLater(self._reactor, delay)
                delay = min(delay * 2, 10.0)
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
        if self._compact_interval > 0:
            self._compactor = task.LoopingCall(self._compact_tick)
            self._compactor.clock = self._reactor
            self._compactor.start(self._compact_interval, now=False).addErrback(
                lambda f: self._log.failure("compactor stopped", f)
            )
        self._log.info(
            "datastore {endpoint} ready at revision {rev}",
            endpoint=self.dialect.description,
            rev=position,
        )
        self._is_ready = True
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(None)

    def _connect_failed(self, failure: Any) -> None:
        if not failure.check(CancelledError):
            self._log.failure(
                "datastore {endpoint} could not start", failure, endpoint=self.dialect.description
            )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        self._is_ready = False
        if self._ready is not None and not self._ready.called:
            self._ready.cancel()
            with contextlib.suppress(CancelledError, Exception):
                await self._ready
        if self._compactor is not None and self._compactor.running:
            self._compactor.stop()
        self._compactor = None
        if self._compacting is not None:
            with contextlib.suppress(Exception):
                await self._compacting
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
        if not self._is_ready:
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
        return self._writer.run(lambda conn: self._transaction(conn, fn)).addCallback(self._wake)

    def _transaction(self, conn: Any, fn: Callable[[Any], _T]) -> _T:
        dialect = self.dialect
        for _ in range(self.write_retries):
            try:
                cur = conn.cursor()
                cur.execute(dialect.begin_write)
            except BaseException as e:
                if dialect.is_driver_error(e):
                    raise _Reconnect() from e
                raise
            try:
                result = fn(cur)
            except BaseException as e:
                with contextlib.suppress(BaseException):
                    cur.execute("ROLLBACK")
                if isinstance(e, _Retry) or (
                    dialect.is_driver_error(e)
                    and (dialect.is_unique_violation(e) or dialect.is_retryable(e))
                ):
                    continue
                raise
            if dialect.notify_sql is not None:
                cur.execute(dialect.notify_sql)
            cur.execute("COMMIT")
            return result
        raise DatastoreUnavailable(
            f"datastore {dialect.description}: a write kept conflicting; try again"
        )

    def _q(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur.execute(self.dialect.sql(sql), params)
        return list(cur.fetchall())

    def _n(self, name: str) -> Any:
        return self.dialect.name_param(name)

    # -- schema -------------------------------------------------------------------

    def _prepare(self, conn: Any) -> None:
        cur = conn.cursor()
        for statement in self.dialect.schema:
            cur.execute(statement)
        self._transaction(conn, self._ensure_compact_row)

    def _ensure_compact_row(self, cur: Any) -> None:
        if self._q(cur, "SELECT id FROM kine WHERE name = ?", (self._n(COMPACT_KEY),)):
            return
        self.dialect.insert(
            cur,
            "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, "
            "lease, value, old_value) VALUES (?, 1, 0, 0, 0, 0, ?, ?)",
            (self._n(COMPACT_KEY), b"", b""),
        )

    # -- reads (reader threads) --------------------------------------------------

    def _max_id(self, conn: Any) -> int:
        rows = self._q(conn.cursor(), "SELECT MAX(id) FROM kine")
        return int(rows[0][0] or 0)

    def _compact_rev(self, cur: Any) -> int:
        rows = self._q(
            cur, "SELECT prev_revision FROM kine WHERE name = ?", (self._n(COMPACT_KEY),)
        )
        return int(rows[0][0] or 0) if rows else 0

    def _revisions(self, cur: Any) -> tuple[int, int]:
        rows = self._q(
            cur,
            "SELECT (SELECT MAX(id) FROM kine), "
            "(SELECT MAX(prev_revision) FROM kine WHERE name = ?)",
            (self._n(COMPACT_KEY),),
        )
        return int(rows[0][0] or 0), int(rows[0][1] or 0)

    def _check_revision(self, cur: Any, revision: int) -> int:
        """The revision to read at; raise for compacted or future ones."""
        current, compacted = self._revisions(cur)
        if revision == 0:
            return current
        if revision > current:
            raise FutureRevision(revision, current)
        if revision < compacted:
            raise Compacted(revision, compacted)
        return revision

    def _recheck_compacted(self, cur: Any, revision: int) -> None:
        compacted = self._compact_rev(cur)
        if revision < compacted:
            raise Compacted(revision, compacted)

    def _latest(self, cur: Any, key: str, at: int | None = None) -> Row | None:
        if at is None:
            rows = self._q(
                cur,
                f"SELECT {COLUMNS} FROM kine WHERE name = ? ORDER BY id DESC LIMIT 1",
                (self._n(key),),
            )
        else:
            rows = self._q(
                cur,
                f"SELECT {COLUMNS} FROM kine WHERE name = ? AND id <= ? ORDER BY id DESC LIMIT 1",
                (self._n(key), at),
            )
        return Row.from_db(rows[0]) if rows else None

    def _range(self, prefix: str, after: str | None, revision: int | None) -> tuple[str, list[Any]]:
        """The inner query: the newest row id per name in the range."""
        where = ["name != ?"]
        params: list[Any] = [self._n(COMPACT_KEY)]
        if prefix:
            where.append("name >= ?")
            params.append(self._n(prefix))
            end = prefix_end(prefix)
            if end is not None:
                where.append("name < ?")
                params.append(self._n(end))
        if after is not None:
            where.append("name > ?")
            params.append(self._n(after))
        if revision is not None:
            where.append("id <= ?")
            params.append(revision)
        return (
            "SELECT MAX(id) AS mid FROM kine WHERE " + " AND ".join(where) + " GROUP BY name",
            params,
        )

    def _get(self, conn: Any, key: str, revision: int) -> KeyValue | None:
        cur = conn.cursor()
        if revision == 0:
            row = self._latest(cur, key)
        else:
            at = self._check_revision(cur, revision)
            row = self._latest(cur, key, at)
            self._recheck_compacted(cur, at)
        if row is None or row.deleted or row.internal:
            return None
        return row.kv()

    def _list(
        self, conn: Any, prefix: str, limit: int, after: str | None, revision: int
    ) -> ListResult:
        cur = conn.cursor()
        at = self._check_revision(cur, revision)
        inner, params = self._range(prefix, after, at)
        sql = (
            f"SELECT k.{COLUMNS.replace(', ', ', k.')} FROM kine k JOIN ({inner}) m "
            "ON k.id = m.mid WHERE k.deleted = 0 ORDER BY k.name"
        )
        if limit > 0:
            sql += " LIMIT ?"
            params.append(limit + 1)
        rows = [Row.from_db(r) for r in self._q(cur, sql, params)]
        if revision:
            self._recheck_compacted(cur, at)
        more = limit > 0 and len(rows) > limit
        if more:
            rows = rows[:limit]
        return ListResult([r.kv() for r in rows], at, more)

    def _count(self, conn: Any, prefix: str) -> int:
        inner, params = self._range(prefix, None, None)
        rows = self._q(
            conn.cursor(),
            f"SELECT COUNT(*) FROM kine k JOIN ({inner}) m ON k.id = m.mid WHERE k.deleted = 0",
            params,
        )
        return int(rows[0][0])

    def _leased_keys(self, conn: Any, revision: int) -> list[KeyValue]:
        inner, params = self._range("", None, revision)
        rows = self._q(
            conn.cursor(),
            f"SELECT k.{COLUMNS.replace(', ', ', k.')} FROM kine k JOIN ({inner}) m "
            "ON k.id = m.mid WHERE k.deleted = 0 AND k.lease > 0",
            params,
        )
        return [Row.from_db(r).kv() for r in rows]

    def _history(
        self, conn: Any, prefix: str, first: int, last: int, limit: int
    ) -> tuple[list[Row], int]:
        cur = conn.cursor()
        where = "id >= ? AND id <= ?"
        params: list[Any] = [first, last]
        if prefix:
            where += " AND name >= ?"
            params.append(self._n(prefix))
            end = prefix_end(prefix)
            if end is not None:
                where += " AND name < ?"
                params.append(self._n(end))
        rows = self._q(
            cur, f"SELECT {COLUMNS} FROM kine WHERE {where} ORDER BY id LIMIT ?", [*params, limit]
        )
        return [Row.from_db(r) for r in rows], self._compact_rev(cur)

    def _read_log(self, after: int) -> Deferred[tuple[list[Row], int]]:
        def read(conn: Any) -> tuple[list[Row], int]:
            cur = conn.cursor()
            rows = self._q(
                cur, f"SELECT {COLUMNS} FROM kine WHERE id > ? ORDER BY id LIMIT 500", (after,)
            )
            parsed = [Row.from_db(r) for r in rows]
            compacted = 0
            if parsed and parsed[0].id != after + 1:
                compacted = self._compact_rev(cur)
            return parsed, compacted

        return self._readers.run(read)

    # -- writes (writer thread, inside a transaction) ---------------------------------

    def _insert(
        self,
        cur: Any,
        name: str,
        *,
        created: bool,
        deleted: bool,
        create_revision: int,
        prev_revision: int,
        lease: int,
        value: bytes,
        old_value: bytes,
    ) -> int:
        return self.dialect.insert(
            cur,
            "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, "
            "lease, value, old_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self._n(name),
                int(created),
                int(deleted),
                create_revision,
                prev_revision,
                lease,
                value,
                old_value,
            ),
        )

    def _create(self, cur: Any, key: str, value: bytes, lease: int) -> int:
        latest = self._latest(cur, key)
        if latest is not None and not latest.deleted:
            raise KeyExists(key)
        return self._insert(
            cur,
            key,
            created=True,
            deleted=False,
            create_revision=0,
            prev_revision=latest.id if latest else 0,
            lease=lease,
            value=value,
            old_value=b"",
        )

    def _current_or_raise(self, cur: Any, key: str, expected: int | None) -> Row:
        latest = self._latest(cur, key)
        if latest is None or latest.deleted:
            raise KeyNotFound(key)
        if expected is not None and latest.id != expected:
            raise Conflict(key, expected, latest.kv())
        return latest

    def _update(self, cur: Any, key: str, value: bytes, expected: int, lease: int) -> int:
        latest = self._current_or_raise(cur, key, expected)
        return self._insert(
            cur,
            key,
            created=False,
            deleted=False,
            create_revision=latest.key_create_revision,
            prev_revision=latest.id,
            lease=lease,
            value=value,
            old_value=latest.value,
        )

    def _delete(self, cur: Any, key: str, expected: int | None) -> int:
        latest = self._current_or_raise(cur, key, expected)
        return self._insert(
            cur,
            key,
            created=False,
            deleted=True,
            create_revision=latest.key_create_revision,
            prev_revision=latest.id,
            lease=latest.lease,
            value=latest.value,
            old_value=latest.value,
        )

    def _fill_gap(self, missing: int) -> Deferred[None]:
        def fill(cur: Any) -> None:
            if self._q(cur, "SELECT id FROM kine WHERE id = ?", (missing,)):
                return
            cur.execute(
                self.dialect.sql(
                    "INSERT INTO kine (id, name, created, deleted, create_revision, "
                    "prev_revision, lease, value, old_value) VALUES (?, ?, 0, 1, 0, 0, 0, ?, ?)"
                ),
                (missing, self._n(f"gap-{missing}"), b"", b""),
            )

        def once(conn: Any) -> None:
            try:
                self._transaction_once(conn, fill)
            except BaseException as e:
                if self.dialect.is_driver_error(e) and self.dialect.is_unique_violation(e):
                    return
                raise

        return self._writer.run(once)

    def _transaction_once(self, conn: Any, fn: Callable[[Any], _T]) -> _T:
        try:
            cur = conn.cursor()
            cur.execute(self.dialect.begin_write)
        except BaseException as e:
            if self.dialect.is_driver_error(e):
                raise _Reconnect() from e
            raise
        try:
            result = fn(cur)
        except BaseException:
            with contextlib.suppress(BaseException):
                cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        return result

    def _expire(self, key: str, revision: int) -> Deferred[int]:
        if self._stopping:
            return _failed(CancelledError())
        return self._write(lambda cur: self._delete(cur, key, revision))

    # -- compaction --------------------------------------------------------------------

    def _compact_step(self, cur: Any, target: int) -> int:
        """Compact one batch towards C{target}; return the new compacted revision."""
        old = self._compact_rev(cur)
        if old >= target:
            return old
        end = min(target, old + self.compact_batch)
        cur.execute(
            self.dialect.sql(
                "UPDATE kine SET prev_revision = ? WHERE name = ? AND prev_revision = ?"
            ),
            (end, self._n(COMPACT_KEY), old),
        )
        if cur.rowcount != 1:
            # Another server moved the compacted revision; read it again.
            raise _Retry()
        superseded = self._q(
            cur,
            "SELECT prev_revision FROM kine WHERE name != ? AND prev_revision != 0 "
            "AND id >= ? AND id < ?",
            (self._n(COMPACT_KEY), old, end),
        )
        ids = [int(r[0]) for r in superseded]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            cur.execute(
                self.dialect.sql(
                    "DELETE FROM kine WHERE id IN (" + ", ".join("?" * len(chunk)) + ")"
                ),
                chunk,
            )
        cur.execute(
            self.dialect.sql("DELETE FROM kine WHERE deleted = 1 AND id >= ? AND id < ?"),
            (old, end),
        )
        return end

    async def _compact(self, revision: int) -> None:
        current = await self._readers.run(self._max_id)
        if revision > current:
            raise FutureRevision(revision, current)
        while True:
            reached = await self._write(lambda cur: self._compact_step(cur, revision))
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

    def _compact_tick(self) -> Deferred[None]:
        if self._compacting is not None:
            return succeed(None)
        d = Deferred.fromCoroutine(self._compact_tick_async())

        def done(result: object) -> None:
            self._compacting = None
            if hasattr(result, "check"):
                failure: Any = result
                self._log.warn(
                    "background compaction failed: {reason}", reason=failure.getErrorMessage()
                )

        self._compacting = d
        d.addBoth(done)
        return succeed(None)

    # -- watch machinery ----------------------------------------------------------------

    def _observe(self, events: Sequence[Event]) -> None:
        self.leases.observe(events)

    def _follower_compacted(self, requested: int, compacted: int) -> None:
        for watch in list(self.follower.watches):
            watch.fail(Compacted(requested, compacted))

    async def _watch(
        self, prefix: str, start_revision: int, deliver: Callable[[Sequence[Event]], None]
    ) -> SQLWatch:
        current, compacted = await self._read(lambda conn: self._revisions(conn.cursor()))
        if start_revision and start_revision < compacted:
            raise Compacted(start_revision, compacted)
        start = start_revision or current + 1
        watch = SQLWatch(
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

    async def _catch_up(self, watch: SQLWatch, head: int) -> None:
        page = max(1, min(500, self._watch_buffer_events))
        while not watch.done and watch.next_revision <= head:
            await watch.wait_resumed()
            if watch.is_done():
                return
            first = watch.next_revision
            rows, compacted = await self._readers.run(
                partial(self._history, prefix=watch.prefix, first=first, last=head, limit=page)
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

    def _catch_up_failed(self, failure: Any, watch: SQLWatch) -> None:
        reason = failure.value
        if not isinstance(reason, DatastoreError):
            self._log.failure("watch catch-up failed", failure)
            reason = DatastoreUnavailable(f"watch failed: {failure.getErrorMessage()}")
        watch.fail(reason)

    # -- IDatastore ------------------------------------------------------------------------

    def get(self, key: str, revision: int = 0) -> Deferred[KeyValue | None]:
        return self._read(lambda conn: self._get(conn, key, revision))

    def list(
        self, prefix: str, limit: int = 0, continue_from: str | None = None, revision: int = 0
    ) -> Deferred[ListResult]:
        return self._read(lambda conn: self._list(conn, prefix, limit, continue_from, revision))

    def count(self, prefix: str) -> Deferred[int]:
        return self._read(lambda conn: self._count(conn, prefix))

    def create(self, key: str, value: bytes, lease_ttl: int | None = None) -> Deferred[int]:
        return self._write(lambda cur: self._create(cur, key, value, lease_ttl or 0))

    def update(
        self, key: str, value: bytes, expected_revision: int, lease_ttl: int | None = None
    ) -> Deferred[int]:
        return self._write(
            lambda cur: self._update(cur, key, value, expected_revision, lease_ttl or 0)
        )

    def delete(self, key: str, expected_revision: int | None = None) -> Deferred[int]:
        return self._write(lambda cur: self._delete(cur, key, expected_revision))

    def watch(
        self, prefix: str, start_revision: int, deliver: Callable[[Sequence[Event]], None]
    ) -> Deferred[IWatch]:
        d = Deferred.fromCoroutine(self._watch(prefix, start_revision, deliver))
        return cast(Deferred[IWatch], d)

    def current_revision(self) -> Deferred[int]:
        return self._read(self._max_id)

    def compact(self, revision: int) -> Deferred[None]:
        try:
            self._check_ready()
        except DatastoreUnavailable as e:
            return _failed(e)
        return Deferred.fromCoroutine(self._compact(revision))

    def compacted_revision(self) -> Deferred[int]:
        return self._read(lambda conn: self._compact_rev(conn.cursor()))

    def health(self) -> Deferred[None]:
        return self._read(lambda conn: self._q(conn.cursor(), "SELECT 1")).addCallback(
            lambda _: None
        )


def _failed(exc: BaseException) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(exc)
    return d
