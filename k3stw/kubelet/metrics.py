"""
The kubelet's metrics pages in the Prometheus text format, each sample with
its millisecond timestamp, built from the Summary API's document
(L{k3stw.kubelet.stats}):

- ``/metrics/resource``: the node's, pods' and containers' CPU time and
  working set (and the containers' start times), as the kubelet's resource
  metrics collector builds it.  metrics-server scrapes it.
- ``/metrics/cadvisor``: cAdvisor's names and labels for the figures the
  summary has (CPU, memory, network, filesystem, processes, start times of
  the pods' containers, and each pod's own cgroup with ``container=""``),
  so that dashboards written for the kubelet's cAdvisor find their series.
  cAdvisor's ``id``, ``image`` and ``name`` labels (cgroup paths and runtime
  names) are not in the summary and are left out, as are the figures it
  does not have (throttling, per-device I/O).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from k3stw.machinery.quantity import go_float
from k3stw.machinery.times import parse_datetime

#: Prometheus's text exposition format, version 0.0.4, as the kubelet answers it.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: name -> (type, stability, help), in the order the text lists them (by name).
RESOURCE_FAMILIES = {
    "container_cpu_usage_seconds_total": (
        "counter",
        "STABLE",
        "Cumulative cpu time consumed by the container in core-seconds",
    ),
    "container_memory_working_set_bytes": (
        "gauge",
        "STABLE",
        "Current working set of the container in bytes",
    ),
    "container_start_time_seconds": (
        "gauge",
        "STABLE",
        "Start time of the container since unix epoch in seconds",
    ),
    "container_swap_usage_bytes": (
        "gauge",
        "ALPHA",
        "Current amount of the container swap usage in bytes. Reported only on non-windows systems",
    ),
    "node_cpu_usage_seconds_total": (
        "counter",
        "STABLE",
        "Cumulative cpu time consumed by the node in core-seconds",
    ),
    "node_memory_working_set_bytes": (
        "gauge",
        "STABLE",
        "Current working set of the node in bytes",
    ),
    "node_swap_usage_bytes": (
        "gauge",
        "ALPHA",
        "Current swap usage of the node in bytes. Reported only on non-windows systems",
    ),
    "pod_cpu_usage_seconds_total": (
        "counter",
        "STABLE",
        "Cumulative cpu time consumed by the pod in core-seconds",
    ),
    "pod_memory_working_set_bytes": (
        "gauge",
        "STABLE",
        "Current working set of the pod in bytes",
    ),
    "pod_swap_usage_bytes": (
        "gauge",
        "ALPHA",
        "Current amount of the pod swap usage in bytes. Reported only on non-windows systems",
    ),
    "resource_scrape_error": (
        "gauge",
        "STABLE",
        "1 if there was an error while getting container metrics, 0 otherwise",
    ),
}

#: A sample: (labels, value, timestamp in milliseconds or None).
Sample = tuple[tuple[tuple[str, str], ...], float, int | None]


def _milliseconds(time: object) -> int | None:
    """A stats ``time``'s Unix milliseconds (exact when it is a L{SampleTime})."""
    at = getattr(time, "at", None)
    if at is None:
        parsed = parse_datetime(time)
        if parsed is None:
            return None
        at = parsed.timestamp()
    return int(at * 1000)


def _seconds(time: object) -> float | None:
    at = getattr(time, "at", None)
    if at is None:
        parsed = parse_datetime(time)
        return parsed.timestamp() if parsed is not None else None
    return float(at)


def _figure(stats: Mapping[str, Any], section: str, key: str, scale: float = 1.0) -> Any:
    """(value, timestamp) of C{stats[section][key]}, or None when absent."""
    part = stats.get(section)
    if not isinstance(part, Mapping) or part.get(key) is None:
        return None
    return part[key] / scale, _milliseconds(part.get("time"))


def resource_samples(summary: Mapping[str, Any], error: bool = False) -> dict[str, list[Sample]]:
    """Each ``/metrics/resource`` family's samples from a CPU-and-memory summary."""
    families: dict[str, list[Sample]] = {name: [] for name in RESOURCE_FAMILIES}

    def add(name: str, labels: tuple[tuple[str, str], ...], figure: Any) -> None:
        if figure is not None:
            families[name].append((labels, figure[0], figure[1]))

    node = summary.get("node") or {}
    add("node_cpu_usage_seconds_total", (), _figure(node, "cpu", "usageCoreNanoSeconds", 1e9))
    add("node_memory_working_set_bytes", (), _figure(node, "memory", "workingSetBytes"))
    add("node_swap_usage_bytes", (), _figure(node, "swap", "swapUsageBytes"))
    for pod in summary.get("pods") or ():
        ref = pod.get("podRef") or {}
        of_pod = (("namespace", str(ref.get("namespace", ""))), ("pod", str(ref.get("name", ""))))
        for container in pod.get("containers") or ():
            labels = (("container", str(container.get("name", ""))), *of_pod)
            started = _seconds(container.get("startTime"))
            if started is not None and started > 0:
                add("container_start_time_seconds", labels, (started, None))
            add(
                "container_cpu_usage_seconds_total",
                labels,
                _figure(container, "cpu", "usageCoreNanoSeconds", 1e9),
            )
            add(
                "container_memory_working_set_bytes",
                labels,
                _figure(container, "memory", "workingSetBytes"),
            )
            add("container_swap_usage_bytes", labels, _figure(container, "swap", "swapUsageBytes"))
        add("pod_cpu_usage_seconds_total", of_pod, _figure(pod, "cpu", "usageCoreNanoSeconds", 1e9))
        add("pod_memory_working_set_bytes", of_pod, _figure(pod, "memory", "workingSetBytes"))
        add("pod_swap_usage_bytes", of_pod, _figure(pod, "swap", "swapUsageBytes"))
    families["resource_scrape_error"].append(((), 1.0 if error else 0.0, None))
    return families


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def exposition(
    families: Mapping[str, Iterable[Sample]],
    described: Mapping[str, tuple[str, str, str]],
) -> bytes:
    """
    The Prometheus text of C{families} (a family without samples is left
    out, as the Go client leaves it out), their samples sorted by labels;
    a family described without a stability level has no ``[LEVEL]`` tag.
    """
    lines = []
    for name in sorted(families):
        samples = sorted(families[name], key=lambda sample: sample[0])
        if not samples:
            continue
        kind, stability, text = described[name]
        lines.append(
            f"# HELP {name} [{stability}] {text}" if stability else f"# HELP {name} {text}"
        )
        lines.append(f"# TYPE {name} {kind}")
        for labels, value, timestamp in samples:
            pairs = ",".join(f'{key}="{_escape(v)}"' for key, v in sorted(labels))
            line = f"{name}{{{pairs}}}" if pairs else name
            line += f" {go_float(value)}"
            if timestamp is not None:
                line += f" {timestamp}"
            lines.append(line)
    return ("\n".join(lines) + "\n").encode()


