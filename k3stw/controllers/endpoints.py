"""
The ``kubernetes`` service's endpoints: every live server, as kube-apiserver's
lease endpoint reconciler keeps them.

Each server holds a TTL key ``/registry/masterleases/<address>`` (15 s,
renewed every 10 s, as kube-apiserver's lease reconciler does) and rewrites
``default/kubernetes`` Endpoints and its EndpointSlice to the addresses that
hold one.  A server that stops
gracefully removes its own lease, so agents stop using it at once; one that
dies drops out when its lease expires.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.defer import Deferred

from k3stw.apiserver.informers import Selection, ServerInformers
from k3stw.apiserver.kinds import endpoints, endpointslices, services
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT, write_fields
from k3stw.datastore.interface import KeyExists, KeyNotFound
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import Informer, each_change
from k3stw.machinery.objects import Object, name_of
from k3stw.machinery.timing import PeriodicJob

LEASE_PREFIX = "/registry/masterleases/"
LEASE_TTL = 15
RENEW_SECONDS = 10.0
SERVICE = "kubernetes"
#: The one key this controller syncs: ``default/kubernetes``.
KEY = f"default/{SERVICE}"
#: The one object of each kind it follows.
KUBERNETES = Selection(
    "kubernetes-service", namespace="default", predicate=lambda obj: name_of(obj) == SERVICE
)


def _address_type(address: str) -> str:
    return "IPv6" if ipaddress.ip_address(address).version == 6 else "IPv4"


class APIServerEndpoints(Controller):
    """
    Keeps this server's lease (renewed every L{RENEW_SECONDS}) and the
    ``kubernetes`` Service, Endpoints and EndpointSlice in ``default``: they are
    rewritten after each renewal when the live servers changed, and at once
    when someone else changes them.

    :param address: this server's advertised address.
    :param port: the port agents reach it on.
    :param cluster_ip: the ``kubernetes`` service's ClusterIP (the first of the service CIDR).
    """

    label = "kubernetes endpoints reconciler"
    expected = TRANSIENT

    def __init__(
        self,
        informers: ServerInformers,
        store: ObjectStore,
        address: str,
        port: int,
        cluster_ip: str,
    ) -> None:
        self.service_informer = informers.for_resource(services.RESOURCE, KUBERNETES)
        self.endpoints_informer = informers.for_resource(endpoints.RESOURCE, KUBERNETES)
        self.slices_informer = informers.for_resource(endpointslices.RESOURCE, KUBERNETES)
        cached = [self.service_informer, self.endpoints_informer, self.slices_informer]
        super().__init__(store.clock, cached)
        self.store = store
        self.datastore = store.datastore
        self.address = address
        self.port = port
        self.cluster_ip = cluster_ip
        for informer in cached:
            self.add_handler(informer, each_change(self._changed))
        PeriodicJob(
            store.clock,
            RENEW_SECONDS,
            self._renew,
            "Failed to renew this server's lease",
            expected=TRANSIENT,
        ).setServiceParent(self)

    @property
    def lease_key(self) -> str:
        return LEASE_PREFIX + self.address

    def _changed(self, obj: Object) -> None:
        self.enqueue(KEY)

    def stopService(self) -> Deferred[None] | None:
        """Stop renewing and give up this server's lease, so it leaves the endpoints now."""
        stopped = super().stopService()
        leaving: Deferred[None] = Deferred.fromCoroutine(self._leave())
        leaving.addErrback(lambda f: self._log.failure("removing this server's lease", f))
        return leaving if stopped is None else stopped.addCallback(lambda _: leaving)

    async def _leave(self) -> None:
        try:
            await self.datastore.delete(self.lease_key)
        except KeyNotFound:
            return
        await self.sync(KEY)

    async def _renew(self) -> None:
        value = f"{self.address}:{self.port}".encode()
        try:
            await self.datastore.create(self.lease_key, value, lease_ttl=LEASE_TTL)
        except KeyExists:
            current = await self.datastore.get(self.lease_key)
            if current is None:
                return await self._renew()
            await self.datastore.update(self.lease_key, value, current.mod_revision, LEASE_TTL)
        self.enqueue(KEY)

    async def live_servers(self) -> list[tuple[str, int]]:
        """The address and port of every server holding a lease, sorted."""
        page = await self.datastore.list(LEASE_PREFIX)
        found = []
        for kv in page.items:
            host, _, port = kv.value.decode().rpartition(":")
            found.append((host, int(port)))
        return sorted(found)

    async def sync(self, key: str) -> None:
        servers = await self.live_servers()
        await self._ensure_service()
        await self._write(endpoints.RESOURCE, self.endpoints_informer, self._endpoints(servers))
        await self._write(endpointslices.RESOURCE, self.slices_informer, self._slice(servers))

    async def _ensure_service(self) -> None:
        if self.service_informer.get(KEY) is not None:
            return
        service: Object = {
            "metadata": {
                "name": SERVICE,
                "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"},
            },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": self.cluster_ip,
                "clusterIPs": [self.cluster_ip],
                "sessionAffinity": "None",
                "ports": [
                    {"name": "https", "port": 443, "protocol": "TCP", "targetPort": self.port}
                ],
            },
        }
        try:
            await self.store.create(services.RESOURCE, "default", service)
        except StatusError as e:
            if e.code != 409:
                raise

    def _endpoints(self, servers: list[tuple[str, int]]) -> Object:
        ports = sorted({port for _, port in servers}) or [self.port]
        subsets = (
            [
                {
                    "addresses": [{"ip": host} for host, _ in servers],
                    "ports": [{"name": "https", "port": ports[0], "protocol": "TCP"}],
                }
            ]
            if servers
            else []
        )
        return {
            "metadata": {
                "name": SERVICE,
                "namespace": "default",
                "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
            },
            "subsets": subsets,
        }

    def _slice(self, servers: list[tuple[str, int]]) -> Object:
        port = servers[0][1] if servers else self.port
        address_type = _address_type(servers[0][0]) if servers else "IPv4"
        return {
            "metadata": {
                "name": SERVICE,
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": SERVICE},
            },
            "addressType": address_type,
            "endpoints": [
                {"addresses": [host], "conditions": {"ready": True}} for host, _ in servers
            ],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }

    async def _write(self, resource: ResourceType, cached: Informer, wanted: Object) -> None:
        """Create C{wanted}, or replace what differs in the stored one (if anything does)."""
        fields = [k for k in wanted if k != "metadata"]
        await write_fields(self.store, resource, "default", cached.get(KEY), wanted, fields)
