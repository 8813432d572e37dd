"""The kubelet's HTTPS API: routes, auth answers, the service, and a real listener."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

from OpenSSL import crypto
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from k3stw.kubelet.api import KubeletAPIResource, KubeletAPIService, kubelet_routes
from k3stw.kubelet.cri.runtime import CRIError
from k3stw.pki.certs import KeyPair
from k3stw.pki.tls import PinnedCAPolicy
from tests.support.kubelet import NOW, PROC_STAT, pki, wall_clock_now, write_proc


class _TLSTransport:
    """What a resource sees of a TLS connection: the peer's certificate."""

    def __init__(self, presented: KeyPair | None) -> None:
        self._presented = presented

    def getPeerCertificate(self) -> crypto.X509 | None:
        if self._presented is None:
            return None
        return crypto.X509.from_cryptography(self._presented.certificate)


class ResourceTests(SynchronousTestCase):
    """Routing and auth decisions of the resource tree, without sockets."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(wall_clock_now().timestamp())
        self.pods: list[dict[str, Any]] = [{"metadata": {"name": "p", "namespace": "default"}}]
        self.summaries: list[bool] = []

        async def summary(only: bool) -> dict[str, Any]:
            self.summaries.append(only)
            return {"node": {"nodeName": "node-a"}, "pods": []}

        self.root = KubeletAPIResource(
            self.clock,
            pki().client_ca.certificate_pem,
            kubelet_routes(lambda: self.pods, summary),
        )

    def request(
        self,
        path: bytes,
        method: bytes = b"GET",
        presented: KeyPair | None = None,
        args: dict[bytes, list[bytes]] | None = None,
        root: IResource | None = None,
        anonymous: bool = False,
    ) -> DummyRequest:
        request = DummyRequest(path.lstrip(b"/").split(b"/"))
        request.method = method
        request.path = path  # type: ignore[attr-defined]
        request.uri = path
        request.args = args or {}
        if not anonymous:
            presented = presented or pki().apiserver
        request.transport = _TLSTransport(presented)  # type: ignore[attr-defined]
        resource = getChildForRequest(root or self.root, request)
        body = resource.render(request)
        if isinstance(body, bytes):  # not NOT_DONE_YET: answered already
            request.write(body)
            request.finish()
        return request

    def answer(self, request: DummyRequest) -> tuple[int | None, bytes]:
        return request.responseCode, b"".join(request.written)

    def header(self, request: DummyRequest, name: bytes) -> bytes | None:
        return request.responseHeaders.getRawHeaders(name, [None])[0]

    def test_healthz(self) -> None:
        """ok, as text."""
        request = self.request(b"/healthz")
        self.assertEqual(self.answer(request), (200, b"ok"))
        self.assertEqual(self.header(request, b"content-type"), b"text/plain; charset=utf-8")

    def test_head_is_get_without_a_body_choice(self) -> None:
        """HEAD is answered as GET (the server drops the body)."""
        self.assertEqual(self.request(b"/healthz", b"HEAD").responseCode, 200)

    def test_pods(self) -> None:
        """A PodList of what the pods callable returns."""
        request = self.request(b"/pods")
        code, body = self.answer(request)
        self.assertEqual(code, 200)
        self.assertEqual(self.header(request, b"content-type"), b"application/json")
        self.assertEqual(
            json.loads(body),
            {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": self.pods},
        )

    def test_no_pods_callable(self) -> None:
        """Without a runtime the PodList is empty."""
        root = KubeletAPIResource(
            self.clock, pki().client_ca.certificate_pem, kubelet_routes(None, lambda _: succeed({}))
        )
        body = self.answer(self.request(b"/pods", root=root))[1]
        self.assertEqual(json.loads(body)["items"], [])

    def test_summary_and_its_query(self) -> None:
        """/stats/summary renders the summary; only_cpu_and_memory=true is passed on."""
        code, body = self.answer(self.request(b"/stats/summary"))
        self.assertEqual((code, json.loads(body)["node"]["nodeName"]), (200, "node-a"))
        self.request(b"/stats/summary", args={b"only_cpu_and_memory": [b"true"]})
        self.request(b"/stats/summary", args={b"only_cpu_and_memory": [b"false"]})
        self.assertEqual(self.summaries, [False, True, False])

    def test_summary_failing(self) -> None:
        """The runtime's failure is the kubelet's 500 ``Internal Error: ...``."""

        async def failing(only: bool) -> dict[str, Any]:
            raise RuntimeError("failed to list pod stats: CRI ListPodSandbox failed")

        root = KubeletAPIResource(
            self.clock, pki().client_ca.certificate_pem, kubelet_routes(None, failing)
        )
        code, body = self.answer(self.request(b"/stats/summary", root=root))
        self.assertEqual(
            (code, body),
            (500, b"Internal Error: failed to list pod stats: CRI ListPodSandbox failed"),
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        request = self.request(b"/metrics/resource", root=root)
        self.assertEqual(self.answer(request)[0], 200)
        self.assertTrue(self.answer(request)[1].endswith(b"\nresource_scrape_error 1\n"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        code, body = self.answer(self.request(b"/metrics/cadvisor", root=root))
        self.assertEqual(
            (code, body),
            (500, b"Internal Error: failed to list pod stats: CRI ListPodSandbox failed"),
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_resource_metrics(self) -> None:
        """/metrics/resource: the CPU-and-memory summary as Prometheus text."""
        request = self.request(b"/metrics/resource")
        self.assertEqual(
            self.answer(request),
            (
                200,
                b"# HELP resource_scrape_error [STABLE] 1 if"
                b" there was an error while getting container metrics, 0 otherwise\n"
                b"# TYPE resource_scrape_error gauge\nresource_scrape_error 0\n",
            ),
        )
        self.assertEqual(
            self.header(request, b"content-type"), b"text/plain; version=0.0.4; charset=utf-8"
        )
        self.assertEqual(self.summaries, [True])

    def test_cadvisor_metrics(self) -> None:
        """/metrics/cadvisor: the whole summary (no pods here: no series) as Prometheus text."""
        request = self.request(b"/metrics/cadvisor")
        self.assertEqual(self.answer(request), (200, b"\n"))
        self.assertEqual(
            self.header(request, b"content-type"), b"text/plain; version=0.0.4; charset=utf-8"
        )
        self.assertEqual(self.summaries, [False])

    def test_unknown_paths(self) -> None:
        """Go's mux wording for what no route serves."""
        for path in (b"/", b"/nope", b"/stats", b"/stats/other", b"/healthz/x", b"/pods/"):
            self.assertEqual(self.answer(self.request(path)), (404, b"404 page not found\n"), path)

    def test_wrong_method(self) -> None:
        """405 with the allowed methods."""
        request = self.request(b"/pods", b"POST")
        self.assertEqual(self.answer(request), (405, b"405: Method Not Allowed"))
        self.assertEqual(self.header(request, b"allow"), b"GET, HEAD")
        self.assertEqual(self.request(b"/healthz", b"DELETE").responseCode, 405)

    def test_streaming_endpoints_are_not_there_yet(self) -> None:
        """exec, logs, port-forward: 501 until a runtime exists."""
        for path in (b"/exec/ns/pod/c", b"/containerLogs/ns/pod/c", b"/portForward/ns/pod"):
            self.assertEqual(self.request(path, b"POST").responseCode, 501)

    def test_unauthenticated(self) -> None:
        """No certificate, or one from another CA: the kubelet's 401, even for unknown paths."""
        for presented in (None, pki().stranger):
            for path in (b"/healthz", b"/nope"):
                request = self.request(path, presented=presented, anonymous=presented is None)
                self.assertEqual(self.answer(request), (401, b"Unauthorized"))

    def test_forbidden(self) -> None:
        """A node's certificate authenticates but may not use another node's kubelet."""
        request = self.request(b"/pods", presented=pki().node)
        self.assertEqual(
            self.answer(request),
            (
                403,
                b"Forbidden (user=system:node:other, verb=get, resource=nodes, "
                b"subresource(s)=[proxy])\n",
            ),
        )

    def test_apiserver_by_name(self) -> None:
        """kube-apiserver-kubelet-client is allowed without system:masters."""
        self.assertEqual(
            self.request(b"/healthz", presented=pki().named_apiserver).responseCode, 200
        )


