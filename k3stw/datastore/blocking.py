"""
Blocking access to a few keys, for the one moment a server needs its
datastore before the reactor runs: to share the cluster's CAs between servers
(k3s's bootstrap data).  The SQL backends reuse the kine statements; etcd is
reached through the same JSON gateway the reactor backend uses.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from typing import Any, Protocol

from k3stw.datastore.endpoint import (
    DatastoreTLS,
    EtcdEndpoint,
    MySQLEndpoint,
    PostgresEndpoint,
    SQLiteEndpoint,
    parse_endpoint,
)
from k3stw.datastore.interface import DatastoreUnavailable, KeyExists
from k3stw.datastore.sql import Dialect, KineQueries, prefix_end


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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class EtcdKeys:
    """etcd v3 through its JSON gateway (``/v3/kv/range``, ``/v3/kv/txn``)."""

    def __init__(self, endpoint: EtcdEndpoint, timeout: float = 10.0) -> None:
        self.urls = list(endpoint.urls)
        self.description = ",".join(self.urls)
        self.timeout = timeout
        tls = endpoint.tls
        self.context: ssl.SSLContext | None = None
        if any(url.startswith("https://") for url in self.urls):
            self.context = ssl.create_default_context(cafile=tls.cafile)
            if tls.certfile and tls.keyfile:
                self.context.load_cert_chain(tls.certfile, tls.keyfile)
        # Reachable now, or DatastoreUnavailable, as the SQL backends connect at once.
        self._call("/v3/kv/range", {"key": _b64(b"\0"), "count_only": True})

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        errors: list[str] = []
        for url in self.urls:
            request = urllib.request.Request(
                url.rstrip("/") + path,
                json.dumps(body).encode(),
                {"content-type": "application/json"},
            )
            try:
                with urllib.request.urlopen(
                    request, timeout=self.timeout, context=self.context
                ) as answer:
                    document: dict[str, Any] = json.load(answer)
                    return document
            except (OSError, ValueError) as e:
                errors.append(f"{url}: {e}")
        raise DatastoreUnavailable("; ".join(errors))

    def list_prefix(self, prefix: str) -> dict[str, bytes]:
        end = prefix_end(prefix) or "\0"
        answer = self._call(
            "/v3/kv/range", {"key": _b64(prefix.encode()), "range_end": _b64(end.encode())}
        )
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
            for kv in answer.get("kvs", [])
        }

    def create(self, key: str, value: bytes) -> bool:
        encoded = _b64(key.encode())
        answer = self._call(
            "/v3/kv/txn",
            {
                "compare": [
                    {"key": encoded, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
                ],
                "success": [{"request_put": {"key": encoded, "value": _b64(value)}}],
            },
        )
        return bool(answer.get("succeeded"))

    def close(self) -> None:
        pass


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
    try:
        if isinstance(parsed, PostgresEndpoint):
            from k3stw.datastore.postgres import PostgresDialect

            return SQLKeys(PostgresDialect(parsed))
        if isinstance(parsed, MySQLEndpoint):
            from k3stw.datastore.mysql import MySQLDialect

            return SQLKeys(MySQLDialect(parsed))
    except DatastoreUnavailable:
        raise
    except Exception as e:
        raise DatastoreUnavailable(f"{parsed.redacted()}: {e}") from e
    return EtcdKeys(parsed)
