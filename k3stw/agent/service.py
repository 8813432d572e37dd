"""The node half of k3stw: joining a cluster, then running the kubelet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from k3stw.agent.cacerts import CAHashMismatch, Fetch
from k3stw.agent.join import Handshake, Joined, JoinRequest, Send
from k3stw.kubeclient import KubeClient
from k3stw.kubelet.api import KubeletAPIService, PodStatsSource
from k3stw.kubelet.config import KubeletArgs, KubeletConfig
from k3stw.kubelet.containerd import NodeRuntime, RuntimeSettings
from k3stw.kubelet.service import KubeletService
from k3stw.kubelet.streaming import Streaming
from k3stw.lifecycle import ApplianceService, StartupError, notify_systemd, stop_with_error
from k3stw.logs import Logger
from k3stw.machinery.nodes import Taint
from k3stw.machinery.objects import Object
from k3stw.network.node import NetworkSettings, NodeNetworking, network_client
from k3stw.pki.tls import PinnedCAPolicy
from k3stw.pki.token import Token

if TYPE_CHECKING:
    from k3stw.kubelet.logstream import ContainerLogs
    from k3stw.loadbalancer.health import HealthCheck
    from k3stw.loadbalancer.service import LoadBalancerService

_log = Logger(namespace="k3stw.agent")


@dataclass(frozen=True)
class NodeSettings:
    """The node flags both roles share, validated (labels and taints parsed)."""

    data_dir: Path
    identity_dir: Path
    node_name: str
    with_node_id: bool
    node_ips: tuple[str, ...]
    node_external_ips: tuple[str, ...] = ()
    node_labels: dict[str, str] = field(default_factory=dict)
    node_taints: tuple[Taint, ...] = ()
    kubelet_args: KubeletArgs = field(default_factory=KubeletArgs)
    #: The container runtime (None: none, the node runs no pods).
    runtime: RuntimeSettings | None = None
    #: ``--flannel-iface``: the interface whose address the pod network uses (None: the default
    #: route's).
    flannel_iface: str | None = None
    #: kube-proxy's mode (``--kube-proxy-arg=proxy-mode=``).
    proxy_mode: str = "iptables"


@dataclass(frozen=True)
class AgentConfig:
    """A node's settings, already validated (labels and taints parsed)."""

    data_dir: Path
    server_url: str
    token: Token
    identity_dir: Path = Path("/etc/rancher/node")
    node_name: str = ""
    with_node_id: bool = False
    node_ips: tuple[str, ...] = ()
    node_external_ips: tuple[str, ...] = ()
    node_labels: dict[str, str] = field(default_factory=dict)
    node_taints: tuple[Taint, ...] = ()
    kubelet_args: KubeletArgs = field(default_factory=KubeletArgs)
    is_server: bool = False
    runtime: RuntimeSettings | None = None
    flannel_iface: str | None = None
    proxy_mode: str = "iptables"

    @classmethod
    def of_node(
        cls, server_url: str, token: Token, node: NodeSettings, is_server: bool = False
    ) -> AgentConfig:
        """The settings of a node that joins C{server_url} with C{token}."""
        return cls(
            data_dir=node.data_dir,
            server_url=server_url,
            token=token,
            identity_dir=node.identity_dir,
            node_name=node.node_name,
            with_node_id=node.with_node_id,
            node_ips=node.node_ips,
            node_external_ips=node.node_external_ips,
            node_labels=node.node_labels,
            node_taints=node.node_taints,
            kubelet_args=node.kubelet_args,
            is_server=is_server,
            runtime=node.runtime,
            flannel_iface=node.flannel_iface,
            proxy_mode=node.proxy_mode,
        )

    def join_request(self) -> JoinRequest:
        return JoinRequest(
            self.server_url,
            self.token,
            self.data_dir / "agent",
            self.identity_dir,
            self.node_name,
            self.with_node_id,
            self.node_ips,
        )


#: Builds what a node runs once it has joined (the kubelet, its API, on agents the tunnels).
KubeletFactory = Callable[[Joined], IService]


def node_client(clock: IReactorTime, joined: Joined, server_url: str) -> KubeClient:
    """The API at C{server_url} as the node: its client certificate, the cluster CA."""
    return network_client(clock, joined, server_url, joined.client)


