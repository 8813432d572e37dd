"""
The embedded default datastore: the kine table in a SQLite file.

k3s keeps it at ``<data-dir>/server/db/state.db``.  The file is in WAL mode,
so readers never wait for the writer; there is one writer thread.  With WAL,
``synchronous=NORMAL`` writes every committed transaction to the WAL file
before the commit returns, so an acknowledged write survives ``kill -9`` of
the process (a power cut may lose the last transactions, never consistency);
pass ``synchronous="FULL"`` to fsync on every commit as well.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, ClassVar

from twisted.internet.interfaces import IReactorTime

from k3stw.datastore.sql import Dialect, SQLDatastore

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS kine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        created INTEGER,
        deleted INTEGER,
        create_revision INTEGER,
        prev_revision INTEGER,
        lease INTEGER,
        value BLOB,
        old_value BLOB
    )""",
    "CREATE INDEX IF NOT EXISTS kine_name_index ON kine (name)",
    "CREATE INDEX IF NOT EXISTS kine_name_id_index ON kine (name, id)",
    "CREATE INDEX IF NOT EXISTS kine_id_deleted_index ON kine (id, deleted)",
    "CREATE INDEX IF NOT EXISTS kine_prev_revision_index ON kine (prev_revision)",
    "CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex"
    " ON kine (name, prev_revision)",
)


def default_path(data_dir: str) -> str:
    """Where k3s keeps the embedded database under C{data_dir}."""
    return os.path.join(data_dir, "server", "db", "state.db")


class SQLiteDialect(Dialect):
    """SQLite through the standard library's C{sqlite3}."""

    name: ClassVar[str] = "sqlite"
    paramstyle: ClassVar[str] = "qmark"
    # Take the write lock at BEGIN: another process on the same file then
    # waits (busy timeout) instead of failing at its first write.
    begin_write: ClassVar[str] = "BEGIN IMMEDIATE"
    schema = _SCHEMA
    # Local writes wake watchers at once; polling only finds other processes' writes.
    poll_interval: ClassVar[float] = 1.0

    def __init__(self, path: str, synchronous: str = "NORMAL", busy_timeout: float = 30.0) -> None:
        real = os.path.realpath(path)
        super().__init__(f"sqlite://{path}", f"sqlite:{real}")
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = path
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout

    def prepare(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def connect(self) -> Any:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return conn

    def is_driver_error(self, exc: BaseException) -> bool:
        # OSError: the directory cannot be created (permissions, read-only disk).
        return isinstance(exc, sqlite3.Error | OSError)

    def is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


class SQLiteDatastore(SQLDatastore):
    """
    The embedded datastore in the SQLite file at C{path}.

    :param reactor: provides L{IReactorTime} and the thread interfaces.
    """

    def __init__(
        self, reactor: IReactorTime, path: str, *, synchronous: str = "NORMAL", **kwargs: Any
    ) -> None:
        super().__init__(reactor, SQLiteDialect(path, synchronous), **kwargs)
        self.path = path
