"""
The ``kubernetes`` service's endpoints: every live server, as kube-apiserver's
lease endpoint reconciler keeps them.

Each server holds a TTL key ``/registry/masterleases/<address>`` (15 s,
renewed every 10 s) and rewrites ``default/kubernetes`` Endpoints and its
EndpointSlice to the addresses that hold one.  A server that stops
gracefully removes its own lease, so agents stop using it at once; one that
dies drops out when its lease expires.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from k3stw.apiserver.registry import Registry
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import Object, ObjectStore
from k3stw.controllers.loop import ControllerLoop
from k3stw.datastore.interface import IDatastore, KeyExists, KeyNotFound

LEASE_PREFIX = "/registry/masterleases/"
LEASE_TTL = 15
RENEW_SECONDS = 10.0
SERVICE = "kubernetes"


def _address_type(address: str) -> str:
    return "IPv6" if ipaddress.ip_address(address).version == 6 else "IPv4"


class APIServerEndpoints(ControllerLoop):
    """
    Keeps this server's lease and the ``kubernetes`` Service, Endpoints and
    EndpointSlice in ``default``.

    :param address: this server's advertised address.
    :param port: the port agents reach it on.
    :param cluster_ip: the ``kubernetes`` service's ClusterIP (the first of the service CIDR).
    """

    label = "kubernetes endpoints reconciler"

    def __init__(
        self,
        datastore: IDatastore,
        store: ObjectStore,
        registry: Registry,
        clock: IReactorTime,
        address: str,
        port: int,
        cluster_ip: str,
    ) -> None:
        super().__init__(clock, RENEW_SECONDS)
        self.datastore = datastore
        self.store = store
        self.address = address
        self.port = port
        self.cluster_ip = cluster_ip
        self.service_resource = registry.require("", "v1", "services")
        self.endpoints = registry.require("", "v1", "endpoints")
        self.slices = registry.require("discovery.k8s.io", "v1", "endpointslices")

    @property
    def lease_key(self) -> str:
        return LEASE_PREFIX + self.address

    async def run_once(self) -> None:
        await self._renew()
        await self.reconcile()

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
        await self.reconcile()

    async def _renew(self) -> None:
        value = f"{self.address}:{self.port}".encode()
        try:
            await self.datastore.create(self.lease_key, value, lease_ttl=LEASE_TTL)
        except KeyExists:
            current = await self.datastore.get(self.lease_key)
            if current is None:
                return await self._renew()
            await self.datastore.update(self.lease_key, value, current.mod_revision, LEASE_TTL)

    async def live_servers(self) -> list[tuple[str, int]]:
        """The address and port of every server holding a lease, sorted."""
        page = await self.datastore.list(LEASE_PREFIX)
        found = []
        for kv in page.items:
            host, _, port = kv.value.decode().rpartition(":")
            found.append((host, int(port)))
        return sorted(found)

    async def reconcile(self) -> None:
        servers = await self.live_servers()
        await self._ensure_service()
        await self._write(self.endpoints, self._endpoints(servers))
        await self._write(self.slices, self._slice(servers))

    async def _ensure_service(self) -> None:
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
            await self.store.create(self.service_resource, "default", service)
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

    async def _write(self, resource: Any, wanted: Object) -> None:
        """Create C{wanted}, or replace what differs in the stored one."""
        fields = [k for k in wanted if k != "metadata"]

        def replace(current: Object) -> Object:
            for field in fields:
                current[field] = wanted[field]
            current["metadata"].setdefault("labels", {}).update(wanted["metadata"]["labels"])
            return current

        try:
            await self.store.guaranteed_update(resource, "default", SERVICE, replace)
        except StatusError as e:
            if e.code != 404:
                raise
            try:
                await self.store.create(resource, "default", wanted)
            except StatusError as again:
                if again.code != 409:
                    raise
