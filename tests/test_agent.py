"""The agent's first join step: the cluster CA checked against the token, with retries."""

from __future__ import annotations

import datetime
from pathlib import Path

from twisted.application.service import IService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols import tls
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS

from k3stw.agent.cacerts import CAHashMismatch, fetch_cluster_ca
from k3stw.agent.join import COMPONENTS, VALIDATE_RETRY, Joined
from k3stw.agent.service import AgentConfig, AgentService
from k3stw.agent.tunnels import TunnelSet
from k3stw.httpclient import HTTPStatusError, Response
from k3stw.lifecycle import _exit_now
from k3stw.pki.certs import SubjectAltNames, Usage, new_ca, new_leaf
from k3stw.pki.tls import PinnedCAPolicy, UnverifiedPolicy
from k3stw.pki.token import Token, ca_hash
from k3stw.supervisor.connect import node_check
from k3stw.tunnel.protocol import TunnelServerFactory
from k3stw.tunnel.session import Session
from tests.support.tunnel import connect_in_memory, run_autobahn_timers_on, tls_server

URL = "https://127.0.0.2:6443"
BUNDLE = new_ca("k3s-server-ca@1", datetime.datetime.now(datetime.UTC)).certificate_pem
HASH = ca_hash(BUNDLE)


class FakeServer:
    """Answers /cacerts from a script of results, recording which policy each GET used."""

    def __init__(self, *answers: bytes | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, IPolicyForHTTPS]] = []

    def __call__(self, url: str, policy: IPolicyForHTTPS) -> Deferred[bytes]:
        self.calls.append((url, policy))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


class FetchClusterCATests(SynchronousTestCase):
    def fetch(self, server: FakeServer, token: Token) -> Deferred[bytes]:
        return Deferred.fromCoroutine(fetch_cluster_ca(server, URL, token))

    def test_matching_hash(self) -> None:
        """The bundle is fetched unverified, checked, then fetched again pinned to itself."""
        server = FakeServer(BUNDLE)
        bundle = self.successResultOf(self.fetch(server, Token(HASH, "node", "pw")))
        self.assertEqual(bundle, BUNDLE)
        (url1, policy1), (url2, policy2) = server.calls
        self.assertEqual((url1, url2), (URL + "/cacerts", URL + "/cacerts"))
        self.assertIsInstance(policy1, UnverifiedPolicy)
        self.assertIsInstance(policy2, PinnedCAPolicy)

    def test_mismatch_uses_k3s_words(self) -> None:
        """A token for another CA fails with k3s's message and never trusts the bundle."""
        server = FakeServer(BUNDLE)
        failure = self.failureResultOf(self.fetch(server, Token("b" * 64, "node", "pw")))
        failure.trap(CAHashMismatch)
        self.assertEqual(
            str(failure.value),
            f"token CA hash does not match the Cluster CA certificate hash: {'b' * 64} != {HASH}",
        )
        self.assertEqual(len(server.calls), 1)

    def test_short_token_warns(self) -> None:
        """Without a hash in the token, k3s's warning is logged and the CA is used."""
        with capturedLogs() as events:
            bundle = self.successResultOf(self.fetch(FakeServer(BUNDLE), Token("", "", "pw")))
        self.assertEqual(bundle, BUNDLE)
        self.assertTrue(
            any("token does not include a CA hash" in e.get("log_format", "") for e in events)
        )

    def test_pinned_fetch_failure(self) -> None:
        """A server that cannot prove it holds the CA's key fails validation."""
        server = FakeServer(BUNDLE, Exception("certificate verify failed"))
        failure = self.failureResultOf(self.fetch(server, Token(HASH, "node", "pw")))
        self.assertIn("CA cert validation failed: certificate verify failed", str(failure.value))

    def test_not_a_bundle(self) -> None:
        """A /cacerts answer that is no certificate is an error, not a crash."""
        failure = self.failureResultOf(self.fetch(FakeServer(b"<html>"), Token(HASH, "n", "p")))
        self.assertIn("did not return a CA bundle", str(failure.value))

    def test_http_error_wording(self) -> None:
        """A non-2xx answer reads '<url>: <code> <phrase>' as in k3s."""
        error = HTTPStatusError(URL + "/cacerts", Response(404, "Not Found", Headers(), b""))
        self.assertEqual(str(error), URL + "/cacerts: 404 Not Found")


