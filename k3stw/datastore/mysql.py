"""
The kine table on an external MySQL or MariaDB server, through PyMySQL in threads.

``--datastore-endpoint mysql://user:pass@tcp(host:port)/db``; see
L{k3stw.datastore.endpoint} for the parsing and k3s's defaults.  Key names
are stored as C{VARBINARY} (their UTF-8 bytes), so ordering and uniqueness
are byte-wise like on SQLite and PostgreSQL with C{COLLATE "C"}, and no
collation can fold two different keys into one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pymysql
from twisted.internet.interfaces import IReactorTime

from k3stw.datastore.location import MySQLEndpoint
from k3stw.datastore.sql import Dialect, SQLDatastore

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS kine (
        id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
        name VARBINARY(1024) NOT NULL,
        created INTEGER,
        deleted INTEGER,
        create_revision BIGINT UNSIGNED,
        prev_revision BIGINT UNSIGNED,
        lease INTEGER,
        value MEDIUMBLOB,
        old_value MEDIUMBLOB,
        INDEX kine_name_index (name),
        INDEX kine_name_id_index (name, id),
        INDEX kine_id_deleted_index (id, deleted),
        INDEX kine_prev_revision_index (prev_revision),
        UNIQUE INDEX kine_name_prev_revision_uindex (name, prev_revision)
    ) ENGINE=InnoDB""",
)

_DUPLICATE_ENTRY = 1062
_UNKNOWN_DATABASE = 1049
_LOCK_WAIT_TIMEOUT = 1205
_DEADLOCK = 1213


class MySQLDialect(Dialect):
    """MySQL/MariaDB through PyMySQL (autocommit connections, explicit transactions)."""

    name: ClassVar[str] = "mysql"
    paramstyle: ClassVar[str] = "format"
    schema: ClassVar[Sequence[str]] = _SCHEMA
    poll_interval: ClassVar[float] = 0.1
    writer_threads: ClassVar[int] = 4

    def __init__(self, endpoint: MySQLEndpoint) -> None:
        super().__init__(endpoint.redacted(), endpoint.redacted())
        self.endpoint = endpoint

    def name_param(self, name: str) -> Any:
        return name.encode("utf-8")

    def prepare(self) -> None:
        try:
            pymysql.connect(**self.endpoint.connect_args()).close()
            return
        except pymysql.err.OperationalError as e:
            if not e.args or e.args[0] != _UNKNOWN_DATABASE:
                raise
        conn = pymysql.connect(**self.endpoint.connect_args(with_database=False))
        try:
            name = self.endpoint.database.replace("`", "``")
            conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{name}`")
        finally:
            conn.close()

    def connect(self) -> Any:
        return pymysql.connect(**self.endpoint.connect_args())

    def is_driver_error(self, exc: BaseException) -> bool:
        return isinstance(exc, pymysql.err.MySQLError)

    def is_unique_violation(self, exc: BaseException) -> bool:
        return (
            isinstance(exc, pymysql.err.IntegrityError)
            and bool(exc.args)
            and exc.args[0] == _DUPLICATE_ENTRY
        )

    def is_retryable(self, exc: BaseException) -> bool:
        return (
            isinstance(exc, pymysql.err.OperationalError)
            and bool(exc.args)
            and exc.args[0] in (_DEADLOCK, _LOCK_WAIT_TIMEOUT)
        )


class MySQLDatastore(SQLDatastore):
    """The kine log in the MySQL/MariaDB database at C{endpoint}."""

    def __init__(self, reactor: IReactorTime, endpoint: MySQLEndpoint, **kwargs: Any) -> None:
        super().__init__(reactor, MySQLDialect(endpoint), **kwargs)
        self.endpoint = endpoint
