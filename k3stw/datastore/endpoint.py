"""
``--datastore-endpoint``: from the k3s string to a datastore backend.

Accepted forms (L{ACCEPTED_FORMS}), as k3s/kine read them:

- no endpoint: embedded SQLite at ``<data-dir>/server/db/state.db``;
- ``sqlite://`` (the same) or ``sqlite:///path/to/state.db``;
- ``postgres://user:pass@host:port/db`` or ``postgresql://...``; missing
  parts take k3s's defaults ``postgres:postgres@localhost:5432/kubernetes``;
- ``mysql://user:pass@tcp(host:port)/db`` (also ``@unix(/path)/db``,
  ``@/db`` = TCP 127.0.0.1:3306); bare ``mysql://`` is root over
  ``/var/run/mysqld/mysqld.sock``, database ``kubernetes``;
- ``http://h1:2379,http://h2:2379`` or ``https://...``: etcd v3.

Passwords never appear in messages: use L{redact}.

Imports run one way: this module imports the backends (each when chosen), and
they import only L{k3stw.datastore.location}, where the parsed forms live.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from twisted.internet.interfaces import IReactorTime

from k3stw.datastore.location import (
    DEFAULT_SOCKET,
    DatastoreTLS,
    Endpoint,
    EtcdEndpoint,
    MySQLEndpoint,
    PostgresEndpoint,
    SQLiteEndpoint,
    redact,
)
from k3stw.datastore.sqlite import default_path

__all__ = [
    "ACCEPTED_FORMS",
    "DatastoreTLS",
    "Endpoint",
    "EndpointError",
    "EtcdEndpoint",
    "MySQLEndpoint",
    "PostgresEndpoint",
    "SQLiteEndpoint",
    "datastore_for_endpoint",
    "parse_endpoint",
    "redact",
]

ACCEPTED_FORMS = (
    "(empty) for embedded SQLite under the data dir",
    "sqlite:///path/to/state.db",
    "postgres://user:pass@host:port/db (or postgresql://...)",
    "mysql://user:pass@tcp(host:port)/db",
    "http(s)://host:2379[,http(s)://host:2379...] for etcd",
)


class EndpointError(ValueError):
    """A C{--datastore-endpoint} that matches none of the accepted forms."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(
            f"invalid --datastore-endpoint {redact(endpoint)!r}: {reason}; accepted forms: "
            + "; ".join(ACCEPTED_FORMS)
        )
        self.endpoint = redact(endpoint)


def parse_endpoint(
    endpoint: str | None, data_dir: str, tls: DatastoreTLS | None = None
) -> Endpoint:
    """
    Parse a C{--datastore-endpoint} value.

    :raises EndpointError: naming the accepted forms, password redacted.
    """
    tls = tls or DatastoreTLS()
    if endpoint is None or not endpoint.strip():
        return SQLiteEndpoint(default_path(data_dir))
    endpoint = endpoint.strip()
    scheme, sep, _ = endpoint.partition("://")
    if not sep:
        raise EndpointError(endpoint, "no scheme")
    scheme = scheme.lower()
    if scheme == "sqlite":
        return _parse_sqlite(endpoint, data_dir)
    if scheme in ("postgres", "postgresql"):
        return _parse_postgres(endpoint, tls)
    if scheme == "mysql":
        return _parse_mysql(endpoint, tls)
    if scheme in ("http", "https"):
        # etcd: validated by the etcd backend, which knows its own URL rules.
        from k3stw.datastore.etcd import parse_etcd_endpoints

        try:
            urls = parse_etcd_endpoints(endpoint)
        except ValueError as e:
            raise EndpointError(endpoint, str(e)) from None
        return EtcdEndpoint(tuple(urls), tls)
    if scheme == "nats":
        raise EndpointError(endpoint, "k3stw has no NATS backend (k3s's kine has one)")
    raise EndpointError(endpoint, f"unknown scheme {scheme!r}")


def _parse_sqlite(endpoint: str, data_dir: str) -> SQLiteEndpoint:
    rest = endpoint.partition("://")[2]
    path = rest.partition("?")[0]
    if not path:
        return SQLiteEndpoint(default_path(data_dir))
    if not path.startswith("/"):
        raise EndpointError(endpoint, "a sqlite path must be absolute (sqlite:///path/state.db)")
    return SQLiteEndpoint(path)


