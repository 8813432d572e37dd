"""The service tree of ``k3s-server``."""

from __future__ import annotations

import datetime
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint

from k3stw.agent.cacerts import https_fetcher
from k3stw.agent.join import https_sender
from k3stw.agent.service import AgentConfig, NodeAgent, NodeSettings, node_factory
from k3stw.apiserver import metricsapi
from k3stw.apiserver.admission import Admission
from k3stw.apiserver.allocation import ServiceAllocator, repair_job
from k3stw.apiserver.bootstrap import bootstrap
from k3stw.apiserver.health import Health, HealthCheck
from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import built_in_registry, crds, nodes, pods, secrets, services
from k3stw.apiserver.metrics import STORAGE_COUNT_INTERVAL, APIMetrics, served_resources
from k3stw.apiserver.nodeproxy import NodeProxy
from k3stw.apiserver.rbac import RBAC
from k3stw.apiserver.rbacpolicy import bootstrap_policy
from k3stw.apiserver.registry import Registry
from k3stw.apiserver.request import APIRequest
from k3stw.apiserver.routing import KubernetesAPI
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.apiserver.tokens.authenticator import ServiceAccountTokens
from k3stw.apiserver.tokens.keys import ServiceAccountKeys
from k3stw.apiserver.tokens.request import TokenIssuer
from k3stw.apiserver.tokens.reviews import authentication_reviews
from k3stw.controllers import coredns, ingress, localpath, servicelb
from k3stw.controllers.clusterroleaggregation import ClusterRoleAggregation
from k3stw.controllers.crds import CRDController
from k3stw.controllers.cronjobs import CronJobController
from k3stw.controllers.daemonsets import DaemonSetController
from k3stw.controllers.deploy import COMPONENT as DEPLOY
from k3stw.controllers.deploy import DeployController, install_addon_crd
from k3stw.controllers.deployment import DeploymentController
from k3stw.controllers.disruption import DisruptionController
from k3stw.controllers.endpoints import APIServerEndpoints
from k3stw.controllers.events import EventRecorder
from k3stw.controllers.garbage import GarbageCollector
from k3stw.controllers.horizontal import HorizontalController, PodMetricsSource
from k3stw.controllers.jobs import JobController, TTLAfterFinishedController
from k3stw.controllers.leaderelection import (
    CONTROLLER_MANAGER,
    SCHEDULER,
    LeaderElected,
    candidate_identity,
)
from k3stw.controllers.legacytokens import LegacyTokenController
from k3stw.controllers.namespacedefaults import default_service_accounts, root_ca_publisher
from k3stw.controllers.nodeipam import COMPONENT as CIDR_ALLOCATOR
from k3stw.controllers.nodeipam import CIDRSet, NodeIPAMController, cidr_sets
from k3stw.controllers.nodelifecycle import NodeLifecycleController
from k3stw.controllers.persistentvolumes import PersistentVolumeBinder
from k3stw.controllers.podgc import PodGCController
from k3stw.controllers.replicaset import ReplicaSetController
from k3stw.controllers.resourcequota import ResourceQuotaController
from k3stw.controllers.serviceendpoints import EndpointsController, EndpointSliceController
from k3stw.controllers.servicelb import ServiceLBController
from k3stw.controllers.statefulsets import StatefulSetController
from k3stw.controllers.tainteviction import TaintEvictionController
from k3stw.datastore.blocking import BlockingKeys, blocking_keys
from k3stw.datastore.endpoint import datastore_for_endpoint
from k3stw.datastore.interface import DatastoreUnavailable, IDatastore
from k3stw.hostport import join_host_port
from k3stw.lifecycle import ApplianceService, StartupError, notify_systemd, stop_with_error
from k3stw.logs import Logger
from k3stw.machinery.objects import Object
from k3stw.machinery.times import utc
from k3stw.machinery.timing import PeriodicJob
from k3stw.pki.kubeconfig import write_kubeconfig
from k3stw.pki.store import (
    ServerCredentials,
    ServerLayout,
    load_or_create_server_credentials,
)
from k3stw.pki.tls import PinnedCAPolicy, server_tls_options
from k3stw.pki.token import InvalidToken, Token, parse_token
from k3stw.scheduler.scheduler import Scheduler
from k3stw.server import bootstrapdata
from k3stw.server.config import ServerConfig
from k3stw.server.tokenrotation import token_route
from k3stw.supervisor.bootstraptokens import bootstrap_user
from k3stw.supervisor.connect import TunnelConnectResource
from k3stw.supervisor.nodecontroller import NodePasswordController
from k3stw.supervisor.nodes import NodeEnrollment, NodePasswords
from k3stw.supervisor.resource import Readiness, supervisor_resource
from k3stw.tunnel.registry import TunnelRegistry
from k3stw.web import QuietSite

