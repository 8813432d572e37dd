"""
Blocking access to a few keys, for the one moment a server needs its
datastore before the reactor runs: to share the cluster's CAs between servers
(k3s's bootstrap data).  The SQL backends reuse the kine statements; etcd's
blocking access (L{k3stw.datastore.etcd.EtcdKeys}) lives with its JSON gateway.
"""

from __future__ import annotations

from typing import Protocol

from k3stw.datastore.endpoint import (
    DatastoreTLS,
    EtcdEndpoint,
    PostgresEndpoint,
    SQLiteEndpoint,
    parse_endpoint,
)
from k3stw.datastore.interface import DatastoreUnavailable, KeyExists
from k3stw.datastore.sql import Dialect, KineQueries


class BlockingKeys(Protocol):
    """The keys under a prefix, and creating a key that must not exist yet."""

    description: str

    def list_prefix(self, prefix: str) -> dict[str, bytes]: ...

    def create(self, key: str, value: bytes) -> bool:
        """Create C{key}; False if it already exists."""

    def close(self) -> None: ...


class SQLKeys:
    """The kine table of a PostgreSQL or MySQL database, on one connection."""

    def __init__(self, dialect: Dialect) -> None:
        self.description = dialect.description
        self.dialect = dialect
        dialect.prepare()
        self.queries = KineQueries(dialect)
        self.conn = dialect.connect()
        self.queries.prepare(self.conn)

    def list_prefix(self, prefix: str) -> dict[str, bytes]:
        listed = self.queries.list_keys(self.conn, prefix, 0, None, 0)
        return {kv.key: kv.value for kv in listed.items}

    def create(self, key: str, value: bytes) -> bool:
        try:
            self.queries.transaction(self.conn, lambda cur: self.queries.create(cur, key, value, 0))
        except KeyExists:
            return False
        return True

    def close(self) -> None:
        self.dialect.close(self.conn)


def blocking_keys(
    endpoint: str | None, data_dir: str, tls: DatastoreTLS | None
) -> BlockingKeys | None:
    """
    Blocking access to the datastore of C{--datastore-endpoint}, or None for
    SQLite: a single server's own file has no one to share with.

    :raises DatastoreUnavailable: the datastore cannot be reached.
    """
    parsed = parse_endpoint(endpoint, data_dir, tls)
    if isinstance(parsed, SQLiteEndpoint):
        return None
    if isinstance(parsed, EtcdEndpoint):
        # Each backend is imported when chosen, as the reactor backends are.
        from k3stw.datastore.etcd import EtcdKeys

        return EtcdKeys(parsed)
    dialect: Dialect
    if isinstance(parsed, PostgresEndpoint):
        from k3stw.datastore.postgres import PostgresDialect

        dialect = PostgresDialect(parsed)
    else:
        from k3stw.datastore.mysql import MySQLDialect

        dialect = MySQLDialect(parsed)
    try:
        return SQLKeys(dialect)
    except Exception as e:
        if dialect.is_driver_error(e):
            raise DatastoreUnavailable(f"{parsed.redacted()}: {e}") from e
        raise
