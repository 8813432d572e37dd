"""Parsing and redaction of C{--datastore-endpoint} values."""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import k3stw.datastore
from k3stw.datastore.endpoint import (
    ACCEPTED_FORMS,
    DatastoreTLS,
    EndpointError,
    EtcdEndpoint,
    MySQLEndpoint,
    PostgresEndpoint,
    SQLiteEndpoint,
    datastore_for_endpoint,
    parse_endpoint,
    redact,
)
from k3stw.datastore.mysql import MySQLDatastore
from k3stw.datastore.postgres import PostgresDatastore
from k3stw.datastore.sqlite import SQLiteDatastore

DATA = "/var/lib/rancher/k3s"

GOOD = [
    (None, SQLiteEndpoint("/var/lib/rancher/k3s/server/db/state.db")),
    ("", SQLiteEndpoint("/var/lib/rancher/k3s/server/db/state.db")),
    ("sqlite://", SQLiteEndpoint("/var/lib/rancher/k3s/server/db/state.db")),
    ("sqlite:///srv/k3s/state.db", SQLiteEndpoint("/srv/k3s/state.db")),
    ("postgres://", PostgresEndpoint("localhost", 5432, "postgres", "postgres", "kubernetes")),
    ("postgresql://", PostgresEndpoint("localhost", 5432, "postgres", "postgres", "kubernetes")),
    (
        "postgres://k3s:s3cr%40t@db.example:6432/cluster",
        PostgresEndpoint("db.example", 6432, "k3s", "s3cr@t", "cluster"),
    ),
    ("postgres://k3s@192.0.2.5/", PostgresEndpoint("192.0.2.5", 5432, "k3s", None, "kubernetes")),
    (
        "postgres://u:p@[::1]:5433/db?sslmode=require",
        PostgresEndpoint("::1", 5433, "u", "p", "db", {"sslmode": "require"}),
    ),
    ("mysql://", MySQLEndpoint("root", None, None, 3306, "/var/run/mysqld/mysqld.sock")),
    (
        "mysql://k3s:pw@tcp(192.0.2.7:3307)/cluster",
        MySQLEndpoint("k3s", "pw", "192.0.2.7", 3307, None, "cluster"),
    ),
    ("mysql://k3s:p@ss:w@tcp(db)/x", MySQLEndpoint("k3s", "p@ss:w", "db", 3306, None, "x")),
    (
        "mysql://k3s:pw@tcp([::1]:3306)/",
        MySQLEndpoint("k3s", "pw", "::1", 3306, None, "kubernetes"),
    ),
    (
        "mysql://root@unix(/run/my.sock)/db",
        MySQLEndpoint("root", None, None, 3306, "/run/my.sock", "db"),
    ),
    ("mysql://u:p@/db", MySQLEndpoint("u", "p", "127.0.0.1", 3306, None, "db")),
    (
        "http://127.0.0.1:2379,http://127.0.0.2:2379",
        EtcdEndpoint(("http://127.0.0.1:2379", "http://127.0.0.2:2379"), DatastoreTLS()),
    ),
]

BAD = [
    "localhost:5432",
    "redis://localhost",
    "sqlite://relative/state.db",
    "postgres://u:p@host:notaport/db",
    "postgres://u:p@host/db/extra",
    "mysql://u:p@tcp(host:99999)/db",
    "mysql://u:p@udp(host:3306)/db",
    "mysql://u:p@tcp(host:3306)",
    "http://",
    "http://a:2379,https://b:2379",
]