if TYPE_CHECKING:
    from k3stw.server.secretsencrypt import SecretsEncryption


class ServerService(ApplianceService):
    """
    The root of a server: the datastore, the supervisor listener with the
    Kubernetes API, and, once the datastore answers and the system namespaces
    exist, the control plane and (unless ``--disable-agent``) the server's own
    node.
    """

    _log = Logger()

    def __init__(
        self,
        config: ServerConfig,
        credentials: ServerCredentials,
        datastore: IDatastore,
        store: ObjectStore,
        registry: Registry,
        control_plane: IService,
        reactor: Any,
    ) -> None:
        super().__init__("k3s-server")
        self.reactor = reactor
        self.config = config
        self.credentials = credentials
        self.datastore = datastore
        self.store = store
        self.registry = registry
        self.control_plane = control_plane
        self.readiness = Readiness()
        #: Set once SIGTERM (or a fatal error) begins the stop: /readyz fails from then on.
        self.stopping = False
        #: Set once the bootstrap RBAC policy is reconciled.
        self.policy_written = False
        self._becoming_ready: Deferred[None] | None = None

    def startService(self) -> None:
        warning = self.config.advertise_warning()
        if warning is not None:
            self._log.warn("{warning}", warning=warning)
        if not self.config.api_checks:
            self._log.warn(
                "--unchecked-api: the API validates, defaults and authorizes nothing; "
                "any authenticated user may store anything (for benchmarks only)"
            )
        super().startService()
        self._becoming_ready = Deferred.fromCoroutine(self._become_ready())
        self._becoming_ready.addErrback(
            lambda failure: (
                None
                if failure.check(CancelledError)
                else self._log.failure("The server could not finish starting", failure)
            )
        )

    def stopService(self) -> Deferred[None]:
        """
        Stop everything that writes to the datastore (the control plane, which
        gives up this server's endpoints lease; the API; the own node), then the
        datastore: MultiService would stop them all at once, and the last
        writes would find the datastore closed.
        """
        if self._becoming_ready is not None:
            self._becoming_ready.cancel()
        self.stopping = True
        Service.stopService(self)
        datastore = IService(self.datastore)
        users = [service for service in reversed(list(self)) if service is not datastore]
        stopping = gatherResults([maybeDeferred(service.stopService) for service in users])
        stopping.addBoth(lambda _: datastore.stopService() if datastore.running else None)
        return stopping.addCallback(lambda _: None)

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
        await install_addon_crd(self.store)
        if localpath.COMPONENT not in self.config.disable:
            await localpath.deploy(self.store, self.registry, str(self.config.local_storage_path))
        await ingress.deploy(
            self.store, self.registry, ingress.DISABLE_NAME not in self.config.disable
        )
        if coredns.COMPONENT not in self.config.disable:
            try:
                await coredns.deploy(
                    self.store, self.config.cluster_dns, self.config.cluster_domain
                )
            except StatusError as e:
                # As k3s's deploy controller: a manifest refused is logged, the server goes on.
                self._log.error("Failed to apply the coredns manifest: {error}", error=e)
        self.control_plane.setServiceParent(self)
        self.readiness.mark_ready()
        # kube's rbac/bootstrap-roles hook: the API's /readyz waits for it, not the node join.
        await bootstrap_policy(self.store)
        self.policy_written = True
        if self.config.node is not None:
            self._start_embedded_agent(self.config.node)
        address, port = self.config.advertised
        self._log.info(
            "k3stw server listening on {address}:{port}",
            address=self.config.bind_address,
            port=self.config.https_port,
        )
        self._log.info("Wrote kubeconfig {path}", path=str(self.config.kubeconfig))
        self._log.info(
            "Node token is available at {path}", path=str(self.config.server_dir / "token")
        )
        self._log.info(
            "To join node to cluster: twistd -n k3s-agent --server https://{host}:{port} "
            "--token ${{NODE_TOKEN}}",
            host=join_host_port(address, port).rpartition(":")[0],
            port=port,
        )
        self._log.info("k3s is up and running")
        notify_systemd("READY=1")


