"""``twistd k3s-agent``: options and service assembly for an agent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import IService

from k3stw.agent.service import AgentConfig
from k3stw.logs import set_debug
from k3stw.tap.options import AGENT_FLAGS, SERVER_FLAGS, ConfigurationError, K3sOptions

if TYPE_CHECKING:
    from k3stw.loadbalancer.metrics import LoadBalancerMetrics
    from k3stw.loadbalancer.service import LoadBalancerService


class Options(K3sOptions):
    """Flags of ``k3s agent``; see ``twistd k3s-agent --help``."""

    flags = AGENT_FLAGS
    other_role_flags = SERVER_FLAGS
    command = "k3s-agent"
    summary = "Run node agent"

    def check_required(self) -> None:
        if not self["server"]:
            raise ConfigurationError("--server is required (or K3S_URL)")
        if not (self["token"] or self["token-file"]):
            raise ConfigurationError("--token is required (or --token-file, K3S_TOKEN)")


def agent_config(options: Options) -> AgentConfig:
    """The validated settings of an agent; reads ``--token-file`` if given."""
    token = options.token("token")
    if token is None:
        raise ConfigurationError("--token is required (or --token-file, K3S_TOKEN)")
    return AgentConfig.of_node(options["server"], token, options.node_settings())


def makeService(options: Options) -> IService:
    from dataclasses import replace

    from twisted.internet import reactor

    set_debug(options["debug"])
    # First, before any thread starts: the arenas a thread gets are fixed when it does.
    from k3stw.heap import process_heap_trimmer

    trimmer = process_heap_trimmer(reactor)
    from k3stw.agent.cacerts import https_fetcher
    from k3stw.agent.join import https_sender
    from k3stw.agent.service import AgentService, node_factory
    from k3stw.loadbalancer.service import LoadBalancerService

    try:
        config = agent_config(options)
    except ConfigurationError as e:
        raise SystemExit(f"k3s-agent: {e}") from None
    status_port = options["lb-status-port"]
    # Metrics are kept only where they can be read: the status page serves them.
    metrics = _metrics() if status_port else None
    balancer = LoadBalancerService(
        reactor,
        config.server_url,
        port=options["lb-server-port"],
        data_dir=config.data_dir,
        metrics=metrics,
    )
    # Everything the node does goes through its load balancer.
    config = replace(config, server_url=balancer.local_url)
    root = AgentService(
        reactor,
        config,
        https_fetcher(reactor),
        https_sender(reactor),
        node_factory(reactor, config, balancer),
        balancer,
    )
    if metrics is not None:
        _status_page(reactor, status_port, balancer, metrics).setServiceParent(root)
    trimmer.setServiceParent(root)
    return root


def _metrics() -> LoadBalancerMetrics:
    from prometheus_client import REGISTRY

    from k3stw.loadbalancer.metrics import LoadBalancerMetrics

    return LoadBalancerMetrics(REGISTRY)


def _status_page(
    reactor: Any, port: int, balancer: LoadBalancerService, metrics: LoadBalancerMetrics
) -> IService:
    """``--lb-status-port``: the balancer's status and metrics on loopback."""
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from k3stw.loadbalancer.status import StatusPage
    from k3stw.web import QuietSite

    endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
    status = StreamServerEndpointService(endpoint, QuietSite(StatusPage([balancer], metrics)))
    # A port in use stops the start with its error, as the balancer's does.
    status._raiseSynchronously = True
    return status