class FakeSupervisor:
    """
    A server's agent endpoints in memory, signing CSRs with a real CA and
    checking node passwords as k3s does; C{down} answers every request with
    a connection failure until it is set False.
    """

    def __init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self.server_ca = new_ca("k3s-server-ca@1", now)
        self.client_ca = new_ca("k3s-client-ca@1", now)
        self.bundle = self.server_ca.certificate_pem
        self.passwords: dict[str, str] = {}
        self.down = False
        self.requests: list[tuple[bytes, str, dict[bytes, bytes]]] = []

    def fetch(self, url: str, policy: IPolicyForHTTPS) -> Deferred[bytes]:
        if self.down:
            return fail(ConnectionRefusedError())
        return succeed(self.bundle)

    async def send(
        self,
        method: bytes,
        url: str,
        headers: dict[bytes, bytes],
        body: bytes | None,
        policy: IPolicyForHTTPS,
    ) -> Response:
        self.requests.append((method, url, headers))
        if self.down:
            raise ConnectionRefusedError()
        path = url[len(URL) :]
        if path == "/v1-k3s/config":
            return Response(200, "OK", Headers(), b'{"ClusterDomain": "cluster.local"}')
        if path in ("/v1-k3s/client-ca.crt", "/v1-k3s/server-ca.crt"):
            return Response(200, "OK", Headers(), self.bundle)
        from k3stw.pki.certs import Usage
        from k3stw.supervisor.nodes import sign_certificate

        now = datetime.datetime.now(datetime.UTC)
        component = COMPONENTS.get(path.removeprefix("/v1-k3s/").removesuffix(".crt"))
        if component is not None:
            answer = sign_certificate(
                self.client_ca, self.client_ca.certificate_pem, body or b"", component,
                Usage.CLIENT, now,
            )  # fmt: skip
            return Response(200, "OK", Headers(), answer)
        name = headers[b"k3s-node-name"].decode()
        password = headers[b"k3s-node-password"].decode()
        if self.passwords.setdefault(name, password) != password:
            return Response(403, "Forbidden", Headers(), b"")
        from k3stw.supervisor.nodes import NodeRequest, sign_node_certificate

        node = NodeRequest(name, password, (), False)
        usage, ca = (
            (Usage.SERVER, self.server_ca) if "serving" in path else (Usage.CLIENT, self.client_ca)
        )
        answer = sign_node_certificate(ca, ca.certificate_pem, node, body or b"", usage, now)
        return Response(200, "OK", Headers(), answer)