_log = Logger(namespace="k3stw.server")

#: How long /healthz's datastore check waits for an answer.
HEALTH_TIMEOUT = 2.0


#: How often the allocations are checked against the Services (kube-apiserver: 3 min).
REPAIR_INTERVAL = 60.0


async def _all_services(store: ObjectStore) -> list[Object]:
    listed = await store.list(services.RESOURCE, None)
    return listed.items


def server_health(server: ServerService, datastore: IDatastore, rbac: RBAC | None = None) -> Health:
    """kube-apiserver's health checks, in its names, for this server."""
    reactor = server.reactor

    async def etcd() -> str | None:
        reading = datastore.health()
        reading.addTimeout(HEALTH_TIMEOUT, reactor)
        try:
            await reading
        except Exception as e:
            return f"the datastore did not answer: {e}"
        return None

    async def bootstrapped() -> str | None:
        return None if server.readiness.ready else "the system namespaces are not there yet"

    async def shutdown() -> str | None:
        return "the server is shutting down" if server.stopping else None

    async def bootstrap_roles() -> str | None:
        if rbac is None or (server.policy_written and rbac.synced):
            return None
        return "the bootstrap roles are not there yet"

    return Health(
        (
            HealthCheck("etcd", etcd),
            HealthCheck("poststarthook/bootstrap-controller", bootstrapped),
            HealthCheck("poststarthook/rbac/bootstrap-roles", bootstrap_roles),
            HealthCheck("shutdown", shutdown, endpoints=("readyz",)),
        )
    )


#: How long a starting server waits for an external datastore to answer.
DATASTORE_WAIT = 30.0


def _credentials_shared_through_the_datastore(
    config: ServerConfig, now: datetime.datetime
) -> ServerCredentials:
    """
    The server's credentials; on an external datastore, with the cluster's CAs
    and passwd taken from it (or, on the first server, saved to it), so that
    every server of the cluster shares them as k3s's do.
    """
    keys = _datastore_keys(config)
    try:
        password = _token_password(config)
        took = (
            keys is not None
            and password is not None
            and bootstrapdata.take(config.server_dir, keys, password)
        )
        credentials = load_or_create_server_credentials(
            config.server_dir, config.serving_alt_names(), now, config.token, config.agent_token
        )
        if config.secrets_encryption:
            from k3stw.server.secretsencrypt import write_first_key_file

            # After taking the cluster's key file, if any; before saving a first one.
            write_first_key_file(config.server_dir, config.secrets_encryption_provider)
        if keys is not None and not took:
            if password is None and keys.list_prefix(bootstrapdata.PREFIX):
                raise StartupError(bootstrapdata.OTHER_TOKEN)
            if not bootstrapdata.save(config.server_dir, keys, credentials.token.password):
                raise StartupError(
                    "another server saved the cluster's bootstrap data while this one "
                    f"started; remove {config.server_dir / 'tls'} and "
                    f"{config.server_dir / 'cred'} and start this server again"
                )
        return credentials
    except DatastoreUnavailable as e:
        raise _unreachable(e) from None
    finally:
        if keys is not None:
            keys.close()


