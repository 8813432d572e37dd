"""
What differs between SQL databases, and the thread pools that hold their connections.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IReactorFromThreads,
    IReactorTime,
)
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from k3stw.datastore.interface import (
    DatastoreError,
    DatastoreUnavailable,
)

_T = TypeVar("_T")


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


class ConnectionThreads:
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
