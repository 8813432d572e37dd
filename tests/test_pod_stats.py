"""
The pods in the kubelet's Summary API and ``/metrics/resource``, built from
a L{MemoryRuntime} on a clock: CPU time and rate, memory, network, logs,
volumes and ephemeral storage, the runtime's image filesystem; and the
metrics API's reading of that summary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.metricsapi import parse_summary, pod_metrics
from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.memory import MemoryRuntime, Program
from k3stw.kubelet.hostinfo import HostUsage
from k3stw.kubelet.metrics import cadvisor_metrics, resource_metrics
from k3stw.kubelet.podstats import PodStatsProvider, disk_use
from k3stw.kubelet.stats import build_summary, current_containers
from k3stw.machinery.quantity import go_float
from tests.support.kubelet import cpu_and_memory

T = TypeVar("T")
START = 1_750_000_000.0
GIB = 1024**3


def at_once(work: Callable[[], T]) -> Deferred[T]:
    return succeed(work())


def host(now: float) -> HostUsage:
    """A node busy on two cores since 100 s before START, with 2 GiB in use."""
    return cpu_and_memory(int(2e9 * (now - START + 100)), int(START - 100), 2 * GIB)


class PodStatsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.runtime = MemoryRuntime(self.clock)
        self.runtime.programs["busy"] = Program(cpu_cores=0.5, memory_bytes=10_240_000)
        self.runtime.programs["idle"] = Program(memory_bytes=1_000_000, disk_bytes=4096)
        self.root = Path(self.mktemp())
        self.logs = self.root / "log" / "pods"
        self.kubelet_root = self.root / "kubelet"
        self.kubelet_root.mkdir(parents=True)
        self.provider = PodStatsProvider(
            lambda: self.runtime, at_once, kubelet_root=self.kubelet_root, pod_logs=self.logs
        )

    def run_pod(self, name: str, *containers: str) -> str:
        """A pod's sandbox and its started containers, as the pod worker makes them; its sandbox."""
        uid = f"uid-{name}"
        labels = {
            "io.kubernetes.pod.name": name,
            "io.kubernetes.pod.namespace": "default",
            "io.kubernetes.pod.uid": uid,
        }
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, namespace="default", uid=uid),
            labels=labels,
        )
        sandbox = self.result(self.runtime.run_pod_sandbox(config))
        for container in containers:
            self.start(sandbox, config, container)
        return sandbox

    def start(self, sandbox: str, config: api.PodSandboxConfig, name: str, attempt: int = 0) -> str:
        created = self.runtime.create_container(
            sandbox,
            api.ContainerConfig(
                metadata=api.ContainerMetadata(name=name, attempt=attempt),
                image=api.ImageSpec(image="docker.io/rancher/mirrored-pause:3.6"),
                labels={**config.labels, "io.kubernetes.container.name": name},
            ),
            config,
        )
        container = self.result(created)
        self.result(self.runtime.start_container(container))
        return container

    def result(self, deferred: Deferred[T]) -> T:
        return self.successResultOf(deferred)

    def collect(self, only: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        return self.result(
            Deferred.fromCoroutine(self.provider.collect(self.clock.seconds(), only))
        )

    def pods(self, only: bool = False) -> dict[str, dict[str, Any]]:
        return {pod["podRef"]["name"]: pod for pod in self.collect(only)[0]}

    def test_cpu_time_rate_and_memory_of_pods_and_containers(self) -> None:
        """
        The busy container's CPU time grows by half a core: usageNanoCores
        500m from the second sample on; the idle one's stays 0; memory is the
        working set; the pod's figures are its cgroup's.
        """
        self.run_pod("busy", "busy")
        self.run_pod("idle", "idle")
        self.clock.advance(10)
        first = self.pods()
        busy = first["busy"]
        (container,) = busy["containers"]
        self.assertEqual(container["name"], "busy")
        self.assertEqual(container["cpu"]["usageCoreNanoSeconds"], 5 * 10**9)
        self.assertNotIn("usageNanoCores", container["cpu"])
        self.assertEqual(container["memory"]["workingSetBytes"], 10_240_000)
        self.assertEqual(container["startTime"], "2025-06-15T15:06:40Z")
        self.assertEqual(
            busy["podRef"], {"name": "busy", "namespace": "default", "uid": "uid-busy"}
        )
        self.assertEqual(busy["startTime"], "2025-06-15T15:06:40Z")

        self.clock.advance(4)
        later = self.pods()
        self.assertEqual(later["busy"]["containers"][0]["cpu"]["usageNanoCores"], 500_000_000)
        self.assertEqual(later["busy"]["cpu"]["usageNanoCores"], 500_000_000)
        self.assertEqual(later["busy"]["cpu"]["usageCoreNanoSeconds"], 7 * 10**9)
        self.assertEqual(later["busy"]["memory"]["workingSetBytes"], 10_240_000)
        self.assertEqual(later["idle"]["containers"][0]["cpu"]["usageNanoCores"], 0)
        self.assertEqual(later["idle"]["memory"]["workingSetBytes"], 1_000_000)
        self.assertEqual(later["idle"]["process_stats"], {"process_count": 1})

    def test_a_restarted_container_is_counted_once(self) -> None:
        """Its exited instance is left out once a new one runs (removeTerminatedContainers)."""
        sandbox = self.run_pod("web", "web")
        config = self.runtime.sandboxes[sandbox].config
        (first,) = self.runtime.running()
        self.runtime.exit(first, 1)
        self.clock.advance(1)
        self.assertEqual(len(self.pods()["web"]["containers"]), 1, "the exited one alone")
        second = self.start(sandbox, config, "web", attempt=1)
        (container,) = self.pods()["web"]["containers"]
        self.assertEqual(self.runtime.running(), [second])
        self.assertEqual(container["startTime"], "2025-06-15T15:06:41Z")
        listed = self.result(self.runtime.list_containers())
        kept = current_containers(listed)
        self.assertEqual([c.id for c in kept], [second])

    def test_a_stopped_pod_is_left_out_for_its_new_sandbox(self) -> None:
        """Of a pod's sandboxes, the ready one is reported (removeTerminatedPods)."""
        old = self.run_pod("p", "idle")
        self.result(self.runtime.stop_pod_sandbox(old))
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name="p", namespace="default", uid="uid-p", attempt=1)
        )
        self.clock.advance(5)
        self.result(self.runtime.run_pod_sandbox(config))
        (pod,) = self.collect()[0]
        self.assertEqual(pod["startTime"], "2025-06-15T15:06:45Z")
        self.assertEqual(pod["containers"], [])

    def test_memory_runtime_container_stats(self) -> None:
        """ListContainerStats: each container's figures, filtered by sandbox as containerd's."""
        busy = self.run_pod("busy", "busy")
        self.run_pod("idle", "idle")
        self.clock.advance(2)
        everything = self.result(self.runtime.list_container_stats())
        self.assertEqual(len(everything), 2)
        (only,) = self.result(
            self.runtime.list_container_stats(api.ContainerStatsFilter(pod_sandbox_id=busy))
        )
        self.assertEqual(only.attributes.metadata.name, "busy")
        self.assertEqual(only.cpu.usage_core_nano_seconds.value, 10**9)
        self.assertEqual(only.memory.working_set_bytes.value, 10_240_000)

    def test_network_of_the_pods_namespace(self) -> None:
        """eth0's counters inline, as containerd 1.6 gives them (no interface list)."""
        sandbox = self.run_pod("web", "idle")
        self.runtime.traffic(sandbox, 1500, 400)
        network = self.pods()["web"]["network"]
        self.assertEqual(
            network,
            {
                "time": "2025-06-15T15:06:40Z",
                "name": "eth0",
                "rxBytes": 1500,
                "rxErrors": 0,
                "txBytes": 400,
                "txErrors": 0,
            },
        )

    def test_logs_volumes_and_ephemeral_storage(self) -> None:
        """
        Each container's log directory and each volume directory is measured;
        the pod's ephemeral storage adds the writable layers, logs, volumes on
        the root filesystem and etc-hosts.
        """
        self.run_pod("vols", "idle")
        log = self.logs / "default_vols_uid-vols" / "idle"
        log.mkdir(parents=True)
        (log / "0.log").write_bytes(b"x" * 10_000)
        pod_dir = self.kubelet_root / "pods" / "uid-vols"
        scratch = pod_dir / "volumes" / "kubernetes.io~empty-dir" / "scratch"
        scratch.mkdir(parents=True)
        (scratch / "data").write_bytes(b"y" * 20_000)
        config = pod_dir / "volumes" / "kubernetes.io~configmap" / "settings"
        config.mkdir(parents=True)
        (config / "key").write_text("value")
        (pod_dir / "etc-hosts").write_text("127.0.0.1 localhost\n")

        (pod,) = self.collect()[0]
        (container,) = pod["containers"]
        log_use = disk_use(log)
        assert log_use is not None
        self.assertGreaterEqual(log_use.bytes, 10_000)
        self.assertEqual(container["logs"]["usedBytes"], log_use.bytes)
        self.assertEqual(container["logs"]["inodesUsed"], 2)
        self.assertEqual(container["rootfs"]["usedBytes"], 4096)
        volumes = {v["name"]: v for v in pod["volume"]}
        self.assertEqual(sorted(volumes), ["scratch", "settings"])
        self.assertGreaterEqual(volumes["scratch"]["usedBytes"], 20_000)
        self.assertGreater(volumes["scratch"]["capacityBytes"], 0)
        hosts = disk_use(pod_dir / "etc-hosts")
        assert hosts is not None
        ephemeral = pod["ephemeral-storage"]
        self.assertEqual(
            ephemeral["usedBytes"],
            4096
            + log_use.bytes
            + volumes["scratch"]["usedBytes"]
            + volumes["settings"]["usedBytes"]
            + hosts.bytes,
        )
        self.assertGreater(ephemeral["capacityBytes"], 0)

    def test_only_cpu_and_memory(self) -> None:
        """?only_cpu_and_memory=true: no disks, no network, no image filesystem."""
        self.run_pod("web", "idle")
        pods, image_fs = self.collect(only=True)
        self.assertIsNone(image_fs)
        self.assertEqual(sorted(pods[0]), ["containers", "cpu", "memory", "podRef", "startTime"])
        self.assertEqual(sorted(pods[0]["containers"][0]), ["cpu", "memory", "name", "startTime"])
        self.assertNotIn("ListImages", [call for call, _ in self.runtime.calls])

    def test_image_filesystem(self) -> None:
        """The runtime's ImageFsInfo: what its images take."""
        _, image_fs = self.collect()
        assert image_fs is not None
        self.assertEqual((image_fs["usedBytes"], image_fs["inodesUsed"]), (1_000_000, 1))
        summary = build_summary("n", host(START), START, None, image_fs=image_fs)
        self.assertEqual(summary["node"]["runtime"]["imageFs"], image_fs)

    def test_no_runtime_yet(self) -> None:
        """Before the runtime answered, there are no pods to report."""
        provider = PodStatsProvider(lambda: None, at_once)
        found = self.result(Deferred.fromCoroutine(provider.collect(START)))
        self.assertEqual(found, ([], None))

    def test_a_runtime_that_fails(self) -> None:
        """The runtime's error is the caller's, and a runtime gone is one even mid-way."""
        self.run_pod("web", "idle")
        self.runtime.fail("ListPodSandbox", "boom")
        failure = self.failureResultOf(Deferred.fromCoroutine(self.provider.collect(START)))
        self.assertIn("CRI ListPodSandbox on memory:// failed", str(failure.value))
        self.runtime.fail("ListPodSandboxStats", "connection refused", "UNAVAILABLE")
        failure = self.failureResultOf(Deferred.fromCoroutine(self.provider.collect(START)))
        self.assertTrue(failure.value.unavailable, failure)

    def test_finished_pods_do_not_hide_the_others(self) -> None:
        """
        containerd 1.6 fails ListPodSandboxStats over a stopped sandbox: each
        ready sandbox is asked for alone, and one that fails is left out.
        """
        self.run_pod("busy", "busy")
        done = self.run_pod("done", "idle")
        self.result(self.runtime.stop_pod_sandbox(done))
        self.run_pod("gone", "idle")
        self.failureResultOf(self.runtime.list_pod_sandbox_stats())
        self.runtime.fail("ListPodSandboxStats", "not found", "NOT_FOUND")
        # The first asked for (busy's) fails: it alone is missing.
        self.assertEqual(list(self.pods()), ["gone"])
        self.assertEqual(list(self.pods()), ["busy", "gone"])

    def test_the_metrics_api_reads_the_pods(self) -> None:
        """metrics.k8s.io's PodMetrics from two summaries: the busy pod's half core."""
        self.run_pod("busy", "busy")
        self.run_pod("idle", "idle")
        scrapes = []
        for _ in range(2):
            self.clock.advance(5)
            now = self.clock.seconds()
            pods = self.collect(only=True)[0]
            summary = build_summary("n", host(now), now, None, only_cpu_and_memory=True, pods=pods)
            scrapes.append(parse_summary(json.loads(json.dumps(summary)), now))
        key = ("default", "busy")
        busy = {"metadata": {"name": "busy", "namespace": "default", "uid": "uid-busy"}}
        metrics = pod_metrics(busy, scrapes[0].pods[key], scrapes[1].pods[key], "now")
        assert metrics is not None
        self.assertEqual(
            metrics["containers"], [{"name": "busy", "usage": {"cpu": "500m", "memory": "10000Ki"}}]
        )
        self.assertEqual(metrics["window"], "5s")


