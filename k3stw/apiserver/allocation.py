"""
Service cluster IPs from ``--service-cidr`` and node ports from
``--service-node-port-range``, as kube-apiserver allocates them.

Each allocated value is a datastore key (``/registry/ranges/serviceips/<ip>``,
``/registry/ranges/servicenodeports/<port>``) created before the Service is
written, so two servers on one datastore can never hand out one value twice: a
create either makes the key or finds it taken.  A failed write gives back what
it took; a deleted Service gives back what it held; and a repair pass (after a
crash between the two writes) gives back what no Service holds and claims what
a Service holds without a key.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime

from k3stw.apiserver.status import StatusError, invalid
from k3stw.datastore.interface import IDatastore, KeyExists, KeyNotFound
from k3stw.logs import Logger
from k3stw.machinery.objects import Object, name_of, namespace_of

IPS_PREFIX = "/registry/ranges/serviceips/"
PORTS_PREFIX = "/registry/ranges/servicenodeports/"
#: k3s's default ``--service-node-port-range``.
DEFAULT_NODE_PORTS = range(30000, 32768)
#: Random picks before a full scan of what is taken.
_RANDOM_TRIES = 16
#: A key no Service holds is given back by the repair only after this long
#: (a create may be between its two writes).
REPAIR_GRACE = 60.0
NODE_PORT_TYPES = ("NodePort", "LoadBalancer")

_log = Logger(namespace="k3stw.apiserver.allocation")


class Allocator(Protocol):
    """What the object store asks of a kind whose objects hold allocated values."""

    async def reserve(self, new: Object, old: Object | None) -> Reservation:
        """Fill in and claim C{new}'s values (C{old}: the stored object of an update)."""

    async def release(self, obj: Object) -> None:
        """Give back what a deleted object held."""


@dataclass
class Reservation:
    """What one write claimed (given back if the write fails) and what it frees once done."""

    datastore: IDatastore
    claimed: list[str] = field(default_factory=list)
    freed: list[str] = field(default_factory=list)

    async def undo(self) -> None:
        await _delete_keys(self.datastore, self.claimed)

    async def commit(self) -> None:
        await _delete_keys(self.datastore, self.freed)


async def _delete_keys(datastore: IDatastore, keys: Iterable[str]) -> None:
    for key in keys:
        try:
            await datastore.delete(key)
        except KeyNotFound:
            pass
        except Exception as e:
            # The repair pass gives it back later.
            _log.warn("could not give back {key}: {error}", key=key, error=e)


def _owner(service: Object, now: float) -> bytes:
    return json.dumps(
        {"namespace": namespace_of(service), "name": name_of(service), "at": now}
    ).encode()


