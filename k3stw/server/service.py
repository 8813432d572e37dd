"""The service tree of ``k3s-server``."""

from __future__ import annotations

import datetime
from functools import partial
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint

from k3stw.agent.cacerts import https_fetcher
from k3stw.agent.join import https_sender
from k3stw.agent.service import AgentConfig, NodeAgent, NodeSettings, node_factory
from k3stw.apiserver.bootstrap import bootstrap
from k3stw.apiserver.nodeproxy import NodeProxy
from k3stw.apiserver.registry import Registry
from k3stw.apiserver.resource import APIRequest, KubernetesAPI
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers.crds import CRDController
from k3stw.controllers.endpoints import APIServerEndpoints
from k3stw.controllers.garbage import GarbageCollector
from k3stw.controllers.nodelifecycle import NodeLifecycleController
from k3stw.controllers.nodepassword import NodePasswordController
from k3stw.datastore.endpoint import datastore_for_endpoint
from k3stw.datastore.interface import IDatastore
from k3stw.lifecycle import ApplianceService, stop_with_error
from k3stw.logs import Logger
from k3stw.pki.kubeconfig import write_kubeconfig
from k3stw.pki.store import ServerCredentials, load_or_create_server_credentials
from k3stw.pki.tls import PinnedCAPolicy, server_tls_options
from k3stw.pki.token import Token
from k3stw.server.config import ServerConfig
from k3stw.supervisor.connect import TunnelConnectResource
from k3stw.supervisor.nodes import NodeEnrollment, NodePasswords
from k3stw.supervisor.resource import Readiness, supervisor_resource
from k3stw.tunnel.registry import TunnelRegistry
from k3stw.web import QuietSite


class ServerService(ApplianceService):
    """
    The root of a server: the datastore, the controllers, the supervisor
    listener with the Kubernetes API, and (unless ``--disable-agent``) the
    server's own node, which joins once the server is ready.
    """

    _log = Logger()

    def __init__(
        self,
        config: ServerConfig,
        credentials: ServerCredentials,
        datastore: IDatastore,
        store: ObjectStore,
        registry: Registry,
        reactor: Any,
    ) -> None:
        super().__init__("k3s-server")
        self.reactor = reactor
        self.config = config
        self.credentials = credentials
        self.datastore = datastore
        self.store = store
        self.registry = registry
        self.readiness = Readiness()
        self._becoming_ready: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._becoming_ready = Deferred.fromCoroutine(self._become_ready())
        self._becoming_ready.addErrback(
            lambda failure: (
                None
                if failure.check(CancelledError)
                else self._log.failure("The server could not finish starting", failure)
            )
        )

    def stopService(self) -> Deferred[None] | None:
        if self._becoming_ready is not None:
            self._becoming_ready.cancel()
        stopped: Deferred[None] | None = super().stopService()
        return stopped

    def _start_embedded_agent(self, node: NodeSettings) -> None:
        """The server's own node: the same join, straight to this server, no load balancer."""
        token = Token(self.credentials.token.ca_hash, "node", self.credentials.agent_password)
        config = AgentConfig.of_node(self.config.local_url, token, node, is_server=True)
        reactor = self.reactor
        agent = NodeAgent(
            reactor,
            config,
            https_fetcher(reactor),
            https_sender(reactor),
            node_factory(reactor, config),
            self._fatal,
        )
        agent.setServiceParent(self)

    def _fatal(self, message: str) -> None:
        stop_with_error(self.reactor, message)

    async def _become_ready(self) -> None:
        # Every backend is also a Service that says when it has connected.
        await self.datastore.when_ready()  # type: ignore[attr-defined]
        await bootstrap(self.store, self.registry)
        self.readiness.mark_ready()
        if self.config.node is not None:
            self._start_embedded_agent(self.config.node)
        self._log.info(
            "k3stw server listening on {address}:{port}; admin kubeconfig at {kubeconfig}",
            address=self.config.bind_address,
            port=self.config.https_port,
            kubeconfig=str(self.config.kubeconfig),
        )
        self._log.info(
            "Node token is available at {path}", path=str(self.config.server_dir / "token")
        )


