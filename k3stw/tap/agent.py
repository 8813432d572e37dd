"""``twistd k3s-agent``: options and service assembly for an agent."""

from __future__ import annotations

from twisted.application.service import IService

from k3stw.agent.service import AgentConfig
from k3stw.logs import set_debug
from k3stw.tap.options import AGENT_FLAGS, SERVER_FLAGS, ConfigurationError, K3sOptions


class Options(K3sOptions):
    """Flags of ``k3s agent``; see ``twistd k3s-agent --help``."""

    flags = AGENT_FLAGS
    other_role_flags = SERVER_FLAGS
    command = "k3s-agent"

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

    from prometheus_client import REGISTRY
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    set_debug(options["debug"])
    from k3stw.agent.cacerts import https_fetcher
    from k3stw.agent.join import https_sender
    from k3stw.agent.service import AgentService, node_factory
    from k3stw.loadbalancer.metrics import LoadBalancerMetrics
    from k3stw.loadbalancer.service import LoadBalancerService
    from k3stw.loadbalancer.status import StatusPage
    from k3stw.web import QuietSite

    try:
        config = agent_config(options)
    except ConfigurationError as e:
        raise SystemExit(f"k3s-agent: {e}") from None
    metrics = LoadBalancerMetrics(REGISTRY)
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
    if options["lb-status-port"]:
        page = QuietSite(StatusPage([balancer], metrics))
        endpoint = TCP4ServerEndpoint(reactor, options["lb-status-port"], interface="127.0.0.1")
        status = StreamServerEndpointService(endpoint, page)
        # A port in use stops the start with its error, as the balancer's does.
        status._raiseSynchronously = True
        status.setServiceParent(root)
    return root