def _token_password(config: ServerConfig) -> str | None:
    """The password the bootstrap data is sealed with: ``--token``'s, else the stored token's."""
    if config.token is not None:
        return config.token.password
    try:
        return parse_token(ServerLayout(config.server_dir).token.read_text()).password
    except (OSError, InvalidToken):
        return None


def _datastore_keys(config: ServerConfig) -> BlockingKeys | None:
    """Blocking access to an external datastore (None on SQLite), waiting while it is down."""
    deadline = time.monotonic() + DATASTORE_WAIT
    while True:
        try:
            return blocking_keys(
                config.datastore_endpoint, str(config.data_dir), config.datastore_tls
            )
        except DatastoreUnavailable as e:
            if time.monotonic() > deadline:
                raise _unreachable(e) from None
            _log.warn("Waiting for the datastore: {error}", error=str(e))
            time.sleep(1.0)


def _unreachable(error: DatastoreUnavailable) -> StartupError:
    return StartupError(
        f"cannot reach the datastore to share the cluster's bootstrap data: {error}"
    )


def prepare_server(config: ServerConfig, now: datetime.datetime | None = None) -> ServerCredentials:
    """
    Prepare the server's files before the reactor runs, so that a problem with
    them stops the start with one clear line: credentials (shared through an
    external datastore, waiting for it while it is down), the admin kubeconfig,
    and SQLite's folder.  Blocking: C{makeService} calls it, never the reactor.

    :raises k3stw.lifecycle.StartupError: the data directory, a certificate
        or a token cannot be used, or the datastore cannot be reached.
    """
    when = now or datetime.datetime.now(datetime.UTC)
    if config.etcd is not None:
        from k3stw.etcd.join import prepare_member

        credentials = prepare_member(config, when)
    else:
        credentials = _credentials_shared_through_the_datastore(config, when)
    write_kubeconfig(
        config.kubeconfig,
        config.local_url,
        credentials.server_ca_bundle,
        credentials.admin,
        config.kubeconfig_mode,
    )
    if config.datastore_endpoint is None and config.etcd is None:
        (config.server_dir / "db").mkdir(mode=0o700, exist_ok=True)
    config.manifests_dir.mkdir(mode=0o700, exist_ok=True)
    return credentials


