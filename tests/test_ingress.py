"""
The Ingress controller: route matching and backend selection from plain
informer state (pure, milliseconds), the node controller's lookups from its
informers on a fake API, SNI on an in-memory TLS handshake, the proxy itself
on loopback (keep-alive, forwarded headers, 404/503/502, a websocket-style
upgrade spliced both ways), and the server's half: the ``traefik``
IngressClass, the DefaultIngressClass admission and the Ingress status.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import io
import socket
from typing import Any

from OpenSSL import SSL
from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from k3stw.controllers import ingress as server_ingress
from k3stw.machinery.objects import Object
from k3stw.network.ingress import IngressController, ServerNameContexts, _context
from k3stw.network.ingressproxy import IngressMetrics, IngressProxy
from k3stw.network.ingressroutes import (
    Backend,
    RoundRobin,
    Route,
    RouteTable,
    endpoints_of,
    is_ours,
    our_classes,
)
from k3stw.pki.certs import new_ca
from tests.support.apiserver import MemoryServer
from tests.support.fakes import FakeKubeClient
from tests.test_servicelb import node_object

reactor: Any = _reactor


def path(kind: str, at: str, service: str, port: int | str = 80) -> Object:
    key = "number" if isinstance(port, int) else "name"
    return {
        "path": at,
        "pathType": kind,
        "backend": {"service": {"name": service, "port": {key: port}}},
    }


def ingress(
    name: str,
    rules: list[Object],
    namespace: str = "default",
    created: str = "2026-01-01T00:00:00Z",
    **spec: Any,
) -> Object:
    return {
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": {"rules": rules, **spec},
    }


def rule(host: str | None, *paths: Object) -> Object:
    found: Object = {"http": {"paths": list(paths)}}
    if host is not None:
        found["host"] = host
    return found


def service_of(route: Route | None) -> str | None:
    return route.backend.service if route else None


class RouteMatchingTests(SynchronousTestCase):
    def table(self, *ingresses: Object) -> RouteTable:
        return RouteTable.of(ingresses)

    def test_prefix_matches_element_by_element(self) -> None:
        table = self.table(ingress("a", [rule(None, path("Prefix", "/foo", "foo"))]))
        for matching in ("/foo", "/foo/", "/foo/bar", "/foo?x=1"):
            self.assertEqual(service_of(table.match("any", matching)), "foo", matching)
        for other in ("/foobar", "/fo", "/", "/bar/foo"):
            self.assertIsNone(table.match("any", other), other)

    def test_a_prefix_trailing_slash_is_ignored_and_root_matches_all(self) -> None:
        table = self.table(
            ingress("a", [rule(None, path("Prefix", "/foo/", "foo"), path("Prefix", "/", "root"))])
        )
        self.assertEqual(service_of(table.match("h", "/foo")), "foo")
        self.assertEqual(service_of(table.match("h", "/anything/at/all")), "root")

    def test_exact_matches_only_the_path(self) -> None:
        table = self.table(ingress("a", [rule(None, path("Exact", "/foo", "foo"))]))
        self.assertEqual(service_of(table.match("h", "/foo")), "foo")
        self.assertIsNone(table.match("h", "/foo/"))
        self.assertIsNone(table.match("h", "/foo/bar"))

    def test_implementation_specific_is_a_prefix(self) -> None:
        table = self.table(ingress("a", [rule(None, path("ImplementationSpecific", "/a", "a"))]))
        self.assertEqual(service_of(table.match("h", "/a/b")), "a")
        self.assertIsNone(table.match("h", "/ab"))

    def test_longest_match_wins_and_exact_beats_prefix_of_the_same_length(self) -> None:
        table = self.table(
            ingress(
                "a",
                [
                    rule(
                        None,
                        path("Prefix", "/", "root"),
                        path("Prefix", "/api", "api"),
                        path("Prefix", "/api/v2", "v2"),
                        path("Prefix", "/exact", "prefix"),
                        path("Exact", "/exact", "exact"),
                    )
                ],
            )
        )
        self.assertEqual(service_of(table.match("h", "/api/v2/x")), "v2")
        self.assertEqual(service_of(table.match("h", "/api/v1")), "api")
        self.assertEqual(service_of(table.match("h", "/exact")), "exact")
        self.assertEqual(service_of(table.match("h", "/exact/more")), "prefix")

    def test_exact_host_then_wildcard_then_any_host(self) -> None:
        table = self.table(
            ingress(
                "a",
                [
                    rule("www.example.com", path("Prefix", "/", "www")),
                    rule("*.example.com", path("Prefix", "/", "wild")),
                    rule(None, path("Prefix", "/", "fallback")),
                ],
            )
        )
        self.assertEqual(service_of(table.match("www.example.com", "/")), "www")
        self.assertEqual(service_of(table.match("WWW.Example.com:8080", "/")), "www")
        self.assertEqual(service_of(table.match("api.example.com", "/")), "wild")
        # A wildcard covers one label only, and not the bare domain.
        self.assertEqual(service_of(table.match("a.b.example.com", "/")), "fallback")
        self.assertEqual(service_of(table.match("example.com", "/")), "fallback")

    def test_a_host_rule_without_a_matching_path_falls_to_host_less_rules(self) -> None:
        table = self.table(
            ingress(
                "a",
                [rule("x.test", path("Exact", "/x", "x")), rule(None, path("Prefix", "/", "any"))],
            )
        )
        self.assertEqual(service_of(table.match("x.test", "/y")), "any")

    def test_the_default_backend_answers_what_no_rule_matches(self) -> None:
        backend = {"service": {"name": "fallback", "port": {"number": 8080}}}
        table = self.table(
            ingress("a", [rule("x.test", path("Prefix", "/", "x"))], defaultBackend=backend)
        )
        self.assertEqual(
            table.match("other", "/"), Route("default/a", Backend("default", "fallback", 8080))
        )
        self.assertIsNone(
            self.table(ingress("b", [rule("x.test", path("Prefix", "/", "x"))])).match("y", "/")
        )

    def test_of_two_ingresses_with_the_same_path_the_older_wins(self) -> None:
        newer = ingress(
            "new", [rule("h", path("Prefix", "/", "new"))], created="2026-02-01T00:00:00Z"
        )
        older = ingress(
            "old", [rule("h", path("Prefix", "/", "old"))], created="2026-01-01T00:00:00Z"
        )
        self.assertEqual(service_of(self.table(newer, older).match("h", "/")), "old")

    def test_tls_secrets_by_sni_name(self) -> None:
        table = self.table(
            ingress(
                "a",
                [],
                namespace="web",
                tls=[
                    {"hosts": ["a.test"], "secretName": "a-cert"},
                    {"hosts": ["*.wild.test"], "secretName": "wild-cert"},
                ],
            )
        )
        self.assertEqual(table.certificate("A.test"), "web/a-cert")
        self.assertEqual(table.certificate("x.wild.test"), "web/wild-cert")
        self.assertIsNone(table.certificate("b.test"))

    def test_which_ingresses_are_ours(self) -> None:
        classes = our_classes(
            [
                {
                    "metadata": {"name": "traefik"},
                    "spec": {"controller": "traefik.io/ingress-controller"},
                },
                {"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}},
            ]
        )
        self.assertEqual(classes, frozenset({"traefik"}))
        self.assertTrue(is_ours(ingress("a", [], ingressClassName="traefik"), classes))
        self.assertFalse(is_ours(ingress("a", [], ingressClassName="nginx"), classes))
        self.assertTrue(is_ours(ingress("a", []), classes))
        annotated = ingress("a", [])
        annotated["metadata"]["annotations"] = {"kubernetes.io/ingress.class": "nginx"}
        self.assertFalse(is_ours(annotated, classes))


def service(name: str, *ports: Object, namespace: str = "default", **spec: Any) -> Object:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": list(ports), **spec},
    }


def endpoint_slice(
    name: str, service_name: str, ports: list[Object], *endpoints: tuple[str, bool | None]
) -> Object:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "ports": ports,
        "endpoints": [
            {"addresses": [ip], "conditions": {} if ready is None else {"ready": ready}}
            for ip, ready in endpoints
        ],
    }


class BackendSelectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.services = {
            "default/web": service(
                "web",
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "admin", "port": 81},
            ),
            "default/gone": service("gone", {"port": 80}, type="ExternalName"),
        }
        self.slices = [
            endpoint_slice(
                "web-a",
                "web",
                [{"name": "http", "port": 8080}, {"name": "admin", "port": 9000}],
                ("10.42.0.5", True),
                ("10.42.0.6", None),
                ("10.42.0.7", False),
            ),
            endpoint_slice("web-b", "web", [{"name": "http", "port": 8080}], ("10.42.1.5", True)),
        ]

    def endpoints(self, backend: Backend) -> list[tuple[str, int]] | None:
        return endpoints_of(backend, self.services.get, lambda ns, name: self.slices)

    def test_ready_endpoints_of_the_named_or_numbered_port(self) -> None:
        expected = [("10.42.0.5", 8080), ("10.42.0.6", 8080), ("10.42.1.5", 8080)]
        self.assertEqual(self.endpoints(Backend("default", "web", 80)), expected)
        self.assertEqual(self.endpoints(Backend("default", "web", "http")), expected)
        self.assertEqual(
            self.endpoints(Backend("default", "web", "admin")),
            [("10.42.0.5", 9000), ("10.42.0.6", 9000)],
        )

    def test_a_missing_service_or_port_is_none_and_no_ready_endpoint_empty(self) -> None:
        self.assertIsNone(self.endpoints(Backend("default", "nope", 80)))
        self.assertIsNone(self.endpoints(Backend("default", "web", 8080)))
        self.assertIsNone(self.endpoints(Backend("default", "gone", 80)))
        self.slices = []
        self.assertEqual(self.endpoints(Backend("default", "web", 80)), [])

    def test_round_robin_takes_turns_and_keeps_its_turn_when_endpoints_change(self) -> None:
        balance, backend = RoundRobin(), Backend("default", "web", 80)
        a, b, c = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)
        self.assertEqual([balance.pick(backend, [a, b]) for _ in range(4)], [a, b, a, b])
        # The turn goes on (the fifth pick), not back to the first endpoint.
        self.assertEqual([balance.pick(backend, [a, b, c]) for _ in range(3)], [b, c, a])


class NodeControllerTests(SynchronousTestCase):
    """The node's controller over its informers on a fake API, no port opened."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeKubeClient(self.clock)
        put = self.client.put_object
        put(
            "/apis/networking.k8s.io/v1/ingressclasses/traefik",
            server_ingress.ingress_class(),
        )
        put("/api/v1/namespaces/default/services/web", service("web", {"port": 80}))
        put(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-a",
            endpoint_slice("web-a", "web", [{"port": 8080}], ("10.42.0.5", True)),
        )
        put(
            "/apis/networking.k8s.io/v1/namespaces/default/ingresses/site",
            ingress(
                "site", [rule("site.test", path("Prefix", "/", "web"))], ingressClassName="traefik"
            ),
        )
        self.controller = IngressController(self.clock, self.client, ())
        self.controller.startService()
        self.addCleanup(self.controller.stopService)

    def test_a_request_finds_its_backend_endpoints(self) -> None:
        found = self.controller.lookup("site.test", "/index.html")
        assert found is not None
        self.assertEqual(found[1], [("10.42.0.5", 8080)])
        self.assertIsNone(self.controller.lookup("other.test", "/"))

    def test_changes_apply_without_a_reload(self) -> None:
        self.controller.lookup("site.test", "/")
        self.client.put_object(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-a",
            endpoint_slice("web-a", "web", [{"port": 8080}], ("10.42.0.9", True)),
        )
        found = self.controller.lookup("site.test", "/")
        assert found is not None
        self.assertEqual(found[1], [("10.42.0.9", 8080)])
        self.client.put_object(
            "/apis/networking.k8s.io/v1/namespaces/default/ingresses/site",
            ingress("site", [rule("new.test", path("Prefix", "/", "web"))]),
        )
        self.assertIsNone(self.controller.lookup("site.test", "/"))
        self.assertIsNotNone(self.controller.lookup("new.test", "/"))

    def test_an_ingress_of_another_class_is_not_served(self) -> None:
        self.client.put_object(
            "/apis/networking.k8s.io/v1/namespaces/default/ingresses/site",
            ingress(
                "site", [rule("site.test", path("Prefix", "/", "web"))], ingressClassName="nginx"
            ),
        )
        self.assertIsNone(self.controller.lookup("site.test", "/"))

    def test_the_tls_context_comes_from_the_secret_and_follows_it(self) -> None:
        self.client.put_object(
            "/apis/networking.k8s.io/v1/namespaces/default/ingresses/site",
            ingress(
                "site",
                [rule("site.test", path("Prefix", "/", "web"))],
                tls=[{"hosts": ["site.test"], "secretName": "site-tls"}],
            ),
        )
        self.assertIsNone(self.controller.context_for("site.test"))
        self.client.put_object(
            "/api/v1/namespaces/default/secrets/site-tls", tls_secret("site-tls", "site.test")
        )
        first = self.controller.context_for("site.test")
        self.assertIsNotNone(first)
        self.assertIs(self.controller.context_for("site.test"), first)
        self.client.put_object(
            "/api/v1/namespaces/default/secrets/site-tls", tls_secret("site-tls", "site.test")
        )
        self.assertIsNot(self.controller.context_for("site.test"), first)