class ResourceMetricsTextTests(SynchronousTestCase):
    def summary(self, only_cpu_and_memory: bool) -> tuple[float, dict[str, Any]]:
        """Now, and the summary of a pod ``p`` whose ``pause`` ran 4 s at a quarter core."""
        clock = Clock()
        clock.advance(START)
        runtime = MemoryRuntime(clock)
        runtime.programs["pause"] = Program(cpu_cores=0.25, memory_bytes=2048)
        provider = PodStatsProvider(lambda: runtime, at_once)
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name="p", namespace="ns", uid="u")
        )
        sandbox = self.successResultOf(runtime.run_pod_sandbox(config))
        container = self.successResultOf(
            runtime.create_container(
                sandbox,
                api.ContainerConfig(
                    metadata=api.ContainerMetadata(name="pause"),
                    image=api.ImageSpec(image="docker.io/rancher/mirrored-pause:3.6"),
                ),
                config,
            )
        )
        clock.advance(1)
        self.successResultOf(runtime.start_container(container))
        runtime.traffic(sandbox, 300, 200)
        clock.advance(4)
        now = clock.seconds()
        pods, image_fs = self.successResultOf(
            Deferred.fromCoroutine(provider.collect(now, only_cpu_and_memory))
        )
        summary = build_summary(
            "n",
            host(now),
            now,
            None,
            only_cpu_and_memory=only_cpu_and_memory,
            pods=pods,
            image_fs=image_fs,
        )
        return now, summary

    def test_series_with_millisecond_timestamps(self) -> None:
        """
        The node's, pods' and containers' CPU seconds and working sets, the
        containers' start times, and no scrape error, sorted as the kubelet's.
        """
        now, summary = self.summary(True)
        text = resource_metrics(summary).decode()
        ms = int(now * 1000)
        labels = 'container="pause",namespace="ns",pod="p"'
        self.assertEqual(
            [line for line in text.splitlines() if not line.startswith("#")],
            [
                f"container_cpu_usage_seconds_total{{{labels}}} 1 {ms}",
                f"container_memory_working_set_bytes{{{labels}}} 2048 {ms}",
                f"container_start_time_seconds{{{labels}}} 1.75e+09",
                f"node_cpu_usage_seconds_total 210 {ms}",
                f"node_memory_working_set_bytes 2.147483648e+09 {ms}",
                f'pod_cpu_usage_seconds_total{{namespace="ns",pod="p"}} 1 {ms}',
                f'pod_memory_working_set_bytes{{namespace="ns",pod="p"}} 2048 {ms}',
                "resource_scrape_error 0",
            ],
        )
        self.assertIn(
            "# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed"
            " by the container in core-seconds\n# TYPE container_cpu_usage_seconds_total counter",
            text,
        )

    def test_cadvisor_names(self) -> None:
        """
        /metrics/cadvisor: cAdvisor's names and labels, the pod's own cgroup as
        ``container=""`` with its network, without kube's stability tags.
        """
        now, summary = self.summary(False)
        text = cadvisor_metrics(summary).decode()
        ms = int(now * 1000)
        pause = 'container="pause",namespace="ns",pod="p"'
        pod = 'container="",namespace="ns",pod="p"'
        series = [line for line in text.splitlines() if not line.startswith("#")]
        for line in (
            'container_cpu_usage_seconds_total{container="pause",cpu="total",namespace="ns",'
            f'pod="p"}} 1 {ms}',
            'container_cpu_usage_seconds_total{container="",cpu="total",namespace="ns",'
            f'pod="p"}} 1 {ms}',
            f"container_memory_working_set_bytes{{{pause}}} 2048 {ms}",
            f"container_memory_working_set_bytes{{{pod}}} 2048 {ms}",
            'container_network_receive_bytes_total{container="",interface="eth0",namespace="ns",'
            f'pod="p"}} 300 {ms}',
            'container_network_transmit_bytes_total{container="",interface="eth0",namespace="ns",'
            f'pod="p"}} 200 {ms}',
            f"container_start_time_seconds{{{pause}}} 1.75e+09",
        ):
            self.assertIn(line, series)
        self.assertIn(
            "# HELP container_cpu_usage_seconds_total Cumulative cpu time consumed in seconds.\n"
            "# TYPE container_cpu_usage_seconds_total counter",
            text,
        )
        self.assertFalse([line for line in series if line.startswith(("node_", "pod_"))])

    def test_a_failed_summary_is_a_scrape_error(self) -> None:
        self.assertEqual(
            resource_metrics(None).decode().splitlines()[-1], "resource_scrape_error 1"
        )

    def test_go_float(self) -> None:
        """Values as Go's shortest %g: exponents from 1e6 up."""
        cases = {0.0: "0", 357.35491: "357.35491", 1.253376e7: "1.253376e+07", 1e-5: "1e-05"}
        for value, text in cases.items():
            self.assertEqual(go_float(value), text)
        self.assertEqual(go_float(123456.0), "123456")


class DiskUseTests(SynchronousTestCase):
    def test_hard_links_count_once(self) -> None:
        root = Path(self.mktemp())
        root.mkdir()
        (root / "a").write_bytes(b"z" * 8192)
        os.link(root / "a", root / "b")
        use = disk_use(root)
        assert use is not None
        self.assertEqual(use.inodes, 2)
        self.assertIsNone(disk_use(root / "missing"))
