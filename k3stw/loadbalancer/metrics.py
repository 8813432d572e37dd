"""
Prometheus metrics of the load balancers, with k3s's names and labels:
``k3s_loadbalancer_server_connections{name,server}``,
``k3s_loadbalancer_server_health{name,server}`` (the state's number) and
``k3s_loadbalancer_dial_duration_seconds{name,status}``.

The two gauges are read from the server lists when scraped, so they can never
disagree with L{k3stw.loadbalancer.servers.ServerList.status}. One
instance serves every load balancer of a process (they differ by ``name``).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from k3stw.loadbalancer.proxy import DialObserver
from k3stw.loadbalancer.servers import ServerList

CONNECTIONS = "k3s_loadbalancer_server_connections"
HEALTH = "k3s_loadbalancer_server_health"
DIAL_DURATION = "k3s_loadbalancer_dial_duration_seconds"


class LoadBalancerMetrics(Collector):
    """
    The load balancers' metrics, registered in ``registry``.

    :param registry: where to register (``prometheus_client.REGISTRY`` in the
        agent; a fresh registry if None).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lists: dict[str, ServerList] = {}
        self.dial_duration = Histogram(
            DIAL_DURATION,
            "Time taken to dial a connection to a backend server",
            ["name", "status"],
            registry=self.registry,
        )
        self.registry.register(self)

    def track(self, servers: ServerList) -> None:
        """Report the servers of ``servers`` (under its name)."""
        self._lists[servers.name] = servers

    def untrack(self, servers: ServerList) -> None:
        """Stop reporting ``servers``."""
        if self._lists.get(servers.name) is servers:
            del self._lists[servers.name]

    def dial_observer(self, name: str) -> DialObserver:
        """Record the dials of the load balancer ``name``."""

        def observe(succeeded: bool, seconds: float) -> None:
            status = "success" if succeeded else "failure"
            self.dial_duration.labels(name, status).observe(seconds)

        return observe

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                CONNECTIONS,
                "Count of current connections to loadbalancer server",
                labels=["name", "server"],
            ),
            GaugeMetricFamily(
                HEALTH, "Current health value of loadbalancer backend", labels=["name", "server"]
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        connections, health = self._families()
        for name, servers in self._lists.items():
            for server in servers.servers():
                connections.add_metric([name, server.address], len(server.connections))
                health.add_metric([name, server.address], int(server.state))
        return (connections, health)
