"""
The cluster DNS, as every node serves it (in place of k3s's CoreDNS
Deployment): C{twisted.names}'s server on the node's addresses, port 53, UDP
and TCP, answering from the node's own informers what CoreDNS's ``hosts`` and
``kubernetes`` plugins would (L{k3stw.network.dnsrecords}), and forwarding
everything else to the nameservers of the node's resolv.conf through a cache
(CoreDNS's ``forward`` and ``cache``).  kube-proxy sends the ``kube-dns``
ClusterIP's traffic to these listeners (the server lists every Ready node in
the Service's EndpointSlice, L{k3stw.controllers.coredns}).

The informers read Services, EndpointSlices and Nodes as kube-proxy
(``system:node-proxier`` allows them) and Namespaces as k3s's controller
(``system:k3s-controller``).  NodeHosts comes from the Nodes themselves:
neither credential may read ConfigMaps, and the server writes the
``coredns`` ConfigMap's NodeHosts from the same Nodes by the same rule
(L{dnsrecords.node_host_entries}).

Answers the cluster gives are kept as encoded packets until the cluster
state changes (the cluster half of CoreDNS's ``cache``); forwarded answers go
through C{twisted.names}' own cache, whose TTLs count down.  UDP answers
larger than the asker's limit (512 bytes, or its EDNS0 payload size) are
truncated as CoreDNS truncates: whole records dropped, TC set.

Left out: CoreDNS's ``loop`` detection, ``health``/``ready``/``prometheus``
endpoints, ``loadbalance`` shuffling, ``coredns-custom`` overrides, DNSSEC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.names import cache, client, dns, server
from twisted.python.failure import Failure

from k3stw.kubeclient import KubeAPI
from k3stw.logs import Logger
from k3stw.machinery.informer import EventHandler, Informer, Retention
from k3stw.machinery.objects import Object, get_path, metadata
from k3stw.machinery.source import HTTPSource
from k3stw.network import dnsrecords
from k3stw.network.dnsrecords import ClusterState, Reply
from k3stw.network.listener import Listener
from k3stw.network.resolvconf import ResolvConf

DNS_PORT = 53
#: The largest UDP answer to an asker without EDNS0 (RFC 1035).
UDP_LIMIT = 512
#: The forwarder's tries (seconds each): an upstream that does not answer is
#: SERVFAIL within 5 s, as CoreDNS's ``forward`` gives up (twisted's default is a minute).
FORWARD_TIMEOUT = (2, 3)
#: How many cluster answers are kept as packets at most.
PACKET_CACHE_SIZE = 10000

SERVICES = "/api/v1/services"
ENDPOINT_SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
NODES = "/api/v1/nodes"
NAMESPACES = "/api/v1/namespaces"


def _meta(obj: Object, labels: bool = False) -> dict[str, Any]:
    meta = metadata(obj)
    kept = {k: meta[k] for k in ("name", "namespace", "resourceVersion") if k in meta}
    if labels and meta.get("labels"):
        kept["labels"] = {k: v for k, v in meta["labels"].items() if k == dnsrecords.SERVICE_NAME}
    return kept


def _trim_service(obj: Object) -> Object:
    spec = obj.get("spec") or {}
    kept = ("type", "clusterIP", "clusterIPs", "externalName", "ports")
    return {"metadata": _meta(obj), "spec": {k: spec[k] for k in kept if k in spec}}


def _trim_slice(obj: Object) -> Object:
    endpoints = [
        {
            "addresses": e.get("addresses") or [],
            "hostname": e.get("hostname"),
            "conditions": {"ready": (e.get("conditions") or {}).get("ready")},
        }
        for e in obj.get("endpoints") or ()
    ]
    return {
        "metadata": _meta(obj, labels=True),
        "endpoints": endpoints,
        "ports": obj.get("ports") or [],
    }


def _trim_node(obj: Object) -> Object:
    return {
        "metadata": _meta(obj),
        "status": {"addresses": get_path(obj, "status", "addresses") or []},
    }


def _trim_namespace(obj: Object) -> Object:
    return {"metadata": _meta(obj)}


@dataclass(frozen=True)
class ClusterDNSSettings:
    """
    What the node's cluster DNS serves, and where.

    :ivar listen: the addresses to listen on (the node's IPs), each on C{port}.
    :ivar upstream: the nameservers names outside the cluster go to.
    """

    listen: tuple[str, ...]
    cluster_dns: tuple[str, ...] = ("10.43.0.10",)
    domain: str = "cluster.local"
    upstream: tuple[tuple[str, int], ...] = ()
    port: int = DNS_PORT

    @classmethod
    def of(
        cls,
        node_ips: Sequence[str],
        cluster_dns: Sequence[str],
        domain: str,
        resolv: ResolvConf,
    ) -> ClusterDNSSettings:
        return cls(
            tuple(node_ips),
            tuple(cluster_dns),
            domain,
            tuple((server, DNS_PORT) for server in resolv.nameservers),
        )


class QuietUDPReactor:
    """
    The reactor as the forwarder sees it: the UDP port it opens for each
    question (a random source port) logs no "Starting protocol <... at 0x...>".
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> IListeningPort:
        protocol.noisy = False
        listening: IListeningPort = self._reactor.listenUDP(
            port, protocol, interface, maxPacketSize
        )
        return listening

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class ClusterDNSFactory(server.DNSServerFactory):
    """
    C{twisted.names}' server with the cluster answered first: questions the
    cluster owns are answered from L{ClusterState} (authoritative, without
    recursion available, as CoreDNS's kubernetes plugin answers), the rest go
    down the resolver chain (the cache, then the upstream nameservers).
    """

    _log = Logger()
    noisy = False

    def __init__(
        self, state: ClusterState, clock: IReactorTime, upstream: Sequence[tuple[str, int]]
    ) -> None:
        quiet = QuietUDPReactor(clock)
        clients = (
            [client.Resolver(servers=list(upstream), timeout=FORWARD_TIMEOUT, reactor=quiet)]
            if upstream
            else []
        )
        self.forwarded = cache.CacheResolver(reactor=clock)
        super().__init__(caches=[self.forwarded], clients=clients)
        self.state = state
        self.clock = clock
        #: Encoded cluster answers by the question's bytes (all but the ID).
        self.packets: dict[bytes, bytes] = {}

    def changed(self) -> None:
        """The cluster state changed: answers kept so far may be wrong."""
        self.packets.clear()

    def forget(self) -> None:
        """Drop every kept answer and the cache's expiry timers (the server stops)."""
        self.packets.clear()
        for expiry in self.forwarded.cancel.values():
            if expiry.active():
                expiry.cancel()
        self.forwarded.cancel.clear()
        self.forwarded.cache.clear()
        for connection in list(self.connections):
            connection.transport.loseConnection()

    def allowQuery(self, message: dns.Message, protocol: Any, address: Any) -> bool:
        # Anyone may ask; a message without exactly one question is a format error below.
        return True

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> Deferred[None]:
        if len(message.queries) != 1:
            self.sendReply(protocol, self._responseFromMessage(message, rCode=dns.EFORMAT), address)
            return succeed(None)
        query = message.queries[0]
        reply = None
        if query.cls == dns.IN:
            reply = dnsrecords.answer(self.state, query.name.name, query.type)
        if reply is None:
            done: Deferred[None] = super().handleQuery(message, protocol, address)
            return done
        if reply.chase is None:
            self._reply(message, reply, protocol, address, cacheable=True)
            return succeed(None)
        return Deferred.fromCoroutine(self._chase(message, reply, query.type, protocol, address))

    async def _chase(
        self, message: dns.Message, reply: Reply, qtype: int, protocol: Any, address: Any
    ) -> None:
        """An ExternalName's CNAME, then what the target's own servers say of it."""
        assert reply.chase is not None
        inside = dnsrecords.answer(self.state, reply.chase, qtype)
        if inside is not None:
            reply.answers += inside.answers
        else:
            try:
                answers, _, _ = await self.resolver.query(dns.Query(reply.chase, qtype))
                reply.answers += answers
            except Exception:
                # CoreDNS answers the CNAME alone when the target does not resolve.
                pass
        self._reply(message, reply, protocol, address, cacheable=False)

    def _reply(
        self, message: dns.Message, reply: Reply, protocol: Any, address: Any, cacheable: bool
    ) -> None:
        response = self._responseFromMessage(
            message,
            rCode=reply.rcode,
            answers=reply.answers,
            authority=reply.authority,
            additional=list(reply.additional),
        )
        response.auth = reply.authoritative
        response.recAv = False
        data = self.sendReply(protocol, response, address)
        request = getattr(protocol, "request", None)
        if cacheable and data is not None and request and reply.rcode != dns.ESERVER:
            if len(self.packets) >= PACKET_CACHE_SIZE:
                self.packets.clear()
            self.packets[request[2:]] = data[2:]

    def gotResolverError(
        self, failure: Failure, protocol: Any, message: dns.Message, address: Any
    ) -> None:
        if not self.canRecurse:
            # No upstream to ask: recursion is refused, as a server without one refuses it.
            rcode = dns.EREFUSED
        elif failure.check(dns.DomainError, dns.AuthoritativeDomainError):
            rcode = dns.ENAME
        else:
            self._log.info("forwarding failed: {error}", error=failure.getErrorMessage())
            rcode = dns.ESERVER
        self.sendReply(protocol, self._responseFromMessage(message, rCode=rcode), address)

    def _responseFromMessage(
        self,
        message: dns.Message,
        rCode: int = dns.OK,
        answers: list[dns.RRHeader] | None = None,
        authority: list[dns.RRHeader] | None = None,
        additional: list[dns.RRHeader] | None = None,
    ) -> dns.Message:
        """The server's response, with an OPT record when the question had one (EDNS0)."""
        response: dns.Message = super()._responseFromMessage(
            message, rCode, answers, authority, additional
        )
        size = _edns_size(message)
        if size is not None:
            response.additional = [*response.additional, _opt(size)]
        response.maxSize = 0
        return response

    def sendReply(self, protocol: Any, message: dns.Message, address: Any) -> bytes | None:
        """Send C{message}; over UDP, cut to the asker's limit as CoreDNS truncates."""
        if address is None:
            protocol.writeMessage(message)
            return None
        data = _fit(message, _edns_size(message) or UDP_LIMIT)
        protocol.transport.write(data, address)
        return data


def _edns_size(message: dns.Message) -> int | None:
    """The UDP payload size of the message's OPT record (at least 512), if it has one."""
    for record in message.additional:
        if record.type == dns.OPT:
            return max(UDP_LIMIT, record.cls)
    return None


def _opt(size: int) -> dns.RRHeader:
    """An EDNS0 OPT pseudo-record: its class is the payload size, its TTL the flags (none)."""
    return dns.RRHeader(b"", dns.OPT, size, 0, dns.UnknownRecord(b""))


def _fit(message: dns.Message, limit: int) -> bytes:
    """
    The encoded message, with trailing records dropped and TC set if it does
    not fit in C{limit} bytes (the OPT record stays).
    """
    data = message.toStr()
    if len(data) <= limit:
        return data
    message.trunc = 1
    message.additional = [r for r in message.additional if r.type == dns.OPT]
    message.authority = []
    while message.answers:
        data = message.toStr()
        if len(data) <= limit:
            return data
        message.answers = message.answers[:-1]
    return message.toStr()


class ClusterDNSDatagramProtocol(dns.DNSDatagramProtocol):
    """
    C{twisted.names}' UDP protocol, answering a question asked before
    (same bytes but the ID) from the packets the factory kept.
    """

    controller: ClusterDNSFactory
    noisy = False
    request: bytes | None = None
    _send: Callable[[bytes, Any], object] | None = None

    def startProtocol(self) -> None:
        super().startProtocol()
        # The port's socket: a kept answer goes out without the port's per-write
        # address checks (the address is the one the question came from).
        handle = getattr(self.transport, "getHandle", None)
        self._send = handle().sendto if handle is not None else None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        kept = self.controller.packets.get(data[2:])
        if kept is not None:
            if self._send is None:
                self.transport.write(data[:2] + kept, addr)
                return
            # A full socket buffer drops the answer, as a full network would: the asker
            # retries.  (try/except: this is the hot path, contextlib.suppress costs more.)
            try:  # noqa: SIM105
                self._send(data[:2] + kept, addr)
            except OSError:
                pass
            return
        self.request = data
        try:
            super().datagramReceived(data, addr)
        finally:
            self.request = None


class ClusterDNS(MultiService):
    """
    The node's cluster DNS: its informers, the cluster state they fill, the
    server, and its UDP and TCP listeners.

    :param proxy_client: the API as kube-proxy (Services, EndpointSlices, Nodes).
    :param controller_client: the API as k3s's controller (Namespaces).
    """

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        proxy_client: KubeAPI,
        controller_client: KubeAPI,
        settings: ClusterDNSSettings,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.settings = settings
        self.state = ClusterState(settings.domain, settings.cluster_dns)
        self.factory = ClusterDNSFactory(self.state, clock, settings.upstream)
        state = self.state
        self.informers = [
            self._follow(
                proxy_client, SERVICES, _trim_service, state.put_service, state.drop_service
            ),
            self._follow(
                proxy_client, ENDPOINT_SLICES, _trim_slice, state.put_slice, state.drop_slice
            ),
            self._follow(proxy_client, NODES, _trim_node, state.put_node, state.drop_node),
            self._follow(
                controller_client,
                NAMESPACES,
                _trim_namespace,
                state.put_namespace,
                state.drop_namespace,
            ),
        ]
        for address in settings.listen:
            self._listen(address)

    def _follow(
        self,
        client: KubeAPI,
        path: str,
        trim: Callable[[Object], Object],
        put: Callable[[Object], None],
        drop: Callable[[Object], None],
    ) -> Informer:
        informer = Informer(HTTPSource(client, path), self.clock, retention=Retention(trim=trim))

        def changed(obj: Object, apply: Callable[[Object], None]) -> None:
            apply(obj)
            self.state.serial = int(self.clock.seconds())
            self.factory.changed()

        informer.add_handler(
            EventHandler(
                on_add=lambda obj: changed(obj, put),
                on_update=lambda old, new: changed(new, put),
                on_delete=lambda obj: changed(obj, drop),
            )
        )
        informer.setServiceParent(self)
        return informer

    def _listen(self, address: str) -> None:
        port, reactor = self.settings.port, self.clock
        protocol = ClusterDNSDatagramProtocol(self.factory, reactor)
        Listener(
            lambda: reactor.listenUDP(port, protocol, interface=address),
            f"{address}:{port}/udp",
            "cluster DNS",
        ).setServiceParent(self)
        Listener(
            lambda: reactor.listenTCP(port, self.factory, interface=address),
            f"{address}:{port}/tcp",
            "cluster DNS",
        ).setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        synced = gatherResults([i.when_synced() for i in self.informers])
        synced.addCallback(self._synced)

    def stopService(self) -> Deferred[None] | None:
        stopped: Deferred[None] | None = super().stopService()
        self.factory.forget()
        return stopped

    def _synced(self, _: object) -> None:
        self.state.synced = True
        self.factory.changed()
        self._log.info(
            "cluster DNS serving {domain} on {addresses} port {port}",
            domain=self.settings.domain,
            addresses=", ".join(self.settings.listen),
            port=self.settings.port,
        )


def listen_addresses(node_ips: Iterable[str]) -> tuple[str, ...]:
    """The node's addresses the DNS listens on: each of its IPs, once."""
    return tuple(dict.fromkeys(node_ips))