def control_plane(
    store: ObjectStore,
    registry: Registry,
    config: ServerConfig,
    ca_bundle: bytes,
    keys: ServiceAccountKeys,
    informers: ServerInformers,
    resource_metrics: PodMetricsSource,
) -> tuple[IService, APIServerEndpoints]:
    """
    The server's control loops on its shared informers (started with them
    once the server is ready), and the reconciler of the ``kubernetes``
    endpoints.

    :param ca_bundle: the cluster CA that signs the API's certificate, published
        in every namespace.
    :param keys: the service-account key, which signs legacy Secrets' tokens.
    :param resource_metrics: the pods' usage the autoscaler reads (``metrics.k8s.io``'s source).
    """
    services = MultiService()
    informers.setServiceParent(services)
    # kube-controller-manager's loops run only on the server that holds its
    # Lease, kube-scheduler's on the holder of its own: add them to these.
    elected_controller_manager = LeaderElected(
        store,
        CONTROLLER_MANAGER,
        candidate_identity(config.hostname),
        EventRecorder(store, store.clock, CONTROLLER_MANAGER, config.hostname),
    )
    elected_controller_manager.setServiceParent(services)
    elected_scheduler = LeaderElected(
        store,
        SCHEDULER,
        candidate_identity(config.hostname),
        EventRecorder(store, store.clock, "default-scheduler", config.hostname),
    )
    elected_scheduler.setServiceParent(services)
    ClusterRoleAggregation(informers, store).setServiceParent(elected_controller_manager)
    GarbageCollector(informers, store, registry).setServiceParent(elected_controller_manager)
    CRDController(informers, store, registry).setServiceParent(services)
    NodePasswordController(informers, store).setServiceParent(services)
    default_service_accounts(informers, store).setServiceParent(elected_controller_manager)
    root_ca_publisher(informers, store, ca_bundle).setServiceParent(elected_controller_manager)
    LegacyTokenController(informers, store, keys, ca_bundle).setServiceParent(
        elected_controller_manager
    )
    NodeLifecycleController(
        informers, store, grace_period=config.node_monitor_grace_period
    ).setServiceParent(elected_controller_manager)
    NodeIPAMController(
        informers,
        store,
        _node_cidr_sets(config),
        EventRecorder(store, store.clock, CIDR_ALLOCATOR, config.hostname),
    ).setServiceParent(elected_controller_manager)
    JobController(informers, store, config.hostname).setServiceParent(elected_controller_manager)
    TTLAfterFinishedController(informers, store).setServiceParent(elected_controller_manager)
    CronJobController(informers, store, config.hostname).setServiceParent(
        elected_controller_manager
    )
    Scheduler(informers, store, config.hostname, registry).setServiceParent(elected_scheduler)
    HorizontalController(informers, store, registry, resource_metrics).setServiceParent(
        elected_controller_manager
    )
    for controller in (
        EndpointsController(informers, store),
        EndpointSliceController(informers, store),
        DisruptionController(informers, store, registry),
        PodGCController(informers, store),
        TaintEvictionController(informers, store),
        DaemonSetController(informers, store, registry, config.hostname),
        StatefulSetController(informers, store, registry, config.hostname),
        ReplicaSetController(informers, store),
        ReplicaSetController(
            informers, store, registry.require("", "v1", "replicationcontrollers")
        ),
        DeploymentController(informers, store),
        ResourceQuotaController(informers, store, registry),
        PersistentVolumeBinder(informers, store, registry),
    ):
        controller.setServiceParent(elected_controller_manager)
    if servicelb.DISABLE_NAME not in config.disable:
        ServiceLBController(
            informers,
            store,
            EventRecorder(store, store.clock, servicelb.COMPONENT, config.hostname),
        ).setServiceParent(elected_controller_manager)
    DeployController(
        store,
        registry,
        config.manifests_dir,
        config.disable,
        EventRecorder(store, store.clock, DEPLOY, config.hostname),
        store.clock,
    ).setServiceParent(elected_controller_manager)
    if localpath.COMPONENT not in config.disable:
        localpath.LocalPathProvisioner(
            informers, store, registry, config.hostname
        ).setServiceParent(elected_controller_manager)
    if coredns.COMPONENT not in config.disable:
        coredns.ClusterDNSController(informers, store).setServiceParent(elected_controller_manager)
    if ingress.DISABLE_NAME not in config.disable:
        ingress.IngressStatusController(informers, store, registry).setServiceParent(
            elected_controller_manager
        )
    address, port = config.advertised
    endpoints = APIServerEndpoints(informers, store, address, port, config.kubernetes_cluster_ip)
    endpoints.setServiceParent(services)
    return services, endpoints


def _node_cidr_sets(config: ServerConfig) -> list[CIDRSet]:
    try:
        return cidr_sets(config.cluster_cidr, config.node_cidr_mask_size)
    except ValueError as e:
        raise StartupError(f"--cluster-cidr / --node-cidr-mask-size: {e}") from None


def _secrets_encryption(
    config: ServerConfig, datastore: IDatastore, reactor: Any, password: str
) -> SecretsEncryption | None:
    """With ``--secrets-encryption``, the key file's stages over the Secrets' datastore view."""
    if not config.secrets_encryption:
        return None
    # Loaded only by the servers that encrypt.
    from k3stw.apiserver.encryption import EncryptedDatastore
    from k3stw.server.secretsencrypt import SecretsEncryption, prepare_encryption

    try:
        transformer = prepare_encryption(config.server_dir, config.secrets_encryption_provider)
    except (OSError, ValueError) as e:
        raise StartupError(f"--secrets-encryption: {e}") from None
    view = EncryptedDatastore(datastore, transformer, secrets.RESOURCE.storage_prefix())
    publish = None
    if config.datastore_endpoint is not None:
        publish = partial(bootstrapdata.publish, datastore, config.server_dir, password)
    return SecretsEncryption(
        config.server_dir,
        config.hostname,
        view,
        reactor.seconds,
        publish,
        config.secrets_encryption_provider,
    )