class ParseEndpointTests(SynchronousTestCase):
    def test_accepted_forms(self) -> None:
        for endpoint, expected in GOOD:
            with self.subTest(endpoint=endpoint):
                self.assertEqual(parse_endpoint(endpoint, DATA), expected)

    def test_malformed_endpoints_name_the_accepted_forms_without_the_password(self) -> None:
        for endpoint in BAD:
            with self.subTest(endpoint=endpoint):
                with self.assertRaises(EndpointError) as caught:
                    parse_endpoint(endpoint, DATA)
                message = str(caught.exception)
                for form in ACCEPTED_FORMS:
                    self.assertIn(form, message)
                self.assertNotIn(":p@", message)

    def test_nats_is_refused_in_one_line_that_says_what_to_use(self) -> None:
        """k3s's kine serves nats://; k3stw has no such backend, and says so."""
        with self.assertRaises(EndpointError) as caught:
            parse_endpoint("nats://u:p@127.0.0.1:4222?bucket=k3s", DATA)
        message = str(caught.exception)
        self.assertEqual(len(message.splitlines()), 1)
        self.assertIn("k3stw has no NATS backend", message)
        self.assertIn("postgres://", message)
        self.assertNotIn(":p@", message)

    def test_tls_flags_reach_the_drivers(self) -> None:
        tls = DatastoreTLS("/ca.pem", "/cert.pem", "/key.pem")
        pg = parse_endpoint("postgres://u:p@h/db", DATA, tls)
        assert isinstance(pg, PostgresEndpoint)
        self.assertEqual(
            dict(pg.params),
            {
                "sslrootcert": "/ca.pem",
                "sslmode": "verify-full",
                "sslcert": "/cert.pem",
                "sslkey": "/key.pem",
            },
        )
        my = parse_endpoint("mysql://u:p@tcp(h:3306)/db", DATA, tls)
        assert isinstance(my, MySQLEndpoint)
        self.assertEqual(dict(my.tls), {"ca": "/ca.pem", "cert": "/cert.pem", "key": "/key.pem"})
        etcd = parse_endpoint("https://h:2379", DATA, tls)
        assert isinstance(etcd, EtcdEndpoint)
        self.assertEqual(etcd.tls, tls)


class RedactTests(SynchronousTestCase):
    def test_redaction(self) -> None:
        cases = [
            ("postgres://user:pass@host/db", "postgres://user:***@host/db"),
            ("postgres://user@host/db", "postgres://user@host/db"),
            ("mysql://k3s:p@ss@tcp(h:3306)/db", "mysql://k3s:***@tcp(h:3306)/db"),
            ("http://a:b@h1:2379,http://h2:2379", "http://a:***@h1:2379,http://h2:2379"),
            ("sqlite:///x/state.db", "sqlite:///x/state.db"),
        ]
        for raw, redacted in cases:
            with self.subTest(raw=raw):
                self.assertEqual(redact(raw), redacted)

    def test_descriptions_in_messages_are_redacted(self) -> None:
        pg = parse_endpoint("postgres://u:hunter2@h:5/db", DATA)
        assert isinstance(pg, PostgresEndpoint)
        self.assertEqual(pg.redacted(), "postgres://u:***@h:5/db")
        my = parse_endpoint("mysql://u:hunter2@tcp(h:5)/db", DATA)
        assert isinstance(my, MySQLEndpoint)
        self.assertEqual(my.redacted(), "mysql://u:***@tcp(h:5)/db")


class DatastoreForEndpointTests(SynchronousTestCase):
    def test_backends(self) -> None:
        clock = Clock()
        self.assertIsInstance(datastore_for_endpoint(clock, None, DATA), SQLiteDatastore)
        self.assertIsInstance(
            datastore_for_endpoint(clock, "postgres://u:p@h/db", DATA), PostgresDatastore
        )
        self.assertIsInstance(
            datastore_for_endpoint(clock, "mysql://u:p@tcp(h)/db", DATA), MySQLDatastore
        )

    def test_etcd_branch_builds_the_etcd_backend(self) -> None:
        from k3stw.datastore.etcd import EtcdDatastore

        self.assertIsInstance(
            datastore_for_endpoint(Clock(), "http://127.0.0.1:2379", DATA), EtcdDatastore
        )


def _datastore_imports() -> dict[str, set[str]]:
    """
    Each module of C{k3stw.datastore} and the modules of it that its code
    imports anywhere (in functions and under C{TYPE_CHECKING} too).
    """
    package = Path(k3stw.datastore.__file__).parent
    paths: dict[str, Path] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    imported.add(submodule if submodule in paths else node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = {module for module in imported if module in paths and module != name}
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for module in graph[todo.pop()] - seen:
            seen.add(module)
            todo.append(module)
    return seen


class ImportDirectionTests(SynchronousTestCase):
    """Imports in the datastore run one way: the endpoint parser above the backends."""

    def test_no_datastore_module_imports_itself_back(self) -> None:
        graph = _datastore_imports()
        self.assertIn("k3stw.datastore.etcd.gateway", graph)
        self.assertEqual(sorted(m for m in graph if m in _reachable(graph, m)), [])

    def test_the_backends_do_not_import_the_endpoint_parser(self) -> None:
        graph = _datastore_imports()
        for backend in ("sqlite", "postgres", "mysql", "etcd", "memory"):
            self.assertNotIn(
                "k3stw.datastore.endpoint", _reachable(graph, f"k3stw.datastore.{backend}")
            )