def kubelet_settings(config: AgentConfig, joined: Joined) -> KubeletConfig:
    """What the kubelet of a joined node is told."""
    return KubeletConfig(
        node_name=joined.identity.name,
        node_ips=config.node_ips,
        data_dir=str(config.data_dir),
        external_ips=config.node_external_ips,
        labels=config.node_labels,
        taints=config.node_taints,
        is_server=config.is_server,
        port=config.kubelet_args.port,
        cluster_dns=tuple(
            ip.strip() for ip in str(joined.settings.get("ClusterDNS") or "10.43.0.10").split(",")
        ),
        cluster_domain=str(joined.settings.get("ClusterDomain") or "cluster.local"),
        cgroup_root=config.kubelet_args.cgroup_root,
        container_log_max_size=config.kubelet_args.container_log_max_size,
        container_log_max_files=config.kubelet_args.container_log_max_files,
    )


def kubelet_factory(reactor: Any, config: AgentConfig) -> Callable[[Joined], KubeletService]:
    """
    The real kubelet: the API reached with the node's own client certificate;
    its container runtime (containerd as a child, or an existing CRI socket)
    and its pods' volumes under k3s's kubelet root when the node has one.
    """

    def make(joined: Joined) -> KubeletService:
        if config.kubelet_args.ignored:
            _log.warn(
                "kubelet-arg {args} not supported by k3stw's kubelet; ignored",
                args=", ".join(config.kubelet_args.ignored),
            )
        client = node_client(reactor, joined, config.server_url)
        settings = kubelet_settings(config, joined)
        if config.runtime is None:
            return KubeletService(reactor, client, settings)
        from k3stw.kubelet.pods.cgroups import PodCgroups
        from k3stw.kubelet.pods.logs import CONTAINER_LOGS
        from k3stw.kubelet.pods.worker import PodFiles
        from k3stw.kubelet.volumes import KUBELET_ROOT, SystemMounter, VolumeManager

        # A containerd that cannot start ends the node, as it ends k3s.
        runtime = NodeRuntime(
            reactor, config.data_dir, config.runtime, fatal=partial(stop_with_error, reactor)
        )
        volumes = VolumeManager(
            client, reactor, settings.node_name, SystemMounter(reactor), KUBELET_ROOT
        )
        return KubeletService(
            reactor,
            client,
            settings,
            runtime=runtime,
            volumes=volumes,
            cgroups=PodCgroups(settings.cgroup_root),
            pod_files=PodFiles(KUBELET_ROOT, CONTAINER_LOGS),
        )

    return make


def node_factory(
    reactor: Any, config: AgentConfig, balancer: LoadBalancerService | None = None
) -> KubeletFactory:
    """
    What a node runs once joined: the kubelet and its HTTPS API; and on an
    agent (with a C{balancer}), a tunnel to every server, whose states are
    the servers' health, and the discovery of the servers as they change.
    """
    make_kubelet = kubelet_factory(reactor, config)

    def make(joined: Joined) -> IService:
        services = MultiService()
        kubelet = make_kubelet(joined)
        api = KubeletAPIService(
            reactor,
            node_name=joined.identity.name,
            serving=joined.serving,
            client_ca=joined.client_ca,
            port=config.kubelet_args.port,
            data_dir=config.data_dir,
            container_logs=_container_logs(reactor, kubelet) if config.runtime else None,
            pod_stats=_pod_stats(reactor, kubelet) if config.runtime is not None else None,
            streaming=_streaming(reactor, kubelet) if config.runtime is not None else None,
        )
        # A port in use stops the node, as it stops k3s's kubelet.
        api._raiseSynchronously = True
        api.setServiceParent(services)
        if balancer is not None:
            _follow_servers(reactor, config, balancer, joined).setServiceParent(services)
        kubelet.setServiceParent(services)
        if config.runtime is not None:
            settings = NetworkSettings.of(joined.identity.name, joined.settings, config)
            networking = NodeNetworking(reactor, settings, joined, config.server_url)
            networking.setServiceParent(services)
            if networking.ingress is not None:
                api.add_metrics_page("ingress", networking.ingress.metrics_page)
        return services

    return make


def _container_logs(reactor: Any, kubelet: KubeletService) -> ContainerLogs:
    """The kubelet's ``/containerLogs``: its pods once it runs them, files followed with inotify."""
    from k3stw.kubelet.logstream import ContainerLogs, inotify_watch

    return ContainerLogs(reactor, lambda: kubelet.pod_workers, inotify_watch(reactor))


def _pod_stats(reactor: Any, kubelet: KubeletService) -> PodStatsSource:
    """The pods' stats, from the kubelet's runtime once it answered."""
    # Only a node with a runtime loads the CRI messages.
    from k3stw.kubelet.podstats import PodStatsProvider, in_reactor_threads

    return PodStatsProvider(lambda: kubelet.runtime, in_reactor_threads(reactor)).collect


