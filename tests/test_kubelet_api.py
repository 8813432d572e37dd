"""The kubelet's HTTPS API: host readers, the Summary, auth, routes, and a real listener."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import crypto
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from k3stw.apiserver.auth import User
from k3stw.kubelet import hostinfo
from k3stw.kubelet.api import (
    CPUUsageRate,
    KubeletAPIResource,
    KubeletAPIService,
    allow_apiserver,
    build_summary,
    forbidden_message,
    kubelet_routes,
    request_attributes,
    verified_user,
)
from k3stw.pki.certs import KeyPair, SubjectAltNames, Usage, new_ca, new_leaf
from k3stw.pki.tls import PinnedCAPolicy

NOW = datetime.datetime(2025, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)

PROC_STAT = """\
cpu  1000 20 300 50000 400 5 6 7 80 0
cpu0 500 10 150 25000 200 3 3 4 40 0
intr 1 2 3
ctxt 4242
btime 1740800000
processes 12345
"""

MEMINFO = """\
MemTotal:        8000000 kB
MemFree:         2000000 kB
MemAvailable:    5000000 kB
Inactive(file):  1000000 kB
AnonPages:       1500000 kB
HugePages_Total:       0
"""

VMSTAT = "nr_free_pages 500000\npgfault 987654\npgmajfault 321\n"

NET_DEV = "\n".join(
    [
        "Inter-|   Receive                |  Transmit",
        " face |bytes packets errs drop ...|bytes packets errs drop ...",
        "    lo: 5000 50 0 0 0 0 0 0 5000 50 0 0 0 0 0 0",
        "  eth0: 123456 1000 2 0 0 0 0 0 654321 900 3 0 0 0 0 0",
        "  wlan0: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0",
        "veth1234: 77 1 0 0 0 0 0 0 88 1 0 0 0 0 0 0",
    ]
)

ROUTE = """\
Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT
wlan0\t00000000\t0102000A\t0003\t0\t0\t600\t00000000\t0\t0\t0
"""


def write_proc(root: Path) -> Path:
    """A fake proc root with the files the readers read."""
    files = {
        "stat": PROC_STAT,
        "meminfo": MEMINFO,
        "vmstat": VMSTAT,
        "net/dev": NET_DEV,
        "net/route": ROUTE,
        "sys/kernel/pid_max": "4194304\n",
        "loadavg": "0.50 0.40 0.30 2/345 6789\n",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


class _PKI:
    """Throwaway CAs and the certificates the tests present."""

    def __init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self.server_ca = new_ca("k3s-server-ca@1", now)
        self.client_ca = new_ca("k3s-client-ca@1", now)
        self.stranger_ca = new_ca("k3s-client-ca@2", now)
        self.serving = new_leaf(
            self.server_ca,
            "node-a",
            Usage.SERVER,
            now,
            alt_names=SubjectAltNames.of(["node-a", "localhost", "127.0.0.1"]),
        )
        self.apiserver = new_leaf(
            self.client_ca, "system:apiserver", Usage.CLIENT, now, ["system:masters"]
        )
        self.named_apiserver = new_leaf(
            self.client_ca, "kube-apiserver-kubelet-client", Usage.CLIENT, now
        )
        self.node = new_leaf(
            self.client_ca, "system:node:other", Usage.CLIENT, now, ["system:nodes"]
        )
        self.stranger = new_leaf(
            self.stranger_ca, "system:apiserver", Usage.CLIENT, now, ["system:masters"]
        )
        self.server_as_client = new_leaf(
            self.client_ca, "system:apiserver", Usage.SERVER, now, ["system:masters"]
        )


_pki: _PKI | None = None


def pki() -> _PKI:
    global _pki
    if _pki is None:
        _pki = _PKI()
    return _pki


class HostUsageReaderTests(SynchronousTestCase):
    """The readers of /proc, against fixture files."""

    def setUp(self) -> None:
        self.proc = write_proc(Path(self.mktemp()))
        self.empty = Path(self.mktemp())
        self.empty.mkdir()

    def test_cpu_time_counts_busy_ticks_only(self) -> None:
        """user+nice+system+irq+softirq+steal ticks, in nanoseconds; btime is the boot."""
        times = hostinfo.read_cpu_times(self.proc, ticks_per_second=100)
        self.assertEqual(
            times, hostinfo.CPUTimes((1000 + 20 + 300 + 5 + 6 + 7) * 10**7, 1740800000)
        )

    def test_cpu_time_without_the_file_or_cpu_line(self) -> None:
        """No /proc/stat, or one without a cpu line, is no reading."""
        self.assertIsNone(hostinfo.read_cpu_times(self.empty))
        (self.empty / "stat").write_text("intr 1\n")
        self.assertIsNone(hostinfo.read_cpu_times(self.empty))

    def test_meminfo_in_bytes(self) -> None:
        """kB values become bytes; unit-less counts stay as they are."""
        memory = hostinfo.read_meminfo(self.proc)
        self.assertEqual(memory["MemTotal"], 8000000 * 1024)
        self.assertEqual(memory["Inactive(file)"], 1000000 * 1024)
        self.assertEqual(memory["HugePages_Total"], 0)
        self.assertEqual(hostinfo.read_meminfo(self.empty), {})

    def test_vmstat(self) -> None:
        """The page-fault counters are read by name."""
        vmstat = hostinfo.read_vmstat(self.proc)
        self.assertEqual((vmstat["pgfault"], vmstat["pgmajfault"]), (987654, 321))
        self.assertEqual(hostinfo.read_vmstat(self.empty), {})

    def test_interfaces_leave_out_loopback_and_veths(self) -> None:
        """/proc/net/dev's counters for the host's own interfaces."""
        interfaces = hostinfo.read_interfaces(self.proc)
        self.assertEqual(
            interfaces,
            [
                hostinfo.InterfaceCounters("eth0", 123456, 2, 654321, 3),
                hostinfo.InterfaceCounters("wlan0", 10, 0, 20, 0),
            ],
        )
        self.assertEqual(hostinfo.read_interfaces(self.empty), [])

    def test_process_limits(self) -> None:
        """pid_max, and the task total of /proc/loadavg."""
        self.assertEqual(hostinfo.read_process_limits(self.proc), (4194304, 345))

    def test_process_count_without_loadavg(self) -> None:
        """Without loadavg the numeric entries of the proc root are counted."""
        for pid in ("1", "42", "self"):
            (self.empty / pid).mkdir()
        self.assertEqual(hostinfo.read_process_limits(self.empty), (None, 2))

    def test_filesystem_usage_of_a_directory_not_yet_made(self) -> None:
        """statvfs of the nearest existing parent, in bytes and inodes."""
        stat = os.statvfs(self.empty)
        usage = hostinfo.filesystem_usage(self.empty / "not" / "yet")
        assert usage is not None
        self.assertEqual(usage.capacity_bytes, stat.f_blocks * stat.f_frsize)
        self.assertEqual(usage.inodes, stat.f_files)
        self.assertEqual(usage.inodes_used, usage.inodes - usage.inodes_free)
        self.assertLessEqual(usage.used_bytes, usage.capacity_bytes)

    def test_read_host_usage_takes_the_default_route_interface(self) -> None:
        """One reading gathers every reader's answer."""
        usage = hostinfo.read_host_usage(self.empty, self.proc)
        self.assertEqual(usage.default_interface, "wlan0")
        self.assertEqual(usage.pid_max, 4194304)
        self.assertIsNotNone(usage.cpu)
        self.assertIsNotNone(usage.filesystem)