class ServiceTests(SynchronousTestCase):
    """The service on a memory reactor: port, listening and summaries from the host."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOW.timestamp())
        self.proc = write_proc(Path(self.mktemp()))
        self.service = KubeletAPIService(
            self.reactor,
            node_name="node-a",
            serving=pki().serving,
            client_ca=pki().client_ca.certificate_pem,
            port=0,
            data_dir=Path(self.mktemp()),
            proc=self.proc,
        )

    def test_listens_on_the_configured_address(self) -> None:
        """An SSL listener on bind_host; the port is known once listening."""
        service = KubeletAPIService(
            self.reactor,
            node_name="node-a",
            serving=pki().serving,
            client_ca=pki().client_ca.certificate_pem,
            data_dir=Path(self.mktemp()),
            proc=self.proc,
        )
        self.assertEqual(service.endpoint_port, 10250)
        waiting = service.when_listening()
        self.assertNoResult(waiting)
        service.startService()
        port = self.successResultOf(waiting)
        self.assertEqual(cast(IPv4Address, port.getHost()).port, 10250)
        self.assertEqual(self.successResultOf(service.when_listening()), port)
        self.assertEqual(self.reactor.sslServers[0][0], 10250)
        self.assertEqual(self.reactor.sslServers[0][4], "127.0.0.1")
        self.successResultOf(service.stopService())

    def tearDown(self) -> None:
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_listen_failure_reaches_waiters(self) -> None:
        """A port that cannot be had fails when_listening, before and after the attempt."""

        def refuse(port: int, *args: object, **kwargs: object) -> None:
            raise CannotListenError("127.0.0.1", port, OSError("in use"))

        self.reactor.listenSSL = refuse  # type: ignore[method-assign]
        waiting = self.service.when_listening()
        self.service.startService()
        self.failureResultOf(waiting, CannotListenError)
        self.failureResultOf(self.service.when_listening(), CannotListenError)
        self.assertEqual(self.service.endpoint_port, 0)
        self.flushLoggedErrors(CannotListenError)

    def test_summary_reads_the_host_and_rates_cpu(self) -> None:
        """The first sample is taken at start; later summaries have a CPU rate."""
        self.service.startService()
        stat = self.proc / "stat"
        stat.write_text(PROC_STAT.replace("cpu  1000", "cpu  1200"))
        self.reactor.advance(10)
        node = self.successResultOf(Deferred.fromCoroutine(self.service.summary()))["node"]
        ticks = os.sysconf("SC_CLK_TCK")
        self.assertEqual(node["cpu"]["usageNanoCores"], 200 * 10**9 // ticks // 10)
        self.assertEqual(node["cpu"]["usageCoreNanoSeconds"], 1538 * 10**9 // ticks)
        self.assertEqual(node["nodeName"], "node-a")
        self.assertEqual(node["memory"]["usageBytes"], 6000000 * 1024)
        self.assertEqual(node["network"]["name"], "wlan0")
        self.assertEqual(node["rlimit"]["curproc"], 345)
        self.assertGreater(node["fs"]["capacityBytes"], 0)
        self.successResultOf(self.service.stopService())

    def test_summary_with_the_pods(self) -> None:
        """The pods' stats and the runtime's image filesystem join the node's."""
        asked: list[tuple[float, bool]] = []
        image_fs = {"time": "t", "usedBytes": 5}

        async def pod_stats(
            now: float, only: bool
        ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
            asked.append((now, only))
            return [{"podRef": {"name": "p"}}], None if only else image_fs

        self.service.pod_stats = pod_stats
        summary = self.successResultOf(Deferred.fromCoroutine(self.service.summary()))
        self.assertEqual(summary["pods"], [{"podRef": {"name": "p"}}])
        self.assertEqual(summary["node"]["runtime"]["imageFs"], image_fs)
        self.successResultOf(Deferred.fromCoroutine(self.service.summary(True)))
        self.assertEqual(asked, [(NOW.timestamp(), False), (NOW.timestamp(), True)])

    def test_summary_when_the_runtime_fails(self) -> None:
        """The kubelet's words: failed to list pod stats, and why."""

        async def pod_stats(
            now: float, only: bool
        ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
            raise CRIError("ListPodSandbox", "unix:///run/c.sock", "UNAVAILABLE", "gone")

        self.service.pod_stats = pod_stats
        failure = self.failureResultOf(Deferred.fromCoroutine(self.service.summary()))
        self.assertEqual(
            str(failure.value),
            "failed to list pod stats: CRI ListPodSandbox on unix:///run/c.sock failed:"
            " rpc error: code = Unavailable desc = gone",
        )


class KubeletAPIOnLoopbackTests(TestCase):
    """Real HTTPS requests to the service on 127.0.0.1."""

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self.service = KubeletAPIService(
            global_reactor,
            node_name="node-a",
            serving=pki().serving,
            client_ca=pki().client_ca.certificate_pem,
            port=0,
            data_dir=Path(self.mktemp()),
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        await self.service.when_listening()
        self.pool = HTTPConnectionPool(global_reactor, persistent=False)

    async def get(self, path: str, presented: KeyPair | None) -> tuple[int, bytes]:
        agent = Agent(
            global_reactor,
            PinnedCAPolicy(pki().server_ca.certificate_pem, presented),
            pool=self.pool,
        )
        url = f"https://127.0.0.1:{self.service.endpoint_port}{path}"
        response = await agent.request(b"GET", url.encode())
        return response.code, await readBody(response)

    async def test_apiserver_reads_every_endpoint(self) -> None:
        """A system:masters certificate gets /healthz, /pods and a plausible summary."""
        self.assertNotEqual(self.service.endpoint_port, 0)
        self.assertEqual(await self.get("/healthz", pki().apiserver), (200, b"ok"))
        code, body = await self.get("/pods", pki().apiserver)
        self.assertEqual((code, json.loads(body)["kind"]), (200, "PodList"))
        code, body = await self.get("/stats/summary", pki().apiserver)
        self.assertEqual(code, 200)
        node = json.loads(body)["node"]
        self.assertEqual(node["nodeName"], "node-a")
        self.assertGreater(node["cpu"]["usageCoreNanoSeconds"], 0)
        self.assertGreaterEqual(node["cpu"].get("usageNanoCores", 0), 0)
        self.assertGreater(node["memory"]["usageBytes"], 0)
        self.assertGreater(node["memory"]["availableBytes"], 0)
        self.assertLessEqual(node["fs"]["usedBytes"], node["fs"]["capacityBytes"])
        self.assertGreater(node["rlimit"]["maxpid"], node["rlimit"]["curproc"])
        self.assertTrue(node["cpu"]["time"].endswith("Z"))

    async def test_a_components_metrics_page_is_served_under_metrics(self) -> None:
        """A page added by a node component (the Ingress) answers at /metrics/<name>."""
        self.assertEqual((await self.get("/metrics/ingress", pki().apiserver))[0], 404)
        page = Resource()
        page.isLeaf = True
        page.render_GET = lambda request: b"k3stw_ingress_requests_total 1\n"  # type: ignore[attr-defined]
        self.service.add_metrics_page("ingress", page)
        self.assertEqual(
            await self.get("/metrics/ingress", pki().apiserver),
            (200, b"k3stw_ingress_requests_total 1\n"),
        )

    async def test_strangers_are_unauthorized(self) -> None:
        """No certificate, or one from another CA: 401 Unauthorized."""
        self.assertEqual(await self.get("/healthz", None), (401, b"Unauthorized"))
        self.assertEqual(await self.get("/healthz", pki().stranger), (401, b"Unauthorized"))

    async def test_other_nodes_are_forbidden(self) -> None:
        """system:node:other authenticates and is refused."""
        self.assertEqual(
            await self.get("/pods", pki().node),
            (
                403,
                b"Forbidden (user=system:node:other, verb=get, resource=nodes, "
                b"subresource(s)=[proxy])\n",
            ),
        )