def _streaming(reactor: Any, kubelet: KubeletService) -> Streaming:
    """Exec, attach and port-forward to the pods C{kubelet} runs."""

    def pod(namespace: str, name: str) -> Object | None:
        workers = kubelet.pod_workers
        return workers.pod_by_name(namespace, name) if workers is not None else None

    return Streaming(reactor, pod, lambda: kubelet.runtime)


def _follow_servers(
    reactor: Any, config: AgentConfig, balancer: LoadBalancerService, joined: Joined
) -> IService:
    """Tunnels to the balancer's servers, and the discovery that keeps both current."""
    # Only agents have a balancer: a server never loads the tunnel client or the discovery.
    from k3stw.agent.apiservers import APIServerDiscovery
    from k3stw.agent.tunnels import TunnelSet
    from k3stw.loadbalancer.health import ping_check

    services = MultiService()
    # Until a server has a tunnel, and for the default server, a /ping tells.
    balancer.set_default_health_check(ping_check(reactor, PinnedCAPolicy(joined.server_ca)))

    def tunnel_changed(address: str, check: HealthCheck | None) -> None:
        if check is None:
            balancer.clear_health_check(address)
        else:
            balancer.set_health_check(address, check)

    policy = PinnedCAPolicy(joined.server_ca, joined.client)
    tunnels = TunnelSet(reactor, policy, config.kubelet_args.port, tunnel_changed)
    tunnels.setServiceParent(services)
    tunnels.follow(balancer.servers.addresses)

    def servers_changed(addresses: list[str]) -> None:
        balancer.update_servers(addresses)
        tunnels.follow(balancer.servers.addresses)

    kube = node_client(reactor, joined, config.server_url)
    APIServerDiscovery(reactor, kube, servers_changed).setServiceParent(services)
    return services


class NodeAgent(MultiService):
    """
    Join (the handshake, retrying as k3s retries), then run the kubelet.

    :param fatal: told, once, of a failure that retrying cannot fix (a token
        for another cluster, identity files that cannot be used).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        config: AgentConfig,
        fetch: Fetch,
        send: Send,
        start_kubelet: KubeletFactory | None,
        fatal: Callable[[str], None],
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.config = config
        self.fetch = fetch
        self.send = send
        self.start_kubelet = start_kubelet
        self.fatal = fatal
        self.joined: Joined | None = None
        self._joining: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._joining = Deferred.fromCoroutine(self._join())
        self._joining.addErrback(self._join_failed)

    def stopService(self) -> Deferred[None] | None:
        if self._joining is not None:
            self._joining.cancel()
        stopped: Deferred[None] | None = super().stopService()
        return stopped

    async def _join(self) -> None:
        handshake = Handshake(self.config.join_request(), self.reactor, self.fetch, self.send)
        self.joined = await handshake.run()
        self._log.info(
            "Node {node} joined the cluster at {url}; kubelet credentials are in {directory}",
            node=self.joined.identity.name,
            url=self.config.server_url,
            directory=str(self.config.data_dir / "agent"),
        )
        if self.start_kubelet is not None:
            self.start_kubelet(self.joined).setServiceParent(self)
        if not self.config.is_server:
            # A server tells systemd itself, once its API is up.
            notify_systemd("READY=1")

    def _join_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        if failure.check(CAHashMismatch, StartupError, CannotListenError):
            self.fatal(str(failure.value))
            return
        self._log.failure("The agent stopped joining", failure)


class AgentService(ApplianceService):
    """
    The root of ``k3s-agent``: a node agent whose fatal errors end the process,
    behind its load balancer when it has one (C{config.server_url} is then
    the balancer's local URL).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        config: AgentConfig,
        fetch: Fetch,
        send: Send,
        start_kubelet: KubeletFactory | None = None,
        balancer: LoadBalancerService | None = None,
    ) -> None:
        super().__init__("k3s-agent")
        self.reactor = reactor
        self.balancer = balancer
        if balancer is not None:
            # First: the handshake already goes through it.
            balancer.setServiceParent(self)
        self.node = NodeAgent(reactor, config, fetch, send, start_kubelet, self._fatal)
        self.node.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        balancer = self.balancer
        if balancer is not None:
            balancer.when_listening().addErrback(
                lambda failure: self._fatal(
                    f"failed to create load balancer: listen tcp {balancer.bind_host}:"
                    f"{balancer.port}: {failure.getErrorMessage()}"
                )
            )

    @property
    def joined(self) -> Joined | None:
        return self.node.joined

    def _fatal(self, message: str) -> None:
        # The real reactor is also an IReactorCore; only it can end the process.
        stop_with_error(self.reactor, message)  # type: ignore[arg-type]