def fixture_usage(**changes: Any) -> hostinfo.HostUsage:
    fields: dict[str, Any] = {
        "cpu": hostinfo.CPUTimes(5_000_000_000, 1740800000),
        "memory": {
            "MemTotal": 8000,
            "MemFree": 2000,
            "Inactive(file)": 1000,
            "AnonPages": 1500,
        },
        "vmstat": {"pgfault": 10, "pgmajfault": 1},
        "interfaces": [
            hostinfo.InterfaceCounters("eth0", 1, 2, 3, 4),
            hostinfo.InterfaceCounters("wlan0", 5, 6, 7, 8),
        ],
        "default_interface": "wlan0",
        "filesystem": hostinfo.FilesystemUsage(1000, 400, 550, 100, 60),
        "pid_max": 32768,
        "processes": 300,
    }
    fields.update(changes)
    return hostinfo.HostUsage(**fields)


class SummaryTests(SynchronousTestCase):
    """The Summary API document built from one reading."""

    def test_whole_summary(self) -> None:
        """Every section the kubelet reports for a node, with RFC 3339 UTC times."""
        at = NOW.timestamp()
        summary = build_summary("node-a", fixture_usage(), at, 250_000_000)
        time = "2025-03-01T12:00:00Z"
        iface = {"rxBytes": 5, "rxErrors": 6, "txBytes": 7, "txErrors": 8}
        self.assertEqual(
            summary,
            {
                "node": {
                    "nodeName": "node-a",
                    "systemContainers": [],
                    "startTime": "2025-03-01T03:33:20Z",
                    "cpu": {
                        "time": time,
                        "usageNanoCores": 250_000_000,
                        "usageCoreNanoSeconds": 5_000_000_000,
                    },
                    "memory": {
                        "time": time,
                        "availableBytes": 8000 - 5000,
                        "usageBytes": 6000,
                        "workingSetBytes": 5000,
                        "rssBytes": 1500,
                        "pageFaults": 10,
                        "majorPageFaults": 1,
                    },
                    "network": {
                        "time": time,
                        "name": "wlan0",
                        **iface,
                        "interfaces": [
                            {
                                "name": "eth0",
                                "rxBytes": 1,
                                "rxErrors": 2,
                                "txBytes": 3,
                                "txErrors": 4,
                            },
                            {"name": "wlan0", **iface},
                        ],
                    },
                    "fs": {
                        "time": time,
                        "availableBytes": 400,
                        "capacityBytes": 1000,
                        "usedBytes": 550,
                        "inodesFree": 60,
                        "inodes": 100,
                        "inodesUsed": 40,
                    },
                    "runtime": {
                        "imageFs": {
                            "time": time,
                            "availableBytes": 400,
                            "capacityBytes": 1000,
                            "usedBytes": 0,
                            "inodesFree": 60,
                            "inodes": 100,
                            "inodesUsed": 0,
                        }
                    },
                    "rlimit": {"time": time, "maxpid": 32768, "curproc": 300},
                },
                "pods": [],
            },
        )

    def test_only_cpu_and_memory(self) -> None:
        """?only_cpu_and_memory=true leaves out network, fs, runtime and rlimit."""
        node = build_summary("n", fixture_usage(), 0, None, only_cpu_and_memory=True)["node"]
        self.assertEqual(
            sorted(node), ["cpu", "memory", "nodeName", "startTime", "systemContainers"]
        )
        self.assertNotIn("usageNanoCores", node["cpu"])

    def test_unreadable_host_leaves_fields_out(self) -> None:
        """A missing file empties its fields, as Go's omitempty does with nil pointers."""
        usage = fixture_usage(
            cpu=None,
            memory={},
            interfaces=[],
            filesystem=None,
            pid_max=None,
            processes=None,
        )
        node = build_summary("n", usage, 0, None)["node"]
        time = "1970-01-01T00:00:00Z"
        self.assertIsNone(node["startTime"])
        self.assertEqual(node["cpu"], {"time": time})
        self.assertEqual(node["memory"], {"time": time})
        self.assertEqual(node["network"], {"time": time, "interfaces": []})
        self.assertEqual(node["fs"], {"time": time})
        self.assertEqual(node["rlimit"], {"time": time})

    def test_network_falls_back_to_the_first_interface(self) -> None:
        """Without a default route the first interface is inlined."""
        node = build_summary("n", fixture_usage(default_interface=None), 0, None)["node"]
        self.assertEqual(node["network"]["name"], "eth0")


