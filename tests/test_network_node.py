"""A node's network settings come from the server it joined, as k3s's agents take them."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from k3stw.agent.service import AgentConfig
from k3stw.network.node import NetworkSettings
from k3stw.pki.token import Token
from k3stw.server.config import ServerConfig


def server_config(**changes: object) -> ServerConfig:
    settings: dict[str, object] = dict(
        data_dir=Path("/d"), hostname="s", bind_address="0.0.0.0", https_port=6443,
        node_ips=("10.0.0.1",), advertise_address=None, tls_sans=(), token=None,
        agent_token=None, kubeconfig=Path("/k"), kubeconfig_mode=0o600,
        service_cidr="10.43.0.0/16", cluster_domain="cluster.local",
    )  # fmt: skip
    settings.update(changes)
    return ServerConfig(**settings)  # type: ignore[arg-type]


AGENT = AgentConfig(Path("/d"), "https://s:6443", Token("", "", "t"), node_ips=("10.0.0.2",))


class NetworkSettingsTests(SynchronousTestCase):
    def test_defaults_follow_k3s(self) -> None:
        """A default server: vxlan, kube-proxy and network policy on, every component deployed."""
        settings = NetworkSettings.of("n1", server_config().agent_settings(), AGENT)
        self.assertEqual(
            (settings.flannel_backend, settings.kube_proxy, settings.network_policy),
            ("vxlan", True, True),
        )
        self.assertEqual(settings.cluster_cidrs, ("10.42.0.0/16",))
        self.assertEqual(settings.cluster_dns, ("10.43.0.10",))
        self.assertEqual(settings.node_ips, ("10.0.0.2",))
        self.assertTrue(settings.cluster_dns_enabled)

    def test_server_flags_reach_every_node(self) -> None:
        """The servers' networking flags are the nodes' settings."""
        config = server_config(
            flannel_backend="host-gw",
            disable_kube_proxy=True,
            disable_network_policy=True,
            disable=frozenset({"coredns", "servicelb"}),
            cluster_cidr="10.52.0.0/16,fd00:52::/56",
            service_node_port_range="31000-31999",
        )
        settings = NetworkSettings.of("n1", config.agent_settings(), AGENT)
        self.assertEqual(settings.flannel_backend, "host-gw")
        self.assertFalse(settings.kube_proxy)
        self.assertFalse(settings.network_policy)
        self.assertFalse(settings.cluster_dns_enabled)
        self.assertEqual(settings.cluster_cidrs, ("10.52.0.0/16", "fd00:52::/56"))
        self.assertEqual(settings.node_port_range, "31000-31999")