def build_server(
    config: ServerConfig, reactor: Any, now: datetime.datetime | None = None
) -> IService:
    """
    Prepare the server's files and assemble its services.

    :param reactor: the reactor (time, threads, TLS listening).

    Credentials and the admin kubeconfig are made here, before the reactor
    runs, so that a problem with them stops the start with one clear line.

    :raises k3stw.lifecycle.StartupError: the data directory, a certificate
        or a token cannot be used.
    """
    when = now or datetime.datetime.now(datetime.UTC)
    credentials = load_or_create_server_credentials(
        config.server_dir, config.serving_alt_names(), when, config.token, config.agent_token
    )
    write_kubeconfig(
        config.kubeconfig,
        config.local_url,
        credentials.server_ca_bundle,
        credentials.admin,
        config.kubeconfig_mode,
    )
    if config.datastore_endpoint is None:
        (config.server_dir / "db").mkdir(mode=0o700, exist_ok=True)
    datastore = datastore_for_endpoint(
        reactor, config.datastore_endpoint, str(config.data_dir), config.datastore_tls
    )
    store = ObjectStore(datastore, reactor)
    registry = Registry.with_built_ins()
    root = ServerService(config, credentials, datastore, store, registry, reactor)
    datastore.setServiceParent(root)
    GarbageCollector(datastore, store, registry, reactor).setServiceParent(root)
    CRDController(datastore, store, registry, reactor).setServiceParent(root)
    NodePasswordController(store, registry, reactor).setServiceParent(root)
    NodeLifecycleController(
        store,
        registry.require("", "v1", "nodes"),
        registry.require("coordination.k8s.io", "v1", "leases"),
        reactor,
        grace_period=config.node_monitor_grace_period,
    ).setServiceParent(root)
    address, port = config.advertised
    endpoints = APIServerEndpoints(
        datastore, store, registry, reactor, address, port, config.kubernetes_cluster_ip
    )
    endpoints.setServiceParent(root)
    # Agents' tunnels, which nodes/proxy reaches their kubelets through.
    tunnels = TunnelRegistry(reactor)
    node_proxy = NodeProxy(
        partial(store.get, registry.require("", "v1", "nodes"), None),
        tunnels,
        PinnedCAPolicy(credentials.server_ca_bundle, credentials.kube_apiserver),
        config.node.node_name if config.node is not None else None,
        reactor,
    )
    api = KubernetesAPI(store, registry, reactor, f"{address}:{port}", node_proxy)
    node_passwords = NodePasswords(store, registry, reactor)
    node_passwords.setServiceParent(root)
    readiness = root.readiness
    enrollment = NodeEnrollment(
        credentials.server_ca,
        credentials.server_ca_bundle,
        credentials.client_ca,
        {"node": credentials.agent_password, "server": credentials.token.password},
        node_passwords,
        lambda: readiness.ready,
        reactor,
        config.agent_settings(),
        endpoints.live_servers,
    )
    tunnel = TunnelConnectResource(tunnels, credentials.client_ca.certificate, reactor)
    site = QuietSite(
        supervisor_resource(credentials.server_ca_bundle, readiness, api, enrollment, tunnel)
    )
    site.requestFactory = APIRequest
    tls = server_tls_options(
        credentials.serving, credentials.server_ca_bundle, credentials.client_ca
    )
    endpoint = SSL4ServerEndpoint(
        reactor, config.https_port, tls, backlog=128, interface=config.bind_address
    )
    listener = StreamServerEndpointService(endpoint, site)
    # Fail the start, not just log, when the port is taken.
    listener._raiseSynchronously = True
    listener.setName("supervisor")
    listener.setServiceParent(root)
    return root