class CPUUsageRateTests(SynchronousTestCase):
    """usageNanoCores from successive cumulative samples."""

    def test_rate_between_samples(self) -> None:
        """No rate from one sample; then the growth per second, in nanocores."""
        rate = CPUUsageRate(min_interval=1.0)
        self.assertIsNone(rate.observe(100.0, 0))
        self.assertEqual(rate.observe(102.0, 3_000_000_000), 1_500_000_000)
        self.assertEqual(rate.observe(112.0, 4_000_000_000), 100_000_000)

    def test_close_samples_repeat_the_last_rate(self) -> None:
        """A sample sooner than min_interval neither measures nor moves the base."""
        rate = CPUUsageRate(min_interval=1.0)
        rate.observe(0.0, 0)
        self.assertIsNone(rate.observe(0.5, 10**9))
        self.assertEqual(rate.observe(2.0, 2 * 10**9), 10**9)
        self.assertEqual(rate.observe(2.1, 9 * 10**9), 10**9)
        self.assertEqual(rate.observe(4.0, 4 * 10**9), 10**9)


class AuthenticationTests(SynchronousTestCase):
    """Client certificates, attributes and the authorizer."""

    def cas(self) -> list[x509.Certificate]:
        return [pki().client_ca.certificate]

    def test_certificate_from_the_client_ca(self) -> None:
        """CN is the user, O the groups."""
        user = verified_user(pki().apiserver.certificate, self.cas(), NOW_REAL())
        self.assertEqual(user, User("system:apiserver", ("system:masters",)))

    def test_certificates_that_do_not_authenticate(self) -> None:
        """Another CA's, a serving-only certificate, and one outside its validity."""
        now = NOW_REAL()
        self.assertIsNone(verified_user(pki().stranger.certificate, self.cas(), now))
        self.assertIsNone(verified_user(pki().server_as_client.certificate, self.cas(), now))
        later = now + datetime.timedelta(days=400)
        self.assertIsNone(verified_user(pki().apiserver.certificate, self.cas(), later))
        earlier = now - datetime.timedelta(days=1)
        self.assertIsNone(verified_user(pki().apiserver.certificate, self.cas(), earlier))

    def test_attributes_from_method_and_path(self) -> None:
        """The kubelet's verbs and subresources."""
        self.assertEqual(request_attributes(b"GET", b"/healthz").subresources, ("proxy",))
        self.assertEqual(request_attributes(b"GET", b"/pods").subresources, ("proxy",))
        self.assertEqual(request_attributes(b"GET", b"/stats/summary").subresources, ("stats",))
        self.assertEqual(request_attributes(b"GET", b"/stats").subresources, ("stats",))
        self.assertEqual(request_attributes(b"GET", b"/statsx").subresources, ("proxy",))
        self.assertEqual(
            request_attributes(b"GET", b"/metrics/cadvisor").subresources, ("metrics",)
        )
        self.assertEqual(request_attributes(b"GET", b"/logs/syslog").subresources, ("log",))
        self.assertEqual(request_attributes(b"POST", b"/exec/a/b/c").verb, "create")
        self.assertEqual(request_attributes(b"DELETE", b"/x").verb, "delete")
        self.assertEqual(request_attributes(b"HEAD", b"/healthz").verb, "")

    def test_authorizer(self) -> None:
        """system:masters and the apiserver's kubelet-client names; no one else."""
        attributes = request_attributes(b"GET", b"/pods")
        self.assertTrue(allow_apiserver(User("system:apiserver", ("system:masters",)), attributes))
        self.assertTrue(allow_apiserver(User("kube-apiserver-kubelet-client", ()), attributes))
        self.assertTrue(allow_apiserver(User("system:kube-apiserver", ()), attributes))
        self.assertFalse(allow_apiserver(User("system:node:other", ("system:nodes",)), attributes))

    def test_forbidden_wording(self) -> None:
        """The kubelet's 403 text."""
        self.assertEqual(
            forbidden_message(
                User("system:node:other", ()), request_attributes(b"GET", b"/stats/summary")
            ),
            "Forbidden (user=system:node:other, verb=get, resource=nodes, "
            "subresource(s)=[stats])\n",
        )