class ServiceAllocator:
    """
    The cluster IPs and node ports of Services.

    :param service_cidr: ``--service-cidr`` (its first network is used).
    :param node_ports: ``--service-node-port-range``.
    """

    def __init__(
        self,
        datastore: IDatastore,
        clock: IReactorTime,
        service_cidr: str,
        node_ports: range = DEFAULT_NODE_PORTS,
    ) -> None:
        self.datastore = datastore
        self.clock = clock
        self.network = ipaddress.ip_network(service_cidr.split(",")[0].strip(), strict=False)
        self.node_ports = node_ports
        size = self.network.num_addresses
        # kube-apiserver hands out from above a small lower band first, so that
        # addresses users pick (the DNS service's .10) stay free.
        self._dynamic_start = min(max(16, size // 16), 256)
        self._random = random.SystemRandom()
        self._port_range = f"{node_ports.start}-{node_ports.stop - 1}"

    # Allocator

    async def reserve(self, new: Object, old: Object | None) -> Reservation:
        reservation = Reservation(self.datastore)
        try:
            await self._reserve_ip(new, old, reservation)
            await self._reserve_ports(new, old, reservation)
        except BaseException:
            await reservation.undo()
            raise
        return reservation

    async def release(self, obj: Object) -> None:
        await _delete_keys(self.datastore, self._keys_of(obj))

    # Cluster IPs

    async def _reserve_ip(self, new: Object, old: Object | None, taken: Reservation) -> None:
        spec = new.setdefault("spec", {})
        kind = spec.get("type") or "ClusterIP"
        held = (old or {}).get("spec", {}).get("clusterIP") if old else None
        given = spec.get("clusterIP") or (spec.get("clusterIPs") or [None])[0]
        if kind == "ExternalName":
            if held and held != "None":
                taken.freed.append(IPS_PREFIX + held)
            return
        if held:
            if given and given != held:
                raise invalid(
                    "Service",
                    name_of(new),
                    [
                        (
                            "spec.clusterIPs[0]",
                            f'Invalid value: []string{{"{given}"}}: may not change once set',
                        )
                    ],
                )
            ip = held
        elif given == "None":
            ip = "None"
        elif given:
            ip = await self._claim_ip(new, given, taken)
        else:
            ip = await self._allocate_ip(new, taken)
        spec["clusterIP"] = ip
        spec["clusterIPs"] = [ip]
        # A headless service takes the cluster's family (single-stack: the service CIDR's).
        family = (
            "IPv6" if ":" in (ip if ip != "None" else str(self.network.network_address)) else "IPv4"
        )
        spec.setdefault("ipFamilies", [family])
        spec.setdefault("ipFamilyPolicy", "SingleStack")

    async def _claim_ip(self, service: Object, given: str, taken: Reservation) -> str:
        def refused(reason: str) -> StatusError:
            return invalid(
                "Service",
                name_of(service),
                [
                    (
                        "spec.clusterIPs",
                        f'Invalid value: []string{{"{given}"}}: failed to allocate IP {given}: '
                        + reason,
                    )
                ],
            )

        try:
            address = ipaddress.ip_address(given)
        except ValueError:
            raise refused("must be a valid IP address") from None
        if address not in self.network or address in (
            self.network.network_address,
            self.network.broadcast_address,
        ):
            raise refused(
                f"the provided IP ({given}) is not in the valid range. The range of valid IPs "
                f"is {self.network}"
            )
        if not await self._claim(IPS_PREFIX + given, service, taken):
            raise refused("provided IP is already allocated")
        return given

    async def _allocate_ip(self, service: Object, taken: Reservation) -> str:
        first = int(self.network.network_address)
        last = self.network.num_addresses - 2
        candidates = self._candidates(
            range(self._dynamic_start, last + 1), range(1, self._dynamic_start)
        )
        found = await self._allocate(
            IPS_PREFIX,
            (str(ipaddress.ip_address(first + offset)) for offset in candidates),
            service,
            taken,
        )
        if found is None:
            raise StatusError(
                500, "Internal error occurred: failed to allocate a serviceIP: range is full"
            )
        return found

    # Node ports

    async def _reserve_ports(self, new: Object, old: Object | None, taken: Reservation) -> None:
        spec = new.get("spec") or {}
        ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
        held = {
            (p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
            for p in ((old or {}).get("spec", {}).get("ports") or [])
            if isinstance(p, dict) and p.get("nodePort")
        }
        kept: set[int] = set()
        if spec.get("type") in NODE_PORT_TYPES:
            for index, port in enumerate(ports):
                previous = held.get((port.get("port"), port.get("protocol", "TCP")))
                wanted = port.get("nodePort") or previous
                if wanted and wanted == previous:
                    kept.add(wanted)
                elif wanted:
                    await self._claim_port(new, index, wanted, taken)
                else:
                    port["nodePort"] = await self._allocate_port(new, taken)
                    continue
                port["nodePort"] = wanted
        else:
            for index, port in enumerate(ports):
                if port.get("nodePort"):
                    raise invalid(
                        "Service",
                        name_of(new),
                        [
                            (
                                f"spec.ports[{index}].nodePort",
                                "Forbidden: may not be used when `type` is "
                                f"'{spec.get('type') or 'ClusterIP'}'",
                            )
                        ],
                    )
        taken.freed += [PORTS_PREFIX + str(p) for p in held.values() if p not in kept]

    async def _claim_port(
        self, service: Object, index: int, wanted: Any, taken: Reservation
    ) -> None:
        where = f"spec.ports[{index}].nodePort"
        if not isinstance(wanted, int) or wanted not in self.node_ports:
            raise invalid(
                "Service",
                name_of(service),
                [
                    (
                        where,
                        f"Invalid value: {wanted}: provided port is not in the valid range. "
                        f"The range of valid ports is {self._port_range}",
                    )
                ],
            )
        if not await self._claim(PORTS_PREFIX + str(wanted), service, taken):
            raise invalid(
                "Service",
                name_of(service),
                [(where, f"Invalid value: {wanted}: provided port is already allocated")],
            )

    async def _allocate_port(self, service: Object, taken: Reservation) -> int:
        found = await self._allocate(
            PORTS_PREFIX, map(str, self._candidates(self.node_ports, range(0))), service, taken
        )
        if found is None:
            raise StatusError(
                500, "Internal error occurred: failed to allocate a nodePort: range is full"
            )
        return int(found)

    # Keys

    def _candidates(self, preferred: range, fallback: range) -> Iterable[int]:
        """A few random picks of C{preferred}, then all of it, then C{fallback}, in order."""
        for _ in range(min(_RANDOM_TRIES, len(preferred))):
            yield self._random.choice(preferred)
        yield from preferred
        yield from fallback

    async def _allocate(
        self, prefix: str, values: Iterable[str], service: Object, taken: Reservation
    ) -> str | None:
        used: set[str] | None = None
        for tries, value in enumerate(values):
            if tries == _RANDOM_TRIES and used is None:
                # Crowded: learn what is taken once, instead of one create per value.
                listed = await self.datastore.list(prefix)
                used = {kv.key.removeprefix(prefix) for kv in listed.items}
            if used is not None and value in used:
                continue
            if await self._claim(prefix + value, service, taken, mine_only=True):
                return value
        return None

    async def _claim(
        self, key: str, service: Object, taken: Reservation, mine_only: bool = False
    ) -> bool:
        """
        Make C{key} this Service's.  A key the same Service already holds (the
        bootstrap's ``kubernetes`` service made again) counts as claimed, unless
        C{mine_only}.
        """
        try:
            await self.datastore.create(key, _owner(service, self.clock.seconds()))
        except KeyExists:
            if mine_only:
                return False
            current = await self.datastore.get(key)
            if current is None:
                return await self._claim(key, service, taken)
            owner = json.loads(current.value)
            return bool(
                owner.get("namespace") == namespace_of(service)
                and owner.get("name") == name_of(service)
            )
        taken.claimed.append(key)
        return True

    def _keys_of(self, service: Object) -> list[str]:
        spec = service.get("spec") or {}
        keys = [IPS_PREFIX + ip for ip in spec.get("clusterIPs") or [] if ip and ip != "None"]
        keys += [
            PORTS_PREFIX + str(p["nodePort"])
            for p in spec.get("ports") or []
            if isinstance(p, dict) and p.get("nodePort")
        ]
        return keys

    # Repair

    async def repair(self, services: Sequence[Object]) -> None:
        """
        Make the keys match the Services: claim each value a Service holds
        without its key, and give back each key no Service holds that is older
        than L{REPAIR_GRACE}.
        """
        held: dict[str, Object] = {}
        for service in services:
            for key in self._keys_of(service):
                held.setdefault(key, service)
        now = self.clock.seconds()
        for prefix in (IPS_PREFIX, PORTS_PREFIX):
            listed = await self.datastore.list(prefix)
            present = {kv.key: kv for kv in listed.items}
            for key, kv in present.items():
                owner = json.loads(kv.value)
                holder = held.get(key)
                if holder is not None:
                    continue
                if now - float(owner.get("at", 0)) > REPAIR_GRACE:
                    _log.info("giving back {key}: no Service holds it", key=key)
                    await _delete_keys(self.datastore, [key])
            for key, service in held.items():
                if key.startswith(prefix) and key not in present:
                    with contextlib.suppress(KeyExists):
                        await self.datastore.create(key, _owner(service, now))


def repair_job(
    allocator: ServiceAllocator, services: Callable[[], Awaitable[Sequence[Object]]]
) -> Callable[[], Awaitable[None]]:
    """One repair pass over the Services C{services} lists."""

    async def run() -> None:
        await allocator.repair(await services())

    return run
