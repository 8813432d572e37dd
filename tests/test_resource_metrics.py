"""
The resource metrics API (``metrics.k8s.io/v1beta1``) in memory: the API
server's routes on the in-memory store and a Clock, with the node proxy's far
end replaced by kubelets answering the kubelet's own summary documents; and
L{NodeProxy.fetch} against a kubelet connection that is a StringTransport.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver import discovery
from k3stw.apiserver.metricsapi import (
    CACHE_SECONDS,
    MAX_WINDOW,
    MIN_WINDOW,
    RESOURCES,
    SCRAPE_TIMEOUT,
    SUMMARY_PATH,
    ResourceMetrics,
    Sample,
    SummaryScraper,
    parse_summary,
    usage,
)
from k3stw.apiserver.registry import Registry
from k3stw.apiserver.status import StatusError
from k3stw.controllers.garbage import GarbageCollector
from k3stw.kubelet.stats import build_summary
from k3stw.machinery.identity import User
from tests.support.apiserver import START, MemoryAPI, MemoryServer
from tests.support.kubelet import cpu_and_memory
from tests.test_node_proxy import InMemoryNodeProxy, node

GIB = 1024**3
BOOT = 1_700_000_000
ADMIN = User("admin", ("system:masters",))
NOBODY = User("nobody", ())
#: How fast each container's CPU time grows, in nanocores, and its working set.
ContainerRates = dict[str, tuple[int, int]]


def pod_stats(namespace: str, name: str, uid: str, containers: ContainerRates, at: float) -> Any:
    """A pod's entry in a Summary, as the kubelet writes it (containers' CPU grows from 0)."""
    return {
        "podRef": {"name": name, "namespace": namespace, "uid": uid},
        "startTime": "2026-01-01T00:00:00Z",
        "containers": [
            {
                "name": container,
                "startTime": "2026-01-01T00:00:00Z",
                "cpu": {"usageCoreNanoSeconds": int(rate * at)},
                "memory": {"workingSetBytes": memory},
            }
            for container, (rate, memory) in containers.items()
        ],
    }


class MemoryKubelets:
    """
    The node proxy's far end: each node's kubelet, answering its summary
    (built by the kubelet's own L{build_summary}) from a CPU rate and a
    working set the test sets; CPU time grows with the clock.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rates: dict[str, tuple[int, int]] = {}
        self.pods: dict[str, list[tuple[str, str, str, ContainerRates]]] = {}
        self.asked: list[tuple[str, bytes]] = []
        #: Nodes whose kubelet never answers.
        self.silent: set[str] = set()
        #: Requests held until the test releases them, when holding.
        self.holding = False
        self.held: list[Deferred[None]] = []
        self.boot = BOOT

    async def fetch(self, node_name: str, path: bytes, limit: int) -> bytes:
        self.asked.append((node_name, path))
        if node_name in self.silent:
            await Deferred()
        if self.holding:
            held: Deferred[None] = Deferred()
            self.held.append(held)
            await held
        if node_name not in self.rates:
            raise StatusError(503, "error dialing backend: no tunnel")
        rate, memory = self.rates[node_name]
        now = self.clock.seconds()
        host = cpu_and_memory(int(rate * (now - BOOT)), self.boot, memory)
        summary = build_summary(node_name, host, now, None, only_cpu_and_memory=True)
        summary["pods"] = [pod_stats(*pod, now - BOOT) for pod in self.pods.get(node_name, [])]
        return json.dumps(summary).encode()

    def release(self) -> None:
        held, self.held = self.held, []
        for waiting in held:
            waiting.callback(None)


class ResourceMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = MemoryServer(self, self.clock)
        self.kubelets = MemoryKubelets(self.clock)
        self.registry = Registry.serving((*self.server.registry, *RESOURCES))
        self.scraper = SummaryScraper(self.kubelets.fetch, self.clock)
        self.api = MemoryAPI(
            self.server,
            {"admin": ADMIN, "nobody": NOBODY},
            registry=self.registry,
            resource_metrics=ResourceMetrics(self.server.store, self.scraper, self.clock),
        )

    def add_node(self, name: str, cpu: int, memory: int, **labels: str) -> None:
        obj: dict[str, Any] = {"metadata": {"name": name}}
        if labels:
            obj["metadata"]["labels"] = labels
        self.server.create("", "nodes", obj)
        self.kubelets.rates[name] = (cpu, memory)

    def add_pod(
        self, namespace: str, name: str, node_name: str, containers: ContainerRates, **labels: str
    ) -> str:
        """A pod bound to C{node_name}, which its kubelet reports; its uid."""
        specs = [{"name": c, "image": "nginx"} for c in containers]
        obj: dict[str, Any] = {
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node_name, "containers": specs},
        }
        uid: str = self.server.create("", "pods", obj, namespace)["metadata"]["uid"]
        self.kubelets.pods.setdefault(node_name, []).append((namespace, name, uid, containers))
        return uid

    def send(self, path: str, method: bytes = b"GET", user: str = "admin", accept: str = "") -> Any:
        """Start a request; L{finish} waits for its answer."""
        return self.api.send(
            method, path, token=user, headers={"accept": accept} if accept else None
        )

    def finish(self, made: Any) -> tuple[int, Any]:
        """Run the clock to each timer due until the request is answered."""
        while not made.finished:
            calls = self.clock.getDelayedCalls()
            self.assertTrue(calls, "the request waits on nothing the clock runs")
            self.clock.advance(min(c.getTime() for c in calls) - self.clock.seconds())
        text = b"".join(made.written)
        return made.code, json.loads(text)

    def ask(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return self.finish(self.send(path, **kwargs))

    def ok(self, path: str, **kwargs: Any) -> Any:
        code, body = self.ask(path, **kwargs)
        self.assertEqual(code, 200, body)
        return body

    # Discovery

    def test_discovery_lists_the_group_as_metrics_server_registers_it(self) -> None:
        """/apis, /apis/metrics.k8s.io and its resource list show nodes and pods, get and list."""
        groups = self.ok("/apis")["groups"]
        metrics = [g for g in groups if g["name"] == "metrics.k8s.io"]
        version = {"groupVersion": "metrics.k8s.io/v1beta1", "version": "v1beta1"}
        self.assertEqual(
            metrics,
            [{"name": "metrics.k8s.io", "versions": [version], "preferredVersion": version}],
        )
        self.assertEqual(self.ok("/apis/metrics.k8s.io")["preferredVersion"], version)
        self.assertEqual(
            self.ok("/apis/metrics.k8s.io/v1beta1"),
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": "metrics.k8s.io/v1beta1",
                "resources": [
                    {
                        "name": "nodes",
                        "singularName": "",
                        "namespaced": False,
                        "kind": "NodeMetrics",
                        "verbs": ["get", "list"],
                    },
                    {
                        "name": "pods",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "PodMetrics",
                        "verbs": ["get", "list"],
                    },
                ],
            },
        )

    def test_aggregated_discovery(self) -> None:
        """kubectl's aggregated discovery carries the group too."""
        found = discovery.aggregated_discovery(self.registry, core=False)
        (group,) = [g for g in found["items"] if g["metadata"]["name"] == "metrics.k8s.io"]
        (version,) = group["versions"]
        self.assertEqual(version["version"], "v1beta1")
        resources = {r["resource"]: r for r in version["resources"]}
        self.assertEqual(resources["nodes"]["scope"], "Cluster")
        self.assertEqual(resources["pods"]["scope"], "Namespaced")
        self.assertEqual(
            resources["pods"]["responseKind"],
            {"group": "metrics.k8s.io", "version": "v1beta1", "kind": "PodMetrics"},
        )
        self.assertEqual(resources["nodes"]["verbs"], ["get", "list"])

    def test_openapi_names_only_the_served_operations(self) -> None:
        """The group's OpenAPI paths offer GET only: nothing to create, patch or delete."""
        document = discovery._gv_document(self.registry, "metrics.k8s.io", "v1beta1")
        paths = document["paths"]
        self.assertEqual(
            {path: sorted(operations) for path, operations in paths.items()},
            {
                "/apis/metrics.k8s.io/v1beta1/nodes": ["get"],
                "/apis/metrics.k8s.io/v1beta1/nodes/{name}": ["get"],
                "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods": ["get"],
                "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/{name}": ["get"],
            },
        )

    # Nodes

    def test_node_metrics_list(self) -> None:
        """
        Each node's CPU (nanocores, from the growth of its CPU time) and working
        set (Ki), its labels, the window between the two samples, sorted by name.
        """
        self.add_node("server", 250_000_000, 1_000_000 * 1024, role="control-plane")
        self.add_node("agent", 1_500_000_000, 3 * GIB)
        listed = self.ok("/apis/metrics.k8s.io/v1beta1/nodes")
        self.assertEqual(listed["kind"], "NodeMetricsList")
        self.assertEqual(listed["apiVersion"], "metrics.k8s.io/v1beta1")
        self.assertEqual(listed["metadata"], {})
        now = "2027-01-15T08:00:01Z"
        self.assertEqual(
            listed["items"],
            [
                {
                    "metadata": {"name": "agent", "creationTimestamp": now},
                    "timestamp": now,
                    "window": "1s",
                    "usage": {"cpu": "1500m", "memory": "3Gi"},
                },
                {
                    "metadata": {
                        "name": "server",
                        "creationTimestamp": now,
                        "labels": {"role": "control-plane"},
                    },
                    "timestamp": now,
                    "window": "1s",
                    "usage": {"cpu": "250m", "memory": "1000000Ki"},
                },
            ],
        )

    def test_cold_nodes_are_sampled_twice_one_second_apart(self) -> None:
        """Without a recent sample, a second is taken 1 s after the first: two reads each."""
        self.add_node("server", 10, 1024)
        self.ok("/apis/metrics.k8s.io/v1beta1/nodes")
        self.assertEqual(self.kubelets.asked, [("server", SUMMARY_PATH)] * 2)
        self.assertEqual(self.clock.seconds(), START + MIN_WINDOW)

    def test_samples_are_kept_for_the_cache_time(self) -> None:
        """
        Within the cache time nothing is read; past it one read per node, and
        the window runs from the previous sample.
        """
        self.add_node("server", 123_456_789, 1024)
        self.ok("/apis/metrics.k8s.io/v1beta1/nodes")
        self.clock.advance(CACHE_SECONDS - 0.5)
        self.ok("/apis/metrics.k8s.io/v1beta1/nodes/server")
        self.assertEqual(len(self.kubelets.asked), 2)
        self.clock.advance(0.5)
        self.kubelets.rates["server"] = (123_456_789, 2048)
        got = self.ok("/apis/metrics.k8s.io/v1beta1/nodes/server")
        self.assertEqual(len(self.kubelets.asked), 3)
        self.assertEqual(got["window"], "10s")
        self.assertEqual(got["usage"], {"cpu": "123456789n", "memory": "2Ki"})

    def test_an_old_sample_is_not_measured_from(self) -> None:
        """Past the longest window, two fresh samples are taken again."""
        self.add_node("server", 1_000, 1024)
        self.ok("/apis/metrics.k8s.io/v1beta1/nodes")
        self.clock.advance(MAX_WINDOW + 1)
        got = self.ok("/apis/metrics.k8s.io/v1beta1/nodes/server")
        self.assertEqual(got["window"], "1s")
        self.assertEqual(len(self.kubelets.asked), 4)

    def test_nodes_are_scraped_in_parallel(self) -> None:
        """Every node's kubelet is asked before any answers."""
        for name in ("a", "b", "c"):
            self.add_node(name, 1, 1024)
        self.kubelets.holding = True
        made = self.send("/apis/metrics.k8s.io/v1beta1/nodes")
        self.assertEqual(len(self.kubelets.held), 3)
        self.kubelets.holding = False
        self.kubelets.release()
        code, listed = self.finish(made)
        self.assertEqual(code, 200)
        self.assertEqual([i["metadata"]["name"] for i in listed["items"]], ["a", "b", "c"])

    def test_concurrent_requests_share_one_scrape(self) -> None:
        """Two requests while a node is being read wait for the same read."""
        self.add_node("server", 1, 1024)
        self.kubelets.holding = True
        first = self.send("/apis/metrics.k8s.io/v1beta1/nodes")
        second = self.send("/apis/metrics.k8s.io/v1beta1/nodes/server")
        self.assertEqual(len(self.kubelets.held), 1)
        self.kubelets.holding = False
        self.kubelets.release()
        self.assertEqual(self.finish(first)[0], 200)
        self.assertEqual(self.finish(second)[0], 200)
        self.assertEqual(len(self.kubelets.asked), 2)

    def test_a_node_that_does_not_answer_is_left_out(self) -> None:
        """
        A silent kubelet is given up on after the timeout: left out of the
        list, a 404 on get, and not asked again within the cache time.
        """
        self.add_node("server", 1, 1024)
        self.add_node("agent", 1, 1024)
        self.kubelets.silent.add("agent")
        started = self.clock.seconds()
        listed = self.ok("/apis/metrics.k8s.io/v1beta1/nodes")
        self.assertEqual(self.clock.seconds() - started, SCRAPE_TIMEOUT)
        self.assertEqual([i["metadata"]["name"] for i in listed["items"]], ["server"])
        code, status = self.ask("/apis/metrics.k8s.io/v1beta1/nodes/agent")
        self.assertEqual(code, 404)
        self.assertEqual(status["message"], 'nodemetrics.metrics.k8s.io "agent" not found')
        self.assertEqual(status["reason"], "NotFound")
        self.assertEqual(
            status["details"], {"name": "agent", "group": "metrics.k8s.io", "kind": "nodemetrics"}
        )
        self.assertEqual([n for n, _ in self.kubelets.asked].count("agent"), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_failing_kubelet_is_left_out(self) -> None:
        """A node whose kubelet cannot be dialled (no tunnel) is left out."""
        self.add_node("server", 1, 1024)
        self.server.create("", "nodes", {"metadata": {"name": "gone"}})
        listed = self.ok("/apis/metrics.k8s.io/v1beta1/nodes")
        self.assertEqual([i["metadata"]["name"] for i in listed["items"]], ["server"])

    def test_a_restarted_node_is_left_out_until_measured_again(self) -> None:
        """Across a reboot the CPU time counts anew: no figures from those two samples."""
        self.add_node("server", 1_000, 1024)
        self.ok("/apis/metrics.k8s.io/v1beta1/nodes")
        self.clock.advance(CACHE_SECONDS)
        self.kubelets.boot = BOOT + 100
        self.assertEqual(self.ok("/apis/metrics.k8s.io/v1beta1/nodes")["items"], [])
        self.clock.advance(CACHE_SECONDS)
        self.assertEqual(len(self.ok("/apis/metrics.k8s.io/v1beta1/nodes")["items"]), 1)

    def test_an_unknown_node(self) -> None:
        """A node that does not exist: the node lister's 404, as metrics-server answers."""
        code, status = self.ask("/apis/metrics.k8s.io/v1beta1/nodes/nope")
        self.assertEqual(code, 404)
        self.assertEqual(status["message"], 'node "nope" not found')
        self.assertEqual(self.kubelets.asked, [])

    def test_selectors(self) -> None:
        """labelSelector selects by the node's labels, fieldSelector by metadata.name only."""
        self.add_node("a", 1, 1024, pool="x")
        self.add_node("b", 1, 1024, pool="y")
        listed = self.ok("/apis/metrics.k8s.io/v1beta1/nodes?labelSelector=pool%3Dy")
        self.assertEqual([i["metadata"]["name"] for i in listed["items"]], ["b"])
        self.assertEqual([n for n, _ in self.kubelets.asked], ["b", "b"])
        listed = self.ok("/apis/metrics.k8s.io/v1beta1/nodes?fieldSelector=metadata.name%3Da")
        self.assertEqual([i["metadata"]["name"] for i in listed["items"]], ["a"])
        code, status = self.ask("/apis/metrics.k8s.io/v1beta1/nodes?fieldSelector=spec.x%3Dy")
        self.assertEqual(code, 400)
        self.assertEqual(
            status["message"],
            '"spec.x" is not a known field selector: only "metadata.name", "metadata.namespace"',
        )

    def test_table(self) -> None:
        """kubectl get's Table: Name, cpu, memory and Window, as metrics-server prints them."""
        self.add_node("server", 5_000_000, 2 * GIB)
        table = self.ok(
            "/apis/metrics.k8s.io/v1beta1/nodes",
            accept="application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        self.assertEqual(table["kind"], "Table")
        self.assertEqual(
            [(c["name"], c["format"]) for c in table["columnDefinitions"]],
            [("Name", "name"), ("cpu", "quantity"), ("memory", "quantity"), ("Window", "duration")],
        )
        self.assertEqual([r["cells"] for r in table["rows"]], [["server", "5m", "2Gi", "1s"]])
        self.assertEqual(table["rows"][0]["object"]["kind"], "PartialObjectMetadata")

    # Pods

    def test_pod_metrics(self) -> None:
        """Each container's figures from its node's summary; listed per namespace or in all."""
        self.add_node("server", 1, 1024)
        self.add_node("agent", 1, 1024)
        self.add_pod("default", "web", "agent", {"nginx": (2_000_000, 4096 * 1024)}, app="web")
        self.add_pod(
            "kube-system", "dns", "server", {"coredns": (1_000_000, GIB), "sidecar": (0, 512)}
        )
        listed = self.ok("/apis/metrics.k8s.io/v1beta1/pods")
        self.assertEqual(listed["kind"], "PodMetricsList")
        now = "2027-01-15T08:00:01Z"
        self.assertEqual(
            listed["items"],
            [
                {
                    "metadata": {
                        "name": "web",
                        "namespace": "default",
                        "creationTimestamp": now,
                        "labels": {"app": "web"},
                    },
                    "timestamp": now,
                    "window": "1s",
                    "containers": [{"name": "nginx", "usage": {"cpu": "2m", "memory": "4Mi"}}],
                },
                {
                    "metadata": {
                        "name": "dns",
                        "namespace": "kube-system",
                        "creationTimestamp": now,
                    },
                    "timestamp": now,
                    "window": "1s",
                    "containers": [
                        {"name": "coredns", "usage": {"cpu": "1m", "memory": "1Gi"}},
                        {"name": "sidecar", "usage": {"cpu": "0", "memory": "512"}},
                    ],
                },
            ],
        )
        namespaced = self.ok("/apis/metrics.k8s.io/v1beta1/namespaces/kube-system/pods")
        self.assertEqual([i["metadata"]["name"] for i in namespaced["items"]], ["dns"])
        got = self.ok("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web")
        self.assertEqual((got["kind"], got["apiVersion"]), ("PodMetrics", "metrics.k8s.io/v1beta1"))
        table = self.ok(
            "/apis/metrics.k8s.io/v1beta1/namespaces/kube-system/pods",
            accept="application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        self.assertEqual([r["cells"] for r in table["rows"]], [["dns", "1m", "1073742336", "1s"]])

    def test_only_the_pods_nodes_are_scraped(self) -> None:
        """No pods: nothing is read, and the list is empty (kubectl says "No resources found")."""
        self.add_node("server", 1, 1024)
        listed = self.ok("/apis/metrics.k8s.io/v1beta1/pods")
        self.assertEqual(listed["items"], [])
        self.assertEqual(self.kubelets.asked, [])

    def test_pods_without_figures(self) -> None:
        """
        A pod its kubelet does not report, or reports for an earlier pod of its
        name (another uid), is left out; a get of it is metrics-server's 404.
        """
        self.add_node("server", 1, 1024)
        self.server.create(
            "",
            "pods",
            {"metadata": {"name": "quiet"}, "spec": {"nodeName": "server", "containers": [
                {"name": "c", "image": "nginx"}]}},
            "default",
        )  # fmt: skip
        self.add_pod("default", "again", "server", {"c": (1, 1024)})
        pods = self.kubelets.pods["server"]
        pods[0] = (*pods[0][:2], "an-earlier-uid", pods[0][3])
        self.assertEqual(self.ok("/apis/metrics.k8s.io/v1beta1/pods")["items"], [])
        code, status = self.ask("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/quiet")
        self.assertEqual(code, 404)
        self.assertEqual(status["message"], 'podmetrics.metrics.k8s.io "default/quiet" not found')
        code, status = self.ask("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nope")
        self.assertEqual(code, 404)
        self.assertEqual(status["message"], 'pods "nope" not found')

    # The verbs and who may

    def test_only_get_and_list(self) -> None:
        """Nothing is created, changed or watched."""
        self.assertEqual(self.ask("/apis/metrics.k8s.io/v1beta1/nodes?watch=true")[0], 405)
        self.assertEqual(self.ask("/apis/metrics.k8s.io/v1beta1/nodes", method=b"POST")[0], 405)
        self.assertEqual(self.ask("/apis/metrics.k8s.io/v1beta1/nodes/x", method=b"DELETE")[0], 405)

    def test_authorized_as_metrics_k8s_io(self) -> None:
        """A user no rule allows is refused in kube's words, naming the group."""
        code, status = self.ask("/apis/metrics.k8s.io/v1beta1/nodes", user="nobody")
        self.assertEqual(code, 403)
        self.assertEqual(
            status["message"],
            'nodes.metrics.k8s.io is forbidden: User "nobody" cannot list resource "nodes" '
            'in API group "metrics.k8s.io" at the cluster scope',
        )
        self.assertEqual(self.kubelets.asked, [])

    def test_the_collector_follows_only_what_it_can_delete(self) -> None:
        """
        The resource metrics share their plurals with nodes and pods, but are
        never stored: the garbage collector does not follow them.
        """
        collector = GarbageCollector(self.server.informers, self.server.store, self.registry)
        followed = set(collector._followed)
        self.assertIn("pods", followed)
        self.assertNotIn("pods.metrics.k8s.io", followed)
        self.assertNotIn("nodes.metrics.k8s.io", followed)
        self.assertNotIn("tokenreviews.authentication.k8s.io", followed)


class UsageTests(SynchronousTestCase):
    def test_usage_is_the_rate_over_the_window(self) -> None:
        before = Sample(100.0, "boot", 1_000_000_000, 1)
        after = Sample(115.5, "boot", 4_100_000_000, 2)
        used = usage(before, after)
        assert used is not None
        self.assertEqual(
            (used.window, used.cpu, used.memory, used.at), (15.5, 200_000_000, 2, 115.5)
        )

    def test_no_usage_across_a_restart_or_a_counter_going_back(self) -> None:
        self.assertIsNone(usage(Sample(1.0, "a", 5, 1), Sample(2.0, "b", 9, 1)))
        self.assertIsNone(usage(Sample(1.0, "a", 5, 1), Sample(2.0, "a", 4, 1)))
        self.assertIsNone(usage(Sample(2.0, "a", 5, 1), Sample(2.0, "a", 5, 1)))

    def test_parse_summary(self) -> None:
        """A pod missing a container's figure is dropped whole; a non-summary refused."""
        summary = {
            "node": {"cpu": {"usageCoreNanoSeconds": 5}, "memory": {"workingSetBytes": 7}},
            "pods": [
                {
                    "podRef": {"namespace": "n", "name": "ok", "uid": "u"},
                    "containers": [
                        {"name": "c", "cpu": {"usageCoreNanoSeconds": 1},
                         "memory": {"workingSetBytes": 2}},
                    ],
                },
                {
                    "podRef": {"namespace": "n", "name": "partial"},
                    "containers": [{"name": "c", "cpu": {}, "memory": {"workingSetBytes": 2}}],
                },
            ],
        }  # fmt: skip
        scrape = parse_summary(summary, 3.0)
        self.assertEqual(scrape.node, Sample(3.0, None, 5, 7))
        self.assertEqual(list(scrape.pods), [("n", "ok")])
        self.assertEqual(scrape.pods["n", "ok"].uid, "u")
        self.assertRaises(ValueError, parse_summary, [], 3.0)
        self.assertIsNone(parse_summary({"node": {"cpu": {}}}, 1.0).node)


class NodeProxyFetchTests(SynchronousTestCase):
    """L{NodeProxy.fetch}: the server's own GET of a kubelet path."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.proxy = InMemoryNodeProxy({"agent": node("agent", 10999)}, self.reactor)

    def fetch(self, limit: int = 100) -> Deferred[bytes]:
        return Deferred.fromCoroutine(self.proxy.fetch("agent", SUMMARY_PATH, limit))

    def test_gets_the_body(self) -> None:
        """A GET of the path, JSON asked for, to the node's kubelet port; the body returned."""
        fetching = self.fetch()
        self.assertEqual(self.proxy.asked, [("agent", 10999)])
        sent = self.proxy.kubelet.transports[0].value()
        self.assertTrue(sent.startswith(b"GET " + SUMMARY_PATH + b" HTTP/1.1\r\n"), sent)
        self.assertIn(b"Accept: application/json\r\n", sent)
        self.proxy.kubelet.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        self.assertEqual(self.successResultOf(fetching), b"{}")

    def test_refusals(self) -> None:
        """Another answer than 200, or a body past the limit, is a 503."""
        fetching = self.fetch()
        self.proxy.kubelet.respond(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nForbidden")
        error = self.failureResultOf(fetching, StatusError).value
        self.assertEqual(
            (error.code, error.message), (503, "the kubelet answered 403: b'Forbidden'")
        )
        fetching = self.fetch(limit=3)
        self.proxy.kubelet.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n12345")
        error = self.failureResultOf(fetching, StatusError).value
        self.assertEqual(error.message, "the kubelet's answer is longer than 3 bytes")

    def test_unknown_node(self) -> None:
        fetching = Deferred.fromCoroutine(self.proxy.fetch("nope", b"/", 10))
        self.assertEqual(self.failureResultOf(fetching, StatusError).value.code, 404)

    def test_cancelling_drops_the_connection(self) -> None:
        """A timeout while the body comes stops the kubelet's connection."""
        fetching = self.fetch()
        self.proxy.kubelet.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npart")
        fetching.cancel()
        self.failureResultOf(fetching, CancelledError)
        self.assertEqual(self.proxy.kubelet.transports[0].producerState, "stopped")