def NOW_REAL() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


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
        self.clock.advance(NOW_REAL().timestamp())
        self.pods: list[dict[str, Any]] = [{"metadata": {"name": "p", "namespace": "default"}}]
        self.summaries: list[bool] = []

        def summary(only: bool) -> dict[str, Any]:
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
        request.path = path
        request.uri = path
        request.args = args or {}
        if not anonymous:
            presented = presented or pki().apiserver
        request.transport = _TLSTransport(presented)
        resource = getChildForRequest(root or self.root, request)
        body = resource.render(request)
        assert isinstance(body, bytes)
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
            self.clock, pki().client_ca.certificate_pem, kubelet_routes(None, lambda _: {})
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
        self.assertEqual(port.getHost().port, 10250)
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
        node = self.service.summary()["node"]
        ticks = os.sysconf("SC_CLK_TCK")
        self.assertEqual(node["cpu"]["usageNanoCores"], 200 * 10**9 // ticks // 10)
        self.assertEqual(node["cpu"]["usageCoreNanoSeconds"], 1538 * 10**9 // ticks)
        self.assertEqual(node["nodeName"], "node-a")
        self.assertEqual(node["memory"]["usageBytes"], 6000000 * 1024)
        self.assertEqual(node["network"]["name"], "wlan0")
        self.assertEqual(node["rlimit"]["curproc"], 345)
        self.assertGreater(node["fs"]["capacityBytes"], 0)
        self.successResultOf(self.service.stopService())


class KubeletAPIOnLoopbackTests(TestCase):
    """Real HTTPS requests to the service on 127.0.0.1."""

    def setUp(self) -> Deferred[None]:
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
