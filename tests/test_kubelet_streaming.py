"""
The kubelet's ``/exec``, ``/attach`` and ``/portForward`` in memory: a real
twisted.web request on the kubelet's routes, the pods of a L{MemoryRuntime},
and the runtime's streaming server a L{StringTransport} (L{MemoryKubelet}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from k3stw.kubelet.api import kubelet_routes
from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.memory import PAUSE_IMAGE, MemoryRuntime
from k3stw.kubelet.pods.spec import CONTAINER_NAME, pod_labels
from k3stw.kubelet.streaming import StreamError, Streaming, stream_options, stream_target
from k3stw.machinery.objects import Object
from tests.test_node_proxy import MemoryKubelet

UID = "8f7c6a52-0000-4000-8000-000000000001"
POD: Object = {
    "metadata": {"name": "web", "namespace": "default", "uid": UID},
    "spec": {"containers": [{"name": "main", "tty": True}, {"name": "side"}]},
}
#: How kube-apiserver 1.32 sends an exec on: SPDY, remotecommand v4 first.
SPDY = (
    b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n"
)


class StreamOptionsTests(SynchronousTestCase):
    def test_query_flags_are_one(self) -> None:
        """input, output, error, tty count only as ``1``; a TTY drops stderr."""
        options = stream_options({b"input": [b"1"], b"output": [b"true"], b"error": [b"1"]})
        self.assertEqual((options.stdin, options.stdout, options.stderr), (True, False, True))
        options = stream_options({b"output": [b"1"], b"error": [b"1"], b"tty": [b"1"]})
        self.assertEqual((options.stdout, options.stderr, options.tty), (True, False, True))

    def test_no_stream_is_refused(self) -> None:
        """kube's 400 when none of the three is asked for (a TTY's stderr does not count)."""
        for args in ({}, {b"tty": [b"1"], b"error": [b"1"]}, {b"output": [b"0"]}):
            error = self.assertRaises(StreamError, stream_options, args)
            self.assertEqual(
                (error.code, error.message),
                (400, "you must specify at least 1 of stdin, stdout, stderr"),
            )

    def test_path_shapes(self) -> None:
        """With or without the pod UID; any other shape is no route."""
        self.assertEqual(stream_target("exec", [b"ns", b"p", b"c"]).container, "c")  # type: ignore[union-attr]
        target = stream_target("attach", [b"ns", b"p", b"uid", b"c"])
        self.assertEqual((target.uid, target.container), ("uid", "c"))  # type: ignore[union-attr]
        self.assertEqual(stream_target("portForward", [b"ns", b"p", b"u"]).uid, "u")  # type: ignore[union-attr]
        for kind, segments in (
            ("exec", [b"ns", b"p"]),
            ("exec", [b"ns", b"p", b"u", b"c", b"x"]),
            ("exec", [b"ns", b"p", b""]),
            ("portForward", [b"ns"]),
            ("portForward", [b"ns", b"p", b"u", b"c"]),
        ):
            self.assertIsNone(stream_target(kind, segments), (kind, segments))


class StreamingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.runtime = MemoryRuntime(self.reactor)
        self.pods = {("default", "web"): POD}
        self.backend = MemoryKubelet()
        self.dialled: list[tuple[str, int]] = []

        def dial(host: str, port: int) -> IStreamClientEndpoint:
            self.dialled.append((host, port))
            return self.backend

        self.streaming = Streaming(
            self.reactor, lambda ns, name: self.pods.get((ns, name)), lambda: self.runtime, dial
        )
        self.containers = self.run_pod(POD, ["main", "side"])
        self.site = Site(kubelet_routes(None, lambda _: {}, self.streaming), reactor=self.reactor)
        self.site.timeOut = None
        self.client = StringTransport()

    def run_pod(self, pod: Object, names: list[str]) -> dict[str, str]:
        """A ready sandbox for C{pod} with running containers C{names}; their IDs."""
        meta = pod["metadata"]
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(
                name=meta["name"], namespace=meta["namespace"], uid=meta["uid"]
            ),
            labels=pod_labels(pod),
        )
        sandbox = self.runtime.run_pod_sandbox(config)
        sandbox_id = self.successResultOf(sandbox)
        ids = {}
        for name in names:
            container = api.ContainerConfig(
                metadata=api.ContainerMetadata(name=name),
                image=api.ImageSpec(image=PAUSE_IMAGE),
                labels={**pod_labels(pod), CONTAINER_NAME: name},
            )
            ids[name] = self.successResultOf(
                self.runtime.create_container(sandbox_id, container, config)
            )
            self.successResultOf(self.runtime.start_container(ids[name]))
        return ids

    def send(self, request_line: bytes, headers: bytes = SPDY) -> None:
        """A request on a new connection (L{client} its transport)."""
        self.channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert self.channel is not None
        self.client = StringTransport()
        self.channel.makeConnection(self.client)
        self.channel.dataReceived(request_line + b"\r\nHost: node-a:10250\r\n" + headers + b"\r\n")

    def answer(self) -> tuple[int, bytes]:
        head, _, body = self.client.value().partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), body

    def stream(self, kind: str) -> Any:
        """The one streaming request CRI was asked for, its URL's C{kind} checked."""
        (token,) = self.runtime.streams
        self.assertEqual(
            self.runtime.calls[-1][0],
            {"exec": "Exec", "attach": "Attach", "portforward": "PortForward"}[kind],
        )
        return self.runtime.streams[token], token

    def test_exec_relayed_to_the_runtime_and_spliced(self) -> None:
        """CRI Exec of the running container; the upgrade goes to its URL; 101 splices."""
        self.send(
            b"POST /exec/default/web/side?command=sh&command=-c&command=echo+hi"
            b"&input=1&output=1&error=1 HTTP/1.1"
        )
        request, token = self.stream("exec")
        self.assertEqual(request.container_id, self.containers["side"])
        self.assertEqual(list(request.cmd), ["sh", "-c", "echo hi"])
        self.assertEqual(
            (request.stdin, request.stdout, request.stderr, request.tty), (True, True, True, False)
        )
        self.assertEqual(self.dialled, [("127.0.0.1", 10010)])
        sent = self.backend.transports[0].value()
        self.assertTrue(sent.startswith(b"POST /exec/%s HTTP/1.1\r\n" % token.encode()), sent)
        self.assertIn(b"Host: 127.0.0.1:10010\r\n", sent)
        self.assertIn(b"Upgrade: SPDY/3.1\r\n", sent)
        self.assertIn(b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n", sent)
        self.backend.respond(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\nspdy-from-runtime"
        )
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertTrue(self.client.value().endswith(b"\r\n\r\nspdy-from-runtime"))
        # From now on the bytes pass untouched both ways.
        protocol = getattr(self.client, "protocol", None)
        assert isinstance(protocol, Protocol)
        protocol.dataReceived(b"spdy-from-client")
        self.assertTrue(self.backend.transports[0].value().endswith(b"spdy-from-client"))

    def test_exec_with_uid_and_tty(self) -> None:
        """The UID form; a TTY asks for no stderr."""
        self.send(
            b"GET /exec/default/web/%s/main?command=sh&output=1&error=1&tty=1 HTTP/1.1"
            % UID.encode()
        )
        request, _ = self.stream("exec")
        self.assertEqual(request.container_id, self.containers["main"])
        self.assertEqual((request.stdout, request.stderr, request.tty), (True, False, True))

    def test_attach_takes_the_tty_from_the_spec(self) -> None:
        """Whether a process has a TTY was settled when it started: the query cannot change it."""
        self.send(b"POST /attach/default/web/side?input=1&output=1&tty=1 HTTP/1.1")
        request, token = self.stream("attach")
        self.assertIsInstance(request, api.AttachRequest)
        self.assertEqual((request.container_id, request.tty), (self.containers["side"], False))
        self.assertTrue(
            self.backend.transports[0].value().startswith(b"POST /attach/" + token.encode())
        )
        self.runtime.streams.clear()
        self.send(b"POST /attach/default/web/main?output=1 HTTP/1.1")
        request, _ = self.stream("attach")
        self.assertEqual((request.container_id, request.tty), (self.containers["main"], True))

    def test_port_forward_over_spdy_and_websocket(self) -> None:
        """SPDY names no ports (each stream does); a websocket's come from the query."""
        self.send(b"POST /portForward/default/web HTTP/1.1")
        request, token = self.stream("portforward")
        self.assertEqual(
            (request.pod_sandbox_id, list(request.port)), (next(iter(self.runtime.sandboxes)), [])
        )
        self.assertTrue(
            self.backend.transports[0].value().startswith(b"POST /portforward/" + token.encode())
        )

    def test_websocket_port_forward_needs_ports(self) -> None:
        """kube's 400 for a websocket without ``port``; with it, the ports go to CRI."""
        websocket = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        self.send(b"GET /portForward/default/web HTTP/1.1", websocket)
        self.assertEqual(self.answer(), (400, b'query parameter "port" is required'))
        self.assertEqual(self.runtime.streams, {})
        self.send(b"GET /portForward/default/web?port=80,443&port=8080 HTTP/1.1", websocket)
        request, _ = self.stream("portforward")
        self.assertEqual(list(request.port), [80, 443, 8080])

    def test_refusals_in_the_kubelets_words(self) -> None:
        """Options, unknown pods, containers not running, another UID: the kubelet's answers."""
        cases = [
            (b"POST /exec/default/web/main?command=sh HTTP/1.1", 400,
             b"you must specify at least 1 of stdin, stdout, stderr"),
            (b"POST /exec/default/nope/main?output=1 HTTP/1.1", 404, b"pod does not exist"),
            (b"POST /attach/other/web/main?output=1 HTTP/1.1", 404, b"pod does not exist"),
            (b"POST /portForward/default/nope HTTP/1.1", 404, b"pod does not exist"),
            (b"POST /exec/default/web/gone?output=1 HTTP/1.1", 500,
             b'container not found ("gone")'),
            (b"POST /attach/default/web/gone?output=1 HTTP/1.1", 500,
             b"container gone not found in pod web_default"),
            (b"POST /exec/default/web/other-uid/main?output=1 HTTP/1.1", 500,
             b'container not found ("main")'),
            (b"POST /portForward/default/web/other-uid HTTP/1.1", 404, b"pod not found"),
            (b"PUT /exec/default/web/main?output=1 HTTP/1.1", 405, b"405: Method Not Allowed"),
            (b"POST /exec/default/web HTTP/1.1", 404, b"404 page not found\n"),
        ]  # fmt: skip
        for line, code, body in cases:
            self.send(line)
            self.assertEqual(self.answer(), (code, body), line)
        self.assertEqual(self.runtime.streams, {})

    def test_stopped_container_is_not_found(self) -> None:
        """Only running containers take streams."""
        self.runtime.exit(self.containers["main"], 0)
        self.send(b"POST /exec/default/web/main?output=1 HTTP/1.1")
        self.assertEqual(self.answer(), (500, b'container not found ("main")'))

    def test_cri_errors_as_http_statuses(self) -> None:
        """NotFound is 404, ResourceExhausted 429 with Retry-After, others 500: gRPC's text."""
        self.runtime.fail("Exec", "no such container", "NOT_FOUND")
        self.send(b"POST /exec/default/web/main?output=1 HTTP/1.1")
        self.assertEqual(
            self.answer(), (404, b"rpc error: code = NotFound desc = no such container")
        )
        self.runtime.fail(
            "PortForward", "maximum number of in-flight requests exceeded", "RESOURCE_EXHAUSTED"
        )
        self.send(b"POST /portForward/default/web HTTP/1.1")
        self.assertEqual(self.answer()[0], 429)
        self.assertIn(b"\r\nRetry-After: 60\r\n", self.client.value())
        self.runtime.fail("Attach", "boom")
        self.send(b"POST /attach/default/web/main?output=1 HTTP/1.1")
        self.assertEqual(self.answer(), (500, b"rpc error: code = Unknown desc = boom"))

    def test_not_an_upgrade(self) -> None:
        """The kubelet's proxy requires an upgrade (after the runtime handed out its URL)."""
        self.send(b"POST /exec/default/web/main?output=1 HTTP/1.1", b"Content-Length: 0\r\n")
        self.assertEqual(self.answer(), (500, b"Upgrade request required\n"))
        self.assertEqual(self.backend.transports, [])

    def test_runtime_refusal_relayed(self) -> None:
        """containerd refusing a websocket v5 upgrade (403): relayed, so kubectl falls back."""
        self.send(
            b"GET /exec/default/web/main?output=1 HTTP/1.1",
            b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n"
            b"Sec-WebSocket-Key: a2V5a2V5a2V5a2V5a2V5a2U=\r\n",
        )
        self.assertIn(
            b"sec-websocket-protocol: v5.channel.k8s.io\r\n",
            self.backend.transports[0].value().lower(),
        )
        self.backend.respond(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        self.backend.protocols[0].connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.answer()[0], 403)

    def test_streaming_server_unreachable(self) -> None:
        """Nothing listening at the URL: the proxy's 500 with the dial error."""
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError

        class Refusing:
            def connect(self, factory: object) -> Any:
                return fail(ConnectionRefusedError())

        self.streaming._dial = lambda host, port: Refusing()  # type: ignore[assignment]
        self.send(b"POST /exec/default/web/main?output=1 HTTP/1.1")
        self.assertEqual(
            self.answer(), (500, b"dial tcp 127.0.0.1:10010: connect: connection refused\n")
        )

    def test_no_runtime(self) -> None:
        """A node without a runtime (yet): 501, as before."""
        self.streaming._runtime = lambda: None
        self.send(b"POST /exec/default/web/main?output=1 HTTP/1.1")
        self.assertEqual(self.answer()[0], 501)