def _embedded_etcd(config: ServerConfig, reactor: Any, token_password: str) -> IDatastore:
    from k3stw.etcd.config import EtcdLayout, MemberConfig
    from k3stw.etcd.join import member_address
    from k3stw.etcd.member import EmbeddedEtcd

    settings = config.etcd
    assert settings is not None
    layout = EtcdLayout(config.server_dir)
    client_url = MemberConfig("", member_address(config)).client_url
    etcd = EmbeddedEtcd(
        reactor, layout, client_url, reset=settings.cluster_reset, token_password=token_password
    )
    if not settings.cluster_reset:
        from k3stw.etcd.snapshots import EtcdSnapshots

        etcd.snapshots = EtcdSnapshots(reactor, layout, settings, client_url, config.hostname)
    datastore: IDatastore = etcd
    return datastore


def _etcd_node_controller(
    config: ServerConfig, datastore: IDatastore, informers: ServerInformers, store: ObjectStore
) -> IService:
    """k3s's etcd metadata and member-removal controller, for this server's member."""
    from k3stw.etcd.config import EtcdLayout
    from k3stw.etcd.join import member_address
    from k3stw.etcd.member import EmbeddedEtcd
    from k3stw.etcd.nodes import EtcdNodeController

    assert isinstance(datastore, EmbeddedEtcd)
    member = EtcdLayout(config.server_dir).name_file.read_text().strip()
    return EtcdNodeController(
        informers, store, datastore, config.hostname, member, member_address(config)
    )


def _record_snapshots(server: ServerService, datastore: IDatastore) -> None:
    """
    The snapshots' ``ETCDSnapshotFile`` records, written through this
    server's store after each snapshot and once it is ready (as k3s
    reconciles them at start).
    """
    from k3stw.etcd.member import EmbeddedEtcd
    from k3stw.etcd.snapshotrecords import SnapshotRecords

    if not isinstance(datastore, EmbeddedEtcd) or datastore.snapshots is None:
        return
    snapshots = datastore.snapshots
    snapshots.records = SnapshotRecords(
        server.store, server.registry, server.config.hostname, snapshots.metadata_dir
    )
    server.readiness.when_ready().addCallback(lambda _: Deferred.fromCoroutine(snapshots.record()))


def _add_etcd_routes(
    root: Any, config: ServerConfig, datastore: IDatastore, passwords: Any
) -> None:
    """``/v1-k3s/server-bootstrap`` on every server; ``/db/info`` on embedded etcd."""
    from k3stw.etcd.membership import add_routes

    etcd = None
    if config.etcd is not None:
        from k3stw.etcd.member import EmbeddedEtcd

        etcd = datastore if isinstance(datastore, EmbeddedEtcd) else None
    add_routes(root, config.server_dir, etcd, passwords)