def _parse_postgres(endpoint: str, tls: DatastoreTLS) -> PostgresEndpoint:
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as e:
        raise EndpointError(endpoint, str(e)) from None
    if parts.fragment:
        raise EndpointError(endpoint, "unexpected '#'")
    path = parts.path.lstrip("/")
    if "/" in path:
        raise EndpointError(endpoint, "the path must be just the database name")
    user = unquote(parts.username) if parts.username else "postgres"
    password: str | None
    if parts.password is not None:
        password = unquote(parts.password)
    elif parts.username:
        password = None
    else:
        password = "postgres"
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    if tls.cafile:
        params.setdefault("sslrootcert", tls.cafile)
        params.setdefault("sslmode", "verify-full")
    if tls.certfile:
        params.setdefault("sslcert", tls.certfile)
    if tls.keyfile:
        params.setdefault("sslkey", tls.keyfile)
    return PostgresEndpoint(
        host=parts.hostname or "localhost",
        port=port or 5432,
        user=user,
        password=password,
        database=unquote(path) or "kubernetes",
        params=params,
    )


_MYSQL = re.compile(
    r"^(?:(?P<userinfo>.*)@)?"
    r"(?:(?P<proto>[a-z]+)\((?P<addr>[^)]*)\))?"
    r"/(?P<db>[^/?]*)"
    r"(?:\?(?P<params>.*))?$"
)


def _parse_mysql(endpoint: str, tls: DatastoreTLS) -> MySQLEndpoint:
    rest = endpoint.partition("://")[2]
    tls_args = _mysql_tls(tls)
    if not rest:
        return MySQLEndpoint(tls=tls_args)
    match = _MYSQL.match(rest)
    if match is None:
        raise EndpointError(endpoint, "expected user:pass@tcp(host:port)/db")
    user, password = "root", None
    if match["userinfo"] is not None:
        name, colon, secret = match["userinfo"].partition(":")
        user = name or "root"
        password = secret if colon else None
    database = match["db"] or "kubernetes"
    proto, addr = match["proto"], match["addr"]
    if proto is None:
        return MySQLEndpoint(user, password, "127.0.0.1", 3306, None, database, tls_args)
    if proto == "unix":
        return MySQLEndpoint(user, password, None, 3306, addr or DEFAULT_SOCKET, database, tls_args)
    if proto != "tcp":
        raise EndpointError(endpoint, f"unknown protocol {proto!r} (use tcp(...) or unix(...))")
    host, port = addr, 3306
    hostport = re.match(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:]*))(?::(?P<port>[0-9]+))?$", addr)
    if hostport is None or (hostport["port"] is not None and not 0 < int(hostport["port"]) < 65536):
        raise EndpointError(endpoint, f"bad address {addr!r} in tcp(host:port)")
    host = hostport["v6"] or hostport["host"] or "127.0.0.1"
    if hostport["port"]:
        port = int(hostport["port"])
    return MySQLEndpoint(user, password, host, port, None, database, tls_args)


def _mysql_tls(tls: DatastoreTLS) -> dict[str, str]:
    args: dict[str, str] = {}
    if tls.cafile:
        args["ca"] = tls.cafile
    if tls.certfile:
        args["cert"] = tls.certfile
    if tls.keyfile:
        args["key"] = tls.keyfile
    return args


def datastore_for_endpoint(
    reactor: IReactorTime,
    endpoint: str | None,
    data_dir: str,
    tls: DatastoreTLS | None = None,
    **kwargs: Any,
) -> Any:
    """
    The datastore service for a C{--datastore-endpoint} value (None: SQLite
    under C{data_dir}).  The result provides L{IDatastore} and C{IService}.

    :raises EndpointError: for a malformed endpoint.
    """
    parsed = parse_endpoint(endpoint, data_dir, tls)
    # Each backend is imported when chosen: the database drivers cost start-up
    # time and memory on every server that does not use them.
    if isinstance(parsed, SQLiteEndpoint):
        from k3stw.datastore.sqlite import SQLiteDatastore

        return SQLiteDatastore(reactor, parsed.path, **kwargs)
    if isinstance(parsed, PostgresEndpoint):
        from k3stw.datastore.postgres import PostgresDatastore

        return PostgresDatastore(reactor, parsed, **kwargs)
    if isinstance(parsed, MySQLEndpoint):
        from k3stw.datastore.mysql import MySQLDatastore

        return MySQLDatastore(reactor, parsed, **kwargs)
    # ---- etcd v3 (http:// and https://): the backend in k3stw.datastore.etcd ----
    from k3stw.datastore.etcd import EtcdDatastore, EtcdTLS

    etcd_tls = EtcdTLS(parsed.tls.cafile, parsed.tls.certfile, parsed.tls.keyfile)
    # The options both kinds of backend understand; SQL-only ones do not apply to etcd.
    etcd_kwargs = {
        k: v for k, v in kwargs.items() if k in ("watch_buffer_events", "compact_interval")
    }
    return EtcdDatastore(reactor, list(parsed.urls), etcd_tls, **etcd_kwargs)