class AgentServiceTests(SynchronousTestCase):
    def service(
        self, supervisor: FakeSupervisor, token: Token, name: str = "Worker"
    ) -> tuple[AgentService, MemoryReactorClock, Path]:
        reactor = MemoryReactorClock()
        root = Path(self.mktemp())
        config = AgentConfig(root / "data", URL, token, root / "node", name, False, ("127.0.0.21",))
        service = AgentService(reactor, config, supervisor.fetch, supervisor.send)
        return service, reactor, root

    def test_joins_writes_credentials_and_identity(self) -> None:
        """The handshake writes the kubelet's certificates, kubeconfig and node password."""
        supervisor = FakeSupervisor()
        service, reactor, root = self.service(
            supervisor, Token(ca_hash(supervisor.bundle), "", "pw")
        )
        service.startService()
        assert service.joined is not None
        self.assertEqual(service.joined.identity.name, "worker")
        agent = root / "data" / "agent"
        for name in (
            "client-ca.crt",
            "server-ca.crt",
            "serving-kubelet.crt",
            "serving-kubelet.key",
            "client-kubelet.crt",
            "client-kubelet.key",
            "kubelet.kubeconfig",
            "client-kube-proxy.crt",
            "client-kube-proxy.key",
            "kubeproxy.kubeconfig",
            "client-k3s-controller.crt",
            "client-k3s-controller.key",
            "k3scontroller.kubeconfig",
        ):
            self.assertTrue((agent / name).exists(), name)
        self.assertEqual(oct((agent / "client-kubelet.key").stat().st_mode & 0o777), "0o600")
        # The network components read the API as k3s's users of those names.
        self.assertEqual(
            [pair.certificate.subject.rfc4514_string() for pair in
             (service.joined.kube_proxy, service.joined.k3s_controller)],
            ["CN=system:kube-proxy", "CN=system:k3s-controller"],
        )  # fmt: skip
        password = (root / "node" / "password").read_text()
        self.assertRegex(password, r"^[0-9a-f]{32}\n$")
        self.assertEqual(oct((root / "node" / "password").stat().st_mode & 0o777), "0o600")
        post = next(h for m, u, h in supervisor.requests if m == b"POST")
        self.assertEqual(post[b"k3s-node-name"], b"worker")
        self.assertEqual(post[b"k3s-node-password"], password.strip().encode())
        self.assertEqual(post[b"k3s-node-ip"], b"127.0.0.21")
        self.assertEqual(post[b"authorization"], Token("", "", "pw").authorization("node"))
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_retries_until_the_server_answers(self) -> None:
        """Connection failures are logged with k3s's words and retried every 2 s."""
        supervisor = FakeSupervisor()
        supervisor.down = True
        service, reactor, _ = self.service(supervisor, Token(ca_hash(supervisor.bundle), "", "p"))
        with capturedLogs() as events:
            service.startService()
            reactor.advance(VALIDATE_RETRY.initial)
            self.assertIsNone(service.joined)
            supervisor.down = False
            reactor.advance(VALIDATE_RETRY.initial)
        self.assertIsNotNone(service.joined)
        failures = [e for e in events if "Failed to validate connection" in formatEvent(e)]
        self.assertEqual(len(failures), 2)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_password_rejected_retries_with_k3s_message(self) -> None:
        """A node name taken by another password: k3s's message, retried every 5-10 s."""
        supervisor = FakeSupervisor()
        supervisor.passwords["worker"] = "someone else's"
        service, reactor, root = self.service(supervisor, Token("", "", "p"))
        with capturedLogs() as events:
            service.startService()
        waiting = [formatEvent(e) for e in events if "Waiting to retrieve" in formatEvent(e)]
        self.assertEqual(len(waiting), 1)
        self.assertIn(
            "Waiting to retrieve agent configuration; server is not ready: Node password "
            f"rejected, duplicate hostname or contents of '{root / 'node' / 'password'}' may not "
            "match server node-passwd entry, try enabling a unique node name with the "
            "--with-node-id flag",
            waiting[0],
        )
        (delay,) = reactor.getDelayedCalls()
        self.assertTrue(5 <= delay.getTime() - reactor.seconds() <= 10)
        supervisor.passwords.clear()
        reactor.advance(10)
        self.assertIsNotNone(service.joined)

    def test_stop_cancels_the_retry(self) -> None:
        """Stopping while waiting to retry leaves nothing scheduled."""
        supervisor = FakeSupervisor()
        supervisor.down = True
        service, reactor, _ = self.service(supervisor, Token("", "", "p"))
        service.startService()
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        self.successResultOf(service.stopService())
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_hash_mismatch_stops_the_process_with_an_error(self) -> None:
        """A token for another cluster is fatal: the reactor stops and the exit code is 1."""
        supervisor = FakeSupervisor()
        service, reactor, _ = self.service(supervisor, Token("c" * 64, "node", "pw"))
        with capturedLogs() as events:
            service.startService()
        self.assertTrue(reactor.hasStopped)
        self.assertIn((_exit_now, (1,), {}), reactor.triggers["after"]["shutdown"])
        critical = [e for e in events if e["log_level"].name == "critical"]
        self.assertIn("token CA hash does not match", critical[0]["error"])
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_with_node_id(self) -> None:
        """--with-node-id appends a stable 8-hex id to the name."""
        supervisor = FakeSupervisor()
        reactor = MemoryReactorClock()
        root = Path(self.mktemp())
        config = AgentConfig(root / "d", URL, Token("", "", "p"), root / "node", "Twin", True)
        service = AgentService(reactor, config, supervisor.fetch, supervisor.send)
        service.startService()
        assert service.joined is not None
        node_id = (root / "node" / "id").read_text().strip()
        self.assertRegex(node_id, "^[0-9a-f]{8}$")
        self.assertEqual(service.joined.identity.name, f"twin-{node_id}")