def build_server(
    config: ServerConfig,
    credentials: ServerCredentials,
    reactor: Any,
    datastore: IDatastore | None = None,
) -> ServerService:
    """
    Assemble a server's services on C{reactor} (nothing starts until the tree does).

    :param credentials: from L{prepare_server}.
    :param datastore: the datastore to use (a test's in-memory one); by default,
        the one C{config} names.
    """
    if datastore is None and config.etcd is not None:
        datastore = _embedded_etcd(config, reactor, credentials.token.password)
    if datastore is None:
        datastore = datastore_for_endpoint(
            reactor, config.datastore_endpoint, str(config.data_dir), config.datastore_tls
        )
    encryption = _secrets_encryption(config, datastore, reactor, credentials.token.password)
    store = ObjectStore(
        datastore if encryption is None else encryption.datastore, reactor, checks=config.api_checks
    )
    allocator = ServiceAllocator(datastore, reactor, config.service_cidr, config.node_ports)
    store.allocators[("", services.RESOURCE.plural)] = allocator
    # The resource metrics (kubectl top) are answered by this server, as k3s's metrics-server would.
    registry = Registry.serving((*built_in_registry(), *metricsapi.RESOURCES))
    store.observe(crds.serve_written_crds(registry))
    keys = ServiceAccountKeys.from_pem(credentials.service_key)
    ca_bundle = credentials.server_ca_bundle
    informers = ServerInformers(store)
    store.admission = Admission(informers, registry)
    # RBAC reads the shared informers, which run from when the bootstrap policy is written.
    rbac = RBAC(informers)
    # Agents' tunnels, which nodes/proxy reaches their kubelets through.
    tunnels = TunnelRegistry(reactor)
    node_proxy = NodeProxy(
        partial(store.get, nodes.RESOURCE, None),
        tunnels,
        PinnedCAPolicy(credentials.server_ca_bundle, credentials.kube_apiserver),
        config.node.node_name if config.node is not None else None,
        reactor,
    )
    resource_metrics = metricsapi.ResourceMetrics(
        store, metricsapi.SummaryScraper(node_proxy.fetch, reactor), reactor
    )
    controllers, endpoints = control_plane(
        store, registry, config, ca_bundle, keys, informers, resource_metrics
    )
    if config.etcd is not None:
        _etcd_node_controller(config, datastore, informers, store).setServiceParent(controllers)
    root = ServerService(config, credentials, datastore, store, registry, controllers, reactor)
    if config.etcd is not None:
        _record_snapshots(root, datastore)
    IService(datastore).setServiceParent(root)
    address, port = config.advertised
    metrics = APIMetrics()
    issuer, audiences = config.service_account_issuer, config.api_audiences
    tokens = ServiceAccountTokens(keys, store, reactor, issuer, audiences)
    api = KubernetesAPI(
        store,
        registry,
        reactor,
        f"{address}:{port}",
        node_proxy,
        server_health(root, datastore, rbac),
        metrics,
        tokens=tokens,
        reviews=authentication_reviews(tokens),
        token_requests=TokenIssuer(keys, reactor, issuer, audiences),
        rbac=rbac,
        bound_pods=informers.for_resource(pods.RESOURCE),
        checks=config.api_checks,
        resource_metrics=resource_metrics,
    )
    PeriodicJob(
        reactor,
        REPAIR_INTERVAL,
        repair_job(allocator, lambda: _all_services(store)),
        "repair the service IP and node port allocations",
        first=REPAIR_INTERVAL,
        expected=(DatastoreUnavailable, StatusError),
    ).setServiceParent(root)
    PeriodicJob(
        reactor,
        STORAGE_COUNT_INTERVAL,
        lambda: metrics.count_storage(datastore, served_resources(registry)),
        "count the stored objects",
        expected=(DatastoreUnavailable,),
    ).setServiceParent(root)
    node_passwords = NodePasswords(store, reactor)
    node_passwords.setServiceParent(root)
    passwords = {"node": credentials.agent_password, "server": credentials.token.password}
    readiness = root.readiness
    enrollment = NodeEnrollment(
        credentials.server_ca,
        credentials.server_ca_bundle,
        credentials.client_ca,
        passwords,
        node_passwords,
        lambda: readiness.ready,
        reactor,
        config.agent_settings(),
        endpoints.live_servers,
        lambda request: bootstrap_user(store, request, utc(reactor.seconds())),
    )
    tunnel = TunnelConnectResource(tunnels, credentials.client_ca.certificate, reactor)
    supervisor = supervisor_resource(
        credentials.server_ca_bundle,
        readiness,
        api,
        enrollment,
        tunnel,
        None if encryption is None else encryption.resource(passwords),
    )
    _add_etcd_routes(supervisor, config, datastore, enrollment.passwords)
    token = token_route(config.server_dir, credentials.token.ca_hash, passwords, datastore)
    supervisor.children[b"v1-k3s"].putChild(b"token", token)
    site = QuietSite(supervisor)
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
