"""
Where a datastore lives: the parsed forms of C{--datastore-endpoint} that the
backends are built from.

This module imports no backend, so every backend may import it; the parser
and the choice of backend (L{k3stw.datastore.endpoint}) sit above both.
Passwords never appear in messages: use L{redact}.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PostgresEndpoint:
    """
    Where a PostgreSQL datastore lives.  C{params} are libpq connection
    parameters from the endpoint's query string (C{sslmode=...}) and the TLS flags.
    """

    host: str = "localhost"
    port: int = 5432
    user: str = "postgres"
    password: str | None = "postgres"
    database: str = "kubernetes"
    params: Mapping[str, str] = field(default_factory=dict)

    def redacted(self) -> str:
        auth = self.user + (":***" if self.password else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgres://{auth}@{host}:{self.port}/{self.database}"

    def connect_args(self, database: str | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": database or self.database,
            "connect_timeout": 5,
            "application_name": "k3stw",
        }
        if self.password is not None:
            args["password"] = self.password
        args.update(self.params)
        return args


DEFAULT_SOCKET = "/var/run/mysqld/mysqld.sock"


@dataclass(frozen=True)
class MySQLEndpoint:
    """
    Where a MySQL/MariaDB datastore lives: C{host}/C{port} over TCP, or
    C{unix_socket}.  C{tls} holds PyMySQL C{ssl} options from the TLS flags.
    """

    user: str = "root"
    password: str | None = None
    host: str | None = None
    port: int = 3306
    unix_socket: str | None = DEFAULT_SOCKET
    database: str = "kubernetes"
    tls: Mapping[str, str] = field(default_factory=dict)

    def redacted(self) -> str:
        auth = self.user + (":***" if self.password else "")
        where = f"unix({self.unix_socket})" if self.unix_socket else f"tcp({self.host}:{self.port})"
        return f"mysql://{auth}@{where}/{self.database}"

    def connect_args(self, with_database: bool = True) -> dict[str, Any]:
        args: dict[str, Any] = {
            "user": self.user,
            "password": self.password or "",
            "charset": "utf8mb4",
            "autocommit": True,
            "binary_prefix": True,
            "connect_timeout": 5,
            "read_timeout": 60,
            "write_timeout": 60,
            "init_command": "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        }
        if self.unix_socket:
            args["unix_socket"] = self.unix_socket
        else:
            args["host"] = self.host or "127.0.0.1"
            args["port"] = self.port
        if with_database:
            args["database"] = self.database
        if self.tls:
            args["ssl"] = dict(self.tls)
        return args


@dataclass(frozen=True)
class DatastoreTLS:
    """The C{--datastore-cafile}, C{--datastore-certfile} and C{--datastore-keyfile} paths."""

    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def __bool__(self) -> bool:
        return bool(self.cafile or self.certfile or self.keyfile)


@dataclass(frozen=True)
class SQLiteEndpoint:
    path: str

    def redacted(self) -> str:
        return f"sqlite://{self.path}"


@dataclass(frozen=True)
class EtcdEndpoint:
    urls: tuple[str, ...]
    tls: DatastoreTLS

    def redacted(self) -> str:
        return ",".join(redact(url) for url in self.urls)


Endpoint = SQLiteEndpoint | PostgresEndpoint | MySQLEndpoint | EtcdEndpoint

_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>.*)@(?P<rest>[^@]*)$")


def redact(endpoint: str) -> str:
    """C{endpoint} with every password replaced by C{***}."""
    return ",".join(_redact_one(part) for part in endpoint.split(","))


def _redact_one(endpoint: str) -> str:
    match = _USERINFO.match(endpoint)
    if match is None:
        return endpoint
    user, colon, _ = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}{':***' if colon else ''}@{match['rest']}"