class AgentStopTests(SynchronousTestCase):
    """
    An agent with its tunnel to the server open, in memory: TLS over
    C{iosim}, the server's tunnel endpoint as the supervisor serves it,
    autobahn's timers on the reactor's clock.
    """

    def test_stop_fires_with_a_tunnel_open(self) -> None:
        """
        Stopping an agent whose tunnel is open finishes: the websocket's
        Close reaches the server, the TLS connection ends, nothing stays
        scheduled.  (The session, the producer of the tunnel's TLS
        transport, used to keep it open, and the agent from ever stopping.)
        """
        reactor = MemoryReactorClock()
        # The server checks the agent's certificate at the reactor's time.
        reactor.advance(datetime.datetime.now(datetime.UTC).timestamp())
        run_autobahn_timers_on(self, reactor)
        # The agent's TLS layer (wrapClientTLS) gathers small writes on the global reactor.
        self.patch(tls, "_get_default_clock", lambda: reactor)
        supervisor = FakeSupervisor()
        root = Path(self.mktemp())
        config = AgentConfig(root / "data", URL, Token("", "", "p"), root / "node", "worker")
        tunnels: list[TunnelSet] = []

        def start_tunnels(joined: Joined) -> IService:
            policy = PinnedCAPolicy(joined.server_ca, joined.client)
            tunnels.append(TunnelSet(reactor, policy, 10250, lambda address, check: None))
            tunnels[0].follow(["127.0.0.2:6443"])
            return tunnels[0]

        service = AgentService(
            reactor, config, supervisor.fetch, supervisor.send, start_kubelet=start_tunnels
        )
        service.startService()
        ((host, port, dialled, *_),) = reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.2", 6443))

        sessions: list[Session] = []
        endpoint = TunnelServerFactory(
            check=node_check(supervisor.client_ca.certificate, reactor),
            opened=lambda node, session: sessions.append(session),
            clock=reactor,
        )
        now = datetime.datetime.now(datetime.UTC)
        serving = new_leaf(
            supervisor.server_ca, "k3s", Usage.SERVER, now, alt_names=SubjectAltNames.of([host])
        )
        server_tls = tls_server(
            endpoint, serving, supervisor.server_ca, supervisor.client_ca, reactor
        )
        _, _, pump = connect_in_memory(
            server_tls, dialled, reactor, IPv4Address("TCP", "127.0.0.2", 6443)
        )
        pump.flush()
        self.assertEqual(len(sessions), 1)
        self.assertTrue(tunnels[0].connected("127.0.0.2:6443"))

        stopping = service.stopService()
        pump.flush()
        self.successResultOf(stopping)
        self.assertEqual(
            self.successResultOf(sessions[0].ended), "websocket closed (1000): tunnel stopped"
        )
        # autobahn's close-handshake timer, never cancelled, runs once, harmlessly.
        reactor.advance(1)
        self.assertEqual(reactor.getDelayedCalls(), [])