def tls_secret(name: str, common_name: str) -> Object:
    pair = new_ca(common_name, datetime.datetime.now(datetime.UTC))
    return {
        "metadata": {"name": name, "namespace": "default"},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(pair.certificate_pem).decode(),
            "tls.key": base64.b64encode(pair.key_pem).decode(),
        },
    }


def handshake(server_context: SSL.Context, server_name: bytes | None) -> str:
    """An in-memory TLS handshake; the common name of the certificate the server showed."""
    server = SSL.Connection(server_context, None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    if server_name:
        client.set_tlsext_host_name(server_name)
    for _ in range(10):
        for one, other in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                one.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                other.bio_write(one.bio_read(65536))
    certificate = client.get_peer_certificate()
    assert certificate is not None
    return str(certificate.get_subject().CN)


class ServerNameTests(SynchronousTestCase):
    def test_sni_picks_the_certificate_and_others_get_the_default(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        default, named = new_ca("DEFAULT", now), new_ca("site.test", now)
        named_context = _context(named.certificate_pem, named.key_pem)
        contexts = ServerNameContexts(
            _context(default.certificate_pem, default.key_pem),
            lambda name: named_context if name == "site.test" else None,
        )
        # A context factory twisted.internet.ssl takes without a legacy warning.
        self.assertTrue(verifyObject(IOpenSSLContextFactory, contexts))
        self.assertEqual(handshake(contexts.getContext(), b"site.test"), "site.test")
        self.assertEqual(handshake(contexts.getContext(), b"other.test"), "DEFAULT")
        self.assertEqual(handshake(contexts.getContext(), None), "DEFAULT")


class _Echo(Resource):
    """A backend: says which connection (client port) and headers it saw."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        if request.uri.startswith(b"/big?"):
            return b"x" * int(request.uri[5:])
        if request.method == b"POST":
            return b"received=%d" % len(request.content.read())
        peer = request.getClientAddress()
        lines = [f"port={peer.port}", f"path={request.uri.decode()}"]
        for name in (
            b"x-forwarded-for",
            b"x-forwarded-proto",
            b"x-forwarded-host",
            b"x-forwarded-port",
            b"host",
        ):
            lines.append(f"{name.decode()}={(request.getHeader(name) or b'').decode()}")
        return "\n".join(lines).encode()


class _UpgradeEcho(Protocol):
    """A websocket-style backend: answers 101 to the head, then echoes every byte."""

    upgraded = False

    def dataReceived(self, data: bytes) -> None:
        if not self.upgraded:
            head, _, rest = data.partition(b"\r\n\r\n")
            self.upgraded = True
            assert b"upgrade: websocket" in head.lower()
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            )
            data = rest
        if data and self.transport is not None:
            self.transport.write(data)


class ProxyOnLoopbackTests(TestCase):
    """The proxy for real, on 127.0.0.1, in front of real twisted.web and raw backends."""

    def setUp(self) -> None:
        backend = reactor.listenTCP(0, Site(_Echo()), interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        upgrade = reactor.listenTCP(0, Factory.forProtocol(_UpgradeEcho), interface="127.0.0.1")
        self.addCleanup(upgrade.stopListening)
        self.routes: dict[str, tuple[Route, list[tuple[str, int]] | None]] = {
            "web": (
                Route("default/web", Backend("default", "web", 80)),
                [("127.0.0.1", backend.getHost().port)],
            ),
            "ws": (
                Route("default/ws", Backend("default", "ws", 80)),
                [("127.0.0.1", upgrade.getHost().port)],
            ),
            "empty": (Route("default/empty", Backend("default", "empty", 80)), []),
            "dead": (Route("default/dead", Backend("default", "dead", 80)), [("127.0.0.1", 1)]),
            "retry": (
                Route("default/retry", Backend("default", "retry", 80)),
                [("127.0.0.1", 1), ("127.0.0.1", backend.getHost().port)],
            ),
        }
        self.metrics = IngressMetrics()
        self.proxy = IngressProxy(
            reactor,
            lambda host, uri: self.routes.get(host.split(":")[0]),
            RoundRobin().pick,
            self.metrics,
        )
        self.addCleanup(self.proxy.stop)
        listening = reactor.listenTCP(0, self.proxy, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.port = listening.getHost().port
        self.pool = HTTPConnectionPool(reactor)
        self.addCleanup(self.pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=self.pool)

    async def get(self, host: str, path: str = "/") -> tuple[int, str]:
        headers = Headers({b"host": [host.encode()]})
        url = f"http://127.0.0.1:{self.port}{path}".encode()
        response = await self.agent.request(b"GET", url, headers)
        return response.code, (await readBody(response)).decode()

    async def test_requests_reach_the_backend_kept_alive_with_forwarded_headers(self) -> None:
        code, first = await self.get("web", "/a?b=c")
        self.assertEqual(code, 200)
        fields = dict(line.split("=", 1) for line in first.splitlines())
        self.assertEqual(fields["path"], "/a?b=c")
        self.assertEqual(fields["host"], "web")
        self.assertEqual(fields["x-forwarded-for"], "127.0.0.1")
        self.assertEqual(fields["x-forwarded-proto"], "http")
        self.assertEqual(fields["x-forwarded-host"], "web")
        self.assertEqual(fields["x-forwarded-port"], str(self.port))
        _, second = await self.get("web")
        # The second request rode the first one's backend connection.
        self.assertEqual(second.splitlines()[0], first.splitlines()[0])
        sample = self.metrics.registry.get_sample_value(
            "k3stw_ingress_requests_total",
            {"ingress": "default/web", "backend": "default/web:80", "code": "200", "method": "GET"},
        )
        self.assertEqual(sample, 2.0)

    async def test_large_bodies_stream_both_ways(self) -> None:
        size = 8 * 1024 * 1024
        code, body = await self.get("web", f"/big?{size}")
        self.assertEqual((code, len(body)), (200, size))
        url = f"http://127.0.0.1:{self.port}/up".encode()
        for length in (size, UNKNOWN_LENGTH):
            upload = FileBodyProducer(io.BytesIO(b"y" * size))
            # Unknown: the Agent sends it chunked.
            upload.length = length
            response = await self.agent.request(b"POST", url, Headers({b"host": [b"web"]}), upload)
            self.assertEqual(await readBody(response), b"received=%d" % size)

    async def test_nothing_routed_is_404_no_endpoint_503_a_dead_one_502(self) -> None:
        self.assertEqual(await self.get("nowhere"), (404, "404 page not found\n"))
        self.assertEqual((await self.get("empty"))[0], 503)
        self.assertEqual((await self.get("dead"))[0], 502)

    async def test_an_endpoint_refusing_connections_makes_way_for_the_next(self) -> None:
        for _ in range(3):
            self.assertEqual((await self.get("retry"))[0], 200)

    async def test_an_upgrade_is_spliced_both_ways_after_the_101(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        self.addCleanup(sock.close)
        sock.setblocking(False)
        sock.sendall(
            b"GET /chat HTTP/1.1\r\nHost: ws\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await self.read_until(sock, b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        for message in (b"\x81\x05hello", b"\x82\x03abc" * 1000):
            sock.sendall(message)
            self.assertEqual(await self.read_until(sock, message, len(message)), message)

    async def test_an_upgrade_the_backend_refuses_is_an_ordinary_response(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        self.addCleanup(sock.close)
        sock.setblocking(False)
        sock.sendall(
            b"GET /chat HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        answer = await self.read_until(sock, b"x-forwarded-proto=http")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertIn(b"path=/chat", answer)

    async def read_until(self, sock: socket.socket, end: bytes, size: int = 0) -> bytes:
        data = b""
        for _ in range(500):
            with contextlib.suppress(BlockingIOError):
                data += sock.recv(65536)
            if (size and len(data) >= size) or (not size and end in data):
                return data
            await deferLater(reactor, 0.01)
        self.fail(f"no {end!r} in {data!r}")


class ServerSideTests(SynchronousTestCase):
    """The server's half on the in-memory server."""

    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.server.run(server_ingress.deploy(self.server.store, self.server.registry, True))

    def test_the_class_is_k3ss_default_traefik_class_and_disabling_removes_it(self) -> None:
        found = self.server.get("networking.k8s.io", "ingressclasses", "traefik")
        self.assertEqual(found["spec"]["controller"], "traefik.io/ingress-controller")
        self.assertEqual(
            found["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"], "true"
        )
        self.server.run(server_ingress.deploy(self.server.store, self.server.registry, False))
        self.assertFalse(self.server.exists("networking.k8s.io", "ingressclasses", "traefik"))

    def test_an_ingress_naming_no_class_gets_the_default_one(self) -> None:
        created = self.server.create(
            "networking.k8s.io",
            "ingresses",
            ingress("plain", [rule("h", path("Prefix", "/", "web"))]),
            "default",
        )
        self.assertEqual(created["spec"]["ingressClassName"], "traefik")
        annotated = ingress("old", [rule("h", path("Prefix", "/", "web"))])
        annotated["metadata"]["annotations"] = {"kubernetes.io/ingress.class": "nginx"}
        created = self.server.create("networking.k8s.io", "ingresses", annotated, "default")
        self.assertNotIn("ingressClassName", created["spec"])

    def test_status_lists_the_ready_serving_nodes_as_servicelb_would(self) -> None:
        for name, ip, ready in (
            ("n1", "10.0.0.1", True),
            ("n2", "10.0.0.2", True),
            ("n3", "10.0.0.3", False),
        ):
            self.server.create("", "nodes", node_object(name, ip, ready=ready))
        for name, klass in (("ours", "traefik"), ("theirs", "nginx")):
            self.server.create(
                "networking.k8s.io",
                "ingresses",
                ingress(name, [rule("h", path("Prefix", "/", "web"))], ingressClassName=klass),
                "default",
            )
        controller = server_ingress.IngressStatusController(
            self.server.informers, self.server.store, self.server.registry
        )
        self.server.start(controller)
        ours = self.server.get("networking.k8s.io", "ingresses", "ours", "default")
        self.assertEqual(
            ours["status"]["loadBalancer"], {"ingress": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}
        )
        theirs = self.server.get("networking.k8s.io", "ingresses", "theirs", "default")
        self.assertEqual(theirs["status"].get("loadBalancer") or {}, {})
