"""
The kine table on an external PostgreSQL server, through psycopg 3 in threads.

``--datastore-endpoint postgres://user:pass@host:port/db`` (or ``postgresql://``);
see L{k3stw.datastore.endpoint} for the parsing and k3s's defaults.  The
database is created on first use if it is missing, then the table.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import psycopg
from psycopg import errors, sql
from twisted.internet.interfaces import IReactorTime

from k3stw.datastore.location import PostgresEndpoint
from k3stw.datastore.sql import Dialect, SQLDatastore

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS kine (
        id BIGSERIAL PRIMARY KEY,
        name TEXT COLLATE "C" NOT NULL,
        created INTEGER,
        deleted INTEGER,
        create_revision BIGINT,
        prev_revision BIGINT,
        lease INTEGER,
        value BYTEA,
        old_value BYTEA
    )""",
    "CREATE INDEX IF NOT EXISTS kine_name_index ON kine (name)",
    "CREATE INDEX IF NOT EXISTS kine_name_id_index ON kine (name, id)",
    "CREATE INDEX IF NOT EXISTS kine_id_deleted_index ON kine (id, deleted)",
    "CREATE INDEX IF NOT EXISTS kine_prev_revision_index ON kine (prev_revision)",
    "CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex"
    " ON kine (name, prev_revision)",
    "CREATE INDEX IF NOT EXISTS kine_list_query_index ON kine (name, id DESC, deleted)",
)


class PostgresDialect(Dialect):
    """PostgreSQL through psycopg 3 (autocommit connections, explicit transactions)."""

    name: ClassVar[str] = "postgres"
    paramstyle: ClassVar[str] = "format"
    schema: ClassVar[Sequence[str]] = _SCHEMA
    # LISTEN/NOTIFY wakes followers at once; the poll is the fallback.
    poll_interval: ClassVar[float] = 0.2
    writer_threads: ClassVar[int] = 4
    notify_sql: ClassVar[str | None] = "NOTIFY kine"

    def __init__(self, endpoint: PostgresEndpoint) -> None:
        super().__init__(endpoint.redacted(), endpoint.redacted())
        self.endpoint = endpoint

    def _open(self, database: str | None = None) -> psycopg.Connection[Any]:
        return psycopg.connect(autocommit=True, **self.endpoint.connect_args(database))

    def prepare(self) -> None:
        try:
            self._open().close()
            return
        except psycopg.OperationalError as e:
            # libpq reports a missing database only in the message text.
            if not isinstance(e, errors.InvalidCatalogName) and "does not exist" not in str(e):
                raise
        # Another server may create it at the same moment.
        with self._open("postgres") as admin, contextlib.suppress(errors.DuplicateDatabase):
            admin.execute(
                sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.endpoint.database))
            )

    def connect(self) -> Any:
        return self._open()

    def listen(self, stopping: threading.Event, notified: Callable[[], None]) -> None:
        while not stopping.is_set():
            try:
                with self._open() as conn:
                    conn.execute("LISTEN kine")
                    # Whatever was committed while (re)connecting.
                    notified()
                    while not stopping.is_set():
                        for _ in conn.notifies(timeout=0.1):
                            notified()
            except psycopg.Error:
                # The poll covers the outage; try to listen again shortly.
                stopping.wait(1.0)

    def insert(self, cursor: Any, sql_text: str, params: Sequence[Any]) -> int:
        cursor.execute(self.sql(sql_text + " RETURNING id"), params)
        return int(cursor.fetchone()[0])

    def is_driver_error(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.Error)

    def is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, errors.UniqueViolation)

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, errors.SerializationFailure | errors.DeadlockDetected)


class PostgresDatastore(SQLDatastore):
    """The kine log in the PostgreSQL database at C{endpoint}."""

    def __init__(self, reactor: IReactorTime, endpoint: PostgresEndpoint, **kwargs: Any) -> None:
        super().__init__(reactor, PostgresDialect(endpoint), **kwargs)
        self.endpoint = endpoint