def resource_metrics(summary: Mapping[str, Any] | None) -> bytes:
    """``/metrics/resource`` from a CPU-and-memory summary; None: the summary failed."""
    if summary is None:
        return exposition(resource_samples({}, error=True), RESOURCE_FAMILIES)
    return exposition(resource_samples(summary), RESOURCE_FAMILIES)


#: cAdvisor's families (no stability levels: cAdvisor's are not kube's metrics).
CADVISOR_FAMILIES = {
    "container_cpu_usage_seconds_total": (
        "counter",
        "",
        "Cumulative cpu time consumed in seconds.",
    ),
    "container_fs_usage_bytes": (
        "gauge",
        "",
        "Number of bytes that are consumed by the container on this filesystem.",
    ),
    "container_memory_rss": ("gauge", "", "Size of RSS in bytes."),
    "container_memory_usage_bytes": (
        "gauge",
        "",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
    ),
    "container_memory_working_set_bytes": ("gauge", "", "Current working set in bytes."),
    "container_network_receive_bytes_total": (
        "counter",
        "",
        "Cumulative count of bytes received",
    ),
    "container_network_receive_errors_total": (
        "counter",
        "",
        "Cumulative count of errors encountered while receiving",
    ),
    "container_network_transmit_bytes_total": (
        "counter",
        "",
        "Cumulative count of bytes transmitted",
    ),
    "container_network_transmit_errors_total": (
        "counter",
        "",
        "Cumulative count of errors encountered while transmitting",
    ),
    "container_processes": ("gauge", "", "Number of processes running inside the container."),
    "container_start_time_seconds": (
        "gauge",
        "",
        "Start time of the container since unix epoch in seconds.",
    ),
}

#: The network families and the NetworkStats field each reads.
_NETWORK = {
    "container_network_receive_bytes_total": "rxBytes",
    "container_network_receive_errors_total": "rxErrors",
    "container_network_transmit_bytes_total": "txBytes",
    "container_network_transmit_errors_total": "txErrors",
}


def cadvisor_samples(summary: Mapping[str, Any]) -> dict[str, list[Sample]]:
    """Each ``/metrics/cadvisor`` family's samples from a full summary."""
    families: dict[str, list[Sample]] = {name: [] for name in CADVISOR_FAMILIES}

    def add(name: str, labels: tuple[tuple[str, str], ...], figure: Any) -> None:
        if figure is not None:
            families[name].append((labels, figure[0], figure[1]))

    def usage(labels: tuple[tuple[str, str], ...], stats: Mapping[str, Any]) -> None:
        """CPU and memory of one cgroup, a container's or the pod's."""
        cpu_labels = (*labels, ("cpu", "total"))
        add(
            "container_cpu_usage_seconds_total",
            cpu_labels,
            _figure(stats, "cpu", "usageCoreNanoSeconds", 1e9),
        )
        add("container_memory_usage_bytes", labels, _figure(stats, "memory", "usageBytes"))
        add(
            "container_memory_working_set_bytes",
            labels,
            _figure(stats, "memory", "workingSetBytes"),
        )
        add("container_memory_rss", labels, _figure(stats, "memory", "rssBytes"))

    for pod in summary.get("pods") or ():
        ref = pod.get("podRef") or {}
        of_pod = (("namespace", str(ref.get("namespace", ""))), ("pod", str(ref.get("name", ""))))
        of_sandbox = (("container", ""), *of_pod)
        usage(of_sandbox, pod)
        add("container_processes", of_sandbox, _figure(pod, "process_stats", "process_count"))
        network = pod.get("network")
        if isinstance(network, Mapping):
            at = _milliseconds(network.get("time"))
            interfaces = network.get("interfaces") or ([network] if "name" in network else [])
            for interface in interfaces:
                of_interface = (*of_sandbox, ("interface", str(interface.get("name", ""))))
                for name, field in _NETWORK.items():
                    if interface.get(field) is not None:
                        families[name].append((of_interface, float(interface[field]), at))
        for container in pod.get("containers") or ():
            labels = (("container", str(container.get("name", ""))), *of_pod)
            usage(labels, container)
            add("container_fs_usage_bytes", labels, _figure(container, "rootfs", "usedBytes"))
            started = _seconds(container.get("startTime"))
            if started is not None and started > 0:
                add("container_start_time_seconds", labels, (started, None))
    return families


def cadvisor_metrics(summary: Mapping[str, Any]) -> bytes:
    """``/metrics/cadvisor`` from a full summary."""
    return exposition(cadvisor_samples(summary), CADVISOR_FAMILIES)
