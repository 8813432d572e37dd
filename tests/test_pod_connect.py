"""
The connect subresources of pods and services through the API in memory:
the real routing, authorization, store and option checks, with every
kubelet and pod a L{MemoryKubelet} connection; and the option readers alone.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from k3stw.apiserver.podconnect import (
    _go_quote,
    choose_container,
    log_refusal,
    split_scheme_name_port,
)
from k3stw.apiserver.routing import KubernetesAPI
from k3stw.apiserver.status import NOT_ALLOWED, StatusError
from k3stw.machinery.identity import User
from k3stw.machinery.objects import Object
from k3stw.upgrade import BodyReader, HeadReader
from tests.support.apiserver import MemoryServer
from tests.support.tunnel import run_autobahn_timers_on
from tests.test_node_proxy import InMemoryNodeProxy, MemoryKubelet, node

USERS = {
    "admin": User("system:admin", ("system:masters",)),
    "kubelet": User("system:node:agent-1", ("system:nodes",)),
}
NOT_IMPLEMENTED = (
    b"HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 56\r\n\r\nnot implemented: this node has no container runtime yet\n"
)
WEBSOCKET = (
    "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: a2V5\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n"
)
#: kubectl 1.32's exec: answered by the API server, SPDY to the kubelet.
WEBSOCKET_V5 = (
    "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n"
)


class PlainTransport(StringTransport):
    """A connection without TLS: no client certificate, so the bearer token authenticates."""

    def getPeerCertificate(self) -> None:
        return None


def body_of(answer: bytes) -> bytes:
    """The body of a complete HTTP answer, unchunked."""
    parsed = HeadReader().feed(answer)
    assert parsed is not None
    head, rest = parsed
    return BodyReader.of(head, b"GET").feed(rest)


class AddressedProxy(InMemoryNodeProxy):
    """Pods' addresses are L{MemoryKubelet} connections too; the ones asked for are recorded."""

    def __init__(self, nodes: dict[str, Object], reactor: MemoryReactorClock) -> None:
        super().__init__(nodes, reactor)
        self.addresses: list[tuple[str, int, bool]] = []

    def address_endpoint(self, host: str, port: int, tls: bool) -> IStreamClientEndpoint:
        self.addresses.append((host, port, tls))
        return self.kubelet


def pod(name: str, *containers: str, node_name: str | None = "agent-1", **spec: Any) -> Object:
    body: dict[str, Any] = {
        "containers": [{"name": c, "image": "busybox", **spec.pop(c, {})} for c in containers],
        **spec,
    }
    if node_name:
        body["nodeName"] = node_name
    return {"metadata": {"name": name}, "spec": body}


class ConnectAPITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.server = MemoryServer(self, self.reactor)
        self.proxy = AddressedProxy({"agent-1": node("agent-1", 10250)}, self.reactor)

        async def user_of(token: str) -> User | None:
            return USERS.get(token)

        api = KubernetesAPI(
            self.server.store,
            self.server.registry,
            self.reactor,
            "127.0.0.1:6443",
            self.proxy,
            tokens=user_of,
        )
        self.site = Site(api, reactor=self.reactor)
        self.site.timeOut = None
        self.server.create("", "pods", pod("one", "a"), "default")
        self.server.create(
            "",
            "pods",
            pod("two", "a", "b", initContainers=[{"name": "i", "image": "x"}]),
            "default",
        )
        self.server.create("", "pods", pod("loose", "a", node_name=None), "default")

    @property
    def kubelet(self) -> MemoryKubelet:
        return self.proxy.kubelet

    def send(
        self, method: str, path: str, headers: str = "", token: str = "admin"
    ) -> StringTransport:
        """Send a request; the client's transport, which holds the answer written so far."""
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert channel is not None
        client = PlainTransport()
        channel.makeConnection(client)
        request = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:6443\r\n"
            f"Authorization: Bearer {token}\r\n{headers}\r\n"
        )
        channel.dataReceived(request.encode())
        return client

    def status(self, client: StringTransport) -> tuple[int, str]:
        code = int(client.value().split(b" ")[1])
        return code, json.loads(body_of(client.value()))["message"]

    def kubelet_request(self) -> bytes:
        """The request line the kubelet (or pod) got."""
        sent: bytes = self.kubelet.transports[-1].value()
        return sent.split(b"\r\n")[0]

    def set_status(self, name: str, status: dict[str, Any]) -> None:
        def mutate(current: Object) -> Object:
            current["status"] = {**current.get("status", {}), **status}
            return current

        pods = self.server.resource("", "pods")
        self.server.run(
            self.server.store.guaranteed_update(pods, "default", name, mutate, subresource="status")
        )

    # pods/log

    def test_log_streams_from_the_kubelet(self) -> None:
        """kube's options become the kubelet's query; its body streams back as text/plain."""
        client = self.send(
            "GET", "/api/v1/namespaces/default/pods/one/log?follow=true&tailLines=2&timestamps=1"
        )
        self.assertEqual(
            self.kubelet_request(),
            b"GET /containerLogs/default/one/a?follow=true&tailLines=2&timestamps=true HTTP/1.1",
        )
        self.assertEqual(self.proxy.asked, [("agent-1", 10250)])
        self.assertNotIn(b"Bearer", self.kubelet.transports[-1].value())
        self.kubelet.respond(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nline1\n\r\n"
        )
        answer = client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertIn(b"Content-Type: text/plain\r\n", answer)
        self.assertIn(b"line1\n", answer)
        self.assertFalse(answer.endswith(b"0\r\n\r\n"), "follow keeps the stream open")
        self.kubelet.respond(b"0\r\n\r\n")
        self.assertTrue(client.value().endswith(b"0\r\n\r\n"))

    def test_log_refused_by_the_kubelet(self) -> None:
        """A kubelet's 501 becomes kube's Status, its text quoted in it."""
        client = self.send("GET", "/api/v1/namespaces/default/pods/one/log")
        self.kubelet.respond(NOT_IMPLEMENTED)
        self.assertEqual(
            self.status(client),
            (
                501,
                'an error on the server ("not implemented: this node has no container runtime '
                'yet\\n") has prevented the request from succeeding ( pods/log one)',
            ),
        )

    def test_log_container_must_be_named(self) -> None:
        client = self.send("GET", "/api/v1/namespaces/default/pods/two/log")
        self.assertEqual(
            self.status(client),
            (400, "a container name must be specified for pod two, choose one of: [i a b]"),
        )
        client = self.send("GET", "/api/v1/namespaces/default/pods/two/log?container=c")
        self.assertEqual(self.status(client), (400, "container c is not valid for pod two"))
        client = self.send("GET", "/api/v1/namespaces/default/pods/two/log?container=i")
        self.assertEqual(self.kubelet_request(), b"GET /containerLogs/default/two/i HTTP/1.1")

    def test_log_options_checked_as_kube(self) -> None:
        cases = {
            "tailLines=-1&limitBytes=0": (
                422,
                'PodLogOptions "one" is invalid: tailLines: Invalid value: -1: must be greater '
                "than or equal to 0; limitBytes: Invalid value: 0: must be greater than 0",
            ),
            "sinceSeconds=5&sinceTime=2025-01-01T00:00:00Z": (
                422,
                'PodLogOptions "one" is invalid: : Forbidden: at most one of `sinceTime` or '
                "`sinceSeconds` may be specified",
            ),
            "tailLines=ten": (400, 'strconv.ParseInt: parsing "ten": invalid syntax'),
            "sinceTime=yesterday": (
                400,
                'parsing time "yesterday" as "2006-01-02T15:04:05Z07:00": cannot parse '
                '"yesterday" as "2006"',
            ),
        }
        for query, expected in cases.items():
            client = self.send("GET", f"/api/v1/namespaces/default/pods/one/log?{query}")
            self.assertEqual(self.status(client), expected, query)
        self.assertEqual(self.kubelet.transports, [])

    def test_log_since_time_sent_in_utc(self) -> None:
        self.send(
            "GET",
            "/api/v1/namespaces/default/pods/one/log?sinceTime=2025-01-01T02:00:00%2B02:00&limitBytes=9",
        )
        self.assertEqual(
            self.kubelet_request(),
            b"GET /containerLogs/default/one/a?limitBytes=9&sinceTime=2025-01-01T00%3A00%3A00Z"
            b" HTTP/1.1",
        )

    def test_log_of_a_pod_on_no_node_is_empty(self) -> None:
        client = self.send("GET", "/api/v1/namespaces/default/pods/loose/log")
        answer = client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertIn(b"Content-Type: text/plain", answer)
        self.assertEqual(self.kubelet.transports, [])

    def test_log_of_a_missing_pod(self) -> None:
        client = self.send("GET", "/api/v1/namespaces/default/pods/ghost/log")
        self.assertEqual(self.status(client), (404, 'pods "ghost" not found'))

    # exec, attach, portforward

    def test_exec_upgrade_reaches_the_kubelet(self) -> None:
        """
        A websocket GET older than v5 goes on with kubelet's option names; its
        501 comes back as it was.
        """
        client = self.send(
            "GET",
            "/api/v1/namespaces/default/pods/one/exec?command=ls&command=-l&stdout=true&stdin=1&tty=false",
            WEBSOCKET,
        )
        self.assertEqual(
            self.kubelet_request(),
            b"GET /exec/default/one/a?command=ls&command=-l&input=1&output=1 HTTP/1.1",
        )
        sent = self.kubelet.transports[-1].value()
        self.assertIn(b"Upgrade: websocket\r\n", sent)
        self.assertIn(b"Sec-Websocket-Protocol: v4.channel.k8s.io\r\n", sent)
        self.kubelet.respond(NOT_IMPLEMENTED)
        answer = client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 501 Not Implemented\r\n"), answer)
        self.assertTrue(answer.endswith(b"no container runtime yet\n"), answer)

    def test_v5_exec_is_answered_here_and_spoken_to_the_kubelet_as_spdy(self) -> None:
        """kubectl's websocket gets its 101 here; the kubelet gets a SPDY POST; its 501 a Status."""
        run_autobahn_timers_on(self, self.reactor)
        client = self.send(
            "GET", "/api/v1/namespaces/default/pods/one/exec?command=ls&stdout=true", WEBSOCKET_V5
        )
        self.assertTrue(client.value().startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertEqual(
            self.kubelet_request(), b"POST /exec/default/one/a?command=ls&output=1 HTTP/1.1"
        )
        self.assertIn(b"Upgrade: SPDY/3.1\r\n", self.kubelet.transports[-1].value())
        self.kubelet.respond(NOT_IMPLEMENTED)
        self.assertIn(
            b"unable to upgrade connection: not implemented: this node has no container runtime",
            client.value(),
        )
        client.protocol.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.reactor.advance(61)

    def test_spdy_attach_and_portforward(self) -> None:
        spdy = (
            "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
        )
        self.send(
            "POST",
            "/api/v1/namespaces/default/pods/two/attach?container=b&stdout=true&stderr=true",
            spdy,
        )
        self.assertEqual(
            self.kubelet_request(), b"POST /attach/default/two/b?error=1&output=1 HTTP/1.1"
        )
        self.send(
            "POST", "/api/v1/namespaces/default/pods/two/portforward?ports=80&ports=443", spdy
        )
        self.assertEqual(
            self.kubelet_request(), b"POST /portForward/default/two?port=80%2C443 HTTP/1.1"
        )
        self.assertIn(b"Upgrade: SPDY/3.1\r\n", self.kubelet.transports[-1].value())

    def test_exec_refusals(self) -> None:
        choose = "a container name must be specified for pod two, choose one of: [i a b]"
        cases = [
            ("GET", "one/exec?command=ls", "", (400, "Upgrade request required")),
            ("GET", "loose/exec", WEBSOCKET, (400, "pod loose does not have a host assigned")),
            ("GET", "two/exec?command=ls", WEBSOCKET, (400, choose)),
            ("PUT", "one/exec", WEBSOCKET, (405, NOT_ALLOWED)),
            ("GET", "one/log/extra", "", (404, "the server could not find the requested resource")),
        ]  # fmt: skip
        for method, path, headers, expected in cases:
            client = self.send(method, f"/api/v1/namespaces/default/pods/{path}", headers)
            self.assertEqual(self.status(client), expected, path)
        self.assertEqual(self.kubelet.transports, [])

    def test_nodes_may_not_exec(self) -> None:
        """Authorized as the method's verb on pods/exec before anything else."""
        client = self.send(
            "POST", "/api/v1/namespaces/default/pods/one/exec", WEBSOCKET, token="kubelet"
        )
        code, message = self.status(client)
        self.assertEqual(code, 403)
        self.assertIn('cannot create resource "pods/exec"', message)
        client = self.send("GET", "/api/v1/namespaces/default/pods/one/log", token="kubelet")
        self.assertIn('cannot get resource "pods/log"', self.status(client)[1])

    # pods/proxy and services/proxy

    def test_pod_proxy_dials_the_pods_address(self) -> None:
        self.set_status("one", {"podIP": "10.42.0.5", "podIPs": [{"ip": "10.42.0.5"}]})
        self.send("GET", "/api/v1/namespaces/default/pods/one:8080/proxy/metrics/?x=1")
        self.assertEqual(self.proxy.addresses, [("10.42.0.5", 8080, False)])
        sent = self.kubelet.transports[-1].value()
        self.assertTrue(sent.startswith(b"GET /metrics/?x=1 HTTP/1.1\r\n"), sent)
        self.assertIn(b"Host: 10.42.0.5:8080\r\n", sent)
        self.send("GET", "/api/v1/namespaces/default/pods/https:one:8443/proxy")
        self.assertEqual(self.proxy.addresses[-1], ("10.42.0.5", 8443, True))
        self.assertTrue(self.kubelet.transports[-1].value().startswith(b"GET / HTTP/1.1\r\n"))

    def test_pod_proxy_defaults_to_the_first_container_port(self) -> None:
        created = pod("web", "a", a={"ports": [{"containerPort": 8000}]})
        self.server.create("", "pods", created, "default")
        self.set_status("web", {"podIPs": [{"ip": "10.42.0.6"}]})
        self.send("GET", "/api/v1/namespaces/default/pods/web/proxy/")
        self.assertEqual(self.proxy.addresses, [("10.42.0.6", 8000, False)])

    def test_pod_proxy_refusals(self) -> None:
        self.set_status("one", {"podIPs": [{"ip": "127.0.0.1"}]})
        cases = {
            "one/proxy/": (400, "address not allowed"),
            "loose/proxy/": (400, "address not allowed"),
            "ftp:one:21/proxy/": (400, 'invalid pod request "ftp:one:21"'),
        }
        for path, expected in cases.items():
            client = self.send("GET", f"/api/v1/namespaces/default/pods/{path}")
            self.assertEqual(self.status(client), expected, path)
        self.assertEqual(self.proxy.addresses, [])

    def service_with_endpoints(self) -> None:
        service = {
            "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }
        self.server.create("", "services", service, "default")
        self.set_status("one", {"podIPs": [{"ip": "10.42.0.5"}]})
        endpoints = {
            "metadata": {"name": "web"},
            "subsets": [
                {
                    "addresses": [
                        {"ip": "10.42.0.9", "targetRef": {"namespace": "default", "name": "gone"}},
                        {"ip": "10.42.0.5", "targetRef": {"namespace": "default", "name": "one"}},
                    ],
                    "ports": [{"name": "http", "port": 8080}],
                }
            ],
        }  # fmt: skip
        self.server.create("", "endpoints", endpoints, "default")

    def test_service_proxy_dials_a_ready_endpoint(self) -> None:
        """An address whose pod is gone is skipped; the service's port 80 is its port named http."""
        self.service_with_endpoints()
        self.send("PUT", "/api/v1/namespaces/default/services/web:80/proxy/api")
        self.assertEqual(self.proxy.addresses, [("10.42.0.5", 8080, False)])
        self.assertTrue(self.kubelet.transports[-1].value().startswith(b"PUT /api HTTP/1.1\r\n"))
        self.send("GET", "/api/v1/namespaces/default/services/web:http/proxy/")
        self.assertEqual(self.proxy.addresses[-1], ("10.42.0.5", 8080, False))

    def test_service_proxy_refusals(self) -> None:
        self.service_with_endpoints()
        cases = {
            "web:81": (503, 'no service port 81 found for service "web"'),
            "web": (503, 'no endpoints available for service "web"'),
            "other": (404, 'endpoints "other" not found'),
        }
        for name, expected in cases.items():
            client = self.send("GET", f"/api/v1/namespaces/default/services/{name}/proxy/")
            self.assertEqual(self.status(client), expected, name)
        self.assertEqual(self.proxy.addresses, [])

    def test_discovery_names_the_connect_subresources(self) -> None:
        client = self.send("GET", "/api/v1")
        body = json.loads(body_of(client.value()))
        found = {r["name"]: (r["kind"], r["verbs"]) for r in body["resources"]}
        self.assertEqual(found["pods/exec"], ("PodExecOptions", ["create", "get"]))
        self.assertEqual(found["pods/portforward"], ("PodPortForwardOptions", ["create", "get"]))
        self.assertEqual(found["pods/log"], ("Pod", ["get"]))
        self.assertEqual(
            found["services/proxy"],
            ("ServiceProxyOptions", ["create", "delete", "get", "patch", "update"]),
        )


class OptionTests(SynchronousTestCase):
    def test_choose_container(self) -> None:
        self.assertEqual(choose_container(pod("p", "only"), ""), "only")
        self.assertEqual(choose_container(pod("p", "a", "b"), "b"), "b")
        with self.assertRaises(StatusError) as caught:
            choose_container(pod("p"), "")
        self.assertEqual(caught.exception.message, "a container name must be specified for pod p")

    def test_split_scheme_name_port(self) -> None:
        self.assertEqual(split_scheme_name_port("web", "service"), ("", "web", ""))
        self.assertEqual(split_scheme_name_port("web:http", "service"), ("", "web", "http"))
        self.assertEqual(split_scheme_name_port("https:web:443", "pod"), ("https", "web", "443"))
        for bad in (":80", "a:b:c:d", "gopher:web:70"):
            with self.assertRaises(StatusError):
                split_scheme_name_port(bad, "pod")

    def test_log_refusals_as_kube_words_them(self) -> None:
        refused = log_refusal("p")
        self.assertEqual(refused(400, b"bad since").message, "bad since")
        self.assertEqual(refused(500, b"boom").message, "Internal error occurred: boom")
        self.assertEqual(
            refused(404, b"x").message,
            "the server could not find the requested resource ( pods/log p)",
        )
        self.assertEqual(refused(503, b"x").status()["reason"], "InternalError")

    def test_go_quote(self) -> None:
        self.assertEqual(_go_quote('a"b\\\n\x00é'), '"a\\"b\\\\\\n\\x00é"')
