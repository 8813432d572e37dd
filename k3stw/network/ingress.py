"""
The node's Ingress controller, in place of k3s's bundled Traefik: it serves
the Ingresses of IngressClasses naming ``traefik.io/ingress-controller``
(k3s's ``traefik`` class, the default) and those naming no class, on ports 80
and 443 of each node address, through L{k3stw.network.ingressproxy}.

Its informers (as ``system:k3s-controller``, which the server's bootstrap
policy lets read them) follow Ingresses, IngressClasses, Services,
EndpointSlices and ``kubernetes.io/tls`` Secrets.  A change marks the route
table or the endpoints stale, and the next request rebuilds what it needs
from the caches: no reload, and connections in flight keep their backend.

TLS: a client's SNI name picks the certificate of the Ingress ``tls`` entry
listing that host (or its ``*.`` wildcard); one context per Secret, kept
until the Secret changes.  Other names get a self-signed certificate made at
start, as Traefik's default one.

Its Prometheus metrics are a page of the kubelet's API, ``/metrics/ingress``
(``kubectl get --raw /api/v1/nodes/<node>/proxy/metrics/ingress``), never a
host port of their own: Traefik's metrics port, 9100, is inside its pod in
k3s, and on the host it is node-exporter's.  The server writes the
Ingresses' status (L{k3stw.controllers.ingress}).
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Callable, Iterable
from typing import Any

from OpenSSL import SSL, crypto
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.application.service import MultiService
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from zope.interface import implementer

from k3stw.kubeclient import KubeAPI
from k3stw.logs import Logger
from k3stw.machinery.cache import LABEL, by_label
from k3stw.machinery.informer import Informer, Retention, each_change
from k3stw.machinery.objects import Object, metadata
from k3stw.machinery.source import HTTPSource
from k3stw.network.ingressproxy import IngressMetrics, IngressProxy
from k3stw.network.ingressroutes import (
    SERVICE_NAME,
    TLS_TYPE,
    Address,
    Backend,
    RoundRobin,
    Route,
    RouteTable,
    endpoints_of,
    is_ours,
    our_classes,
)
from k3stw.network.listener import Listener
from k3stw.pki.certs import new_ca

__all__ = ["IngressController"]

#: ``--disable`` names it so, as k3s's bundled controller.
DISABLE_NAME = "traefik"
HTTP_PORT, HTTPS_PORT = 80, 443
INGRESSES = "/apis/networking.k8s.io/v1/ingresses"
INGRESS_CLASSES = "/apis/networking.k8s.io/v1/ingressclasses"
SERVICES = "/api/v1/services"
ENDPOINT_SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
SECRETS = "/api/v1/secrets"
DEFAULT_CERTIFICATE = "TRAEFIK DEFAULT CERT"


def _trim(obj: Object) -> Object:
    """No managed fields: the routes never read them."""
    meta = {k: v for k, v in metadata(obj).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def _context(certificate_pem: bytes, key_pem: bytes) -> SSL.Context:
    """A serving context for a PEM chain and key."""
    chain = [
        crypto.load_certificate(crypto.FILETYPE_PEM, b"-----BEGIN CERTIFICATE-----" + part)
        for part in certificate_pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
    ]
    if not chain:
        raise ValueError("no certificate in tls.crt")
    options = ssl.CertificateOptions(
        privateKey=crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem),
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    return options.getContext()


@implementer(IOpenSSLContextFactory)
class ServerNameContexts:
    """
    A TLS server's contexts by SNI name: C{choose} names the context for a
    client's server name, the default one serving when it has none.
    """

    def __init__(self, default: SSL.Context, choose: Callable[[str], SSL.Context | None]) -> None:
        self.default = default
        self.choose = choose
        default.set_tlsext_servername_callback(self._pick)

    def getContext(self) -> SSL.Context:
        return self.default

    def _pick(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        if name:
            chosen = self.choose(name.decode("ascii", "replace"))
            if chosen is not None:
                connection.set_context(chosen)


class IngressController(MultiService):
    """
    The node's Ingress controller (see the module docstring).

    :param client: the API as ``system:k3s-controller``.
    :param addresses: where to listen (the node's IPs).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        client: KubeAPI,
        addresses: Iterable[str],
        ports: tuple[int, int] = (HTTP_PORT, HTTPS_PORT),
    ) -> None:
        super().__init__()
        self.reactor = reactor
        keep = Retention(trim=_trim)
        tls_only = {"fieldSelector": f"type={TLS_TYPE}"}
        self.ingress_informer = self._informer(client, INGRESSES, keep, self._routes_changed)
        self.class_informer = self._informer(client, INGRESS_CLASSES, keep, self._routes_changed)
        self.service_informer = self._informer(client, SERVICES, keep, self._endpoints_changed)
        self.slice_informer = self._informer(client, ENDPOINT_SLICES, keep, self._endpoints_changed)
        self.slice_informer.add_index(LABEL, by_label)
        self.secret_informer = self._informer(client, SECRETS, keep, self._secret_changed, tls_only)
        self._table: RouteTable | None = None
        self._endpoints: dict[str, list[Address] | None] = {}
        self._contexts: dict[str, tuple[str, SSL.Context | None]] = {}
        self.balance = RoundRobin()
        self.metrics = IngressMetrics()
        #: The metrics as Prometheus text, for the kubelet's API to serve.
        self.metrics_page = MetricsPage(self.metrics)
        self._tls: ServerNameContexts | None = None
        self._listen(addresses, ports)

    def _informer(
        self,
        client: KubeAPI,
        path: str,
        keep: Retention,
        changed: Callable[[Object], object],
        params: dict[str, str] | None = None,
    ) -> Informer:
        informer = Informer(HTTPSource(client, path, params), self.reactor, retention=keep)
        informer.add_handler(each_change(changed))
        informer.setServiceParent(self)
        return informer

    def _listen(self, addresses: Iterable[str], ports: tuple[int, int]) -> None:
        http, https = ports
        reactor = self.reactor
        plain = IngressProxy(reactor, self.lookup, self.balance.pick, self.metrics)
        # One pool of backend connections and one access log for both ports.
        secure = IngressProxy(
            reactor,
            self.lookup,
            self.balance.pick,
            self.metrics,
            plain.pool,
            "https",
            plain.access,
        )
        self.proxies = (plain, secure)
        for ip in dict.fromkeys(addresses):
            for port, listen in (
                (http, lambda ip=ip: reactor.listenTCP(http, plain, interface=ip)),
                (https, lambda ip=ip: reactor.listenSSL(https, secure, self.tls(), interface=ip)),
            ):
                where = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
                Listener(listen, where, "the Ingress controller").setServiceParent(self)

    def tls(self) -> ServerNameContexts:
        """The TLS port's contexts, made when first listened on."""
        if self._tls is None:
            now = datetime.datetime.now(datetime.UTC)
            pair = new_ca(DEFAULT_CERTIFICATE, now)
            default = _context(pair.certificate_pem, pair.key_pem)
            self._tls = ServerNameContexts(default, self.context_for)
        return self._tls

    # What the caches say

    def _routes_changed(self, obj: Object) -> None:
        self._table = None

    def _endpoints_changed(self, obj: Object) -> None:
        self._endpoints.clear()

    def _secret_changed(self, obj: Object) -> None:
        self._contexts.pop(f"{metadata(obj).get('namespace')}/{metadata(obj).get('name')}", None)

    @property
    def table(self) -> RouteTable:
        """The route table of the Ingresses now (rebuilt after a change)."""
        if self._table is None:
            classes = our_classes(self.class_informer.cache)
            self._table = RouteTable.of(
                i for i in self.ingress_informer.cache if is_ours(i, classes)
            )
        return self._table

    def endpoints(self, backend: Backend) -> list[Address] | None:
        key = backend.key
        try:
            # Asked on every request: one lookup when known.
            return self._endpoints[key]
        except KeyError:
            found = self._endpoints[key] = endpoints_of(
                backend, self.service_informer.get, self._slices_of
            )
            return found

    def _slices_of(self, namespace: str, service: str) -> list[Object]:
        return [
            s
            for s in self.slice_informer.cache.by_index(LABEL, f"{SERVICE_NAME}={service}")
            if metadata(s).get("namespace") == namespace
        ]

    def lookup(self, host: str, uri: str) -> tuple[Route, list[Address] | None] | None:
        """A request's route and the ready endpoints of its backend."""
        route = self.table.match(host, uri)
        if route is None:
            return None
        return route, self.endpoints(route.backend)

    def context_for(self, server_name: str) -> SSL.Context | None:
        """The TLS context for an SNI name (None: the default certificate)."""
        key = self.table.certificate(server_name)
        secret = self.secret_informer.get(key) if key else None
        if key is None or secret is None:
            return None
        version = str(metadata(secret).get("resourceVersion") or "")
        held = self._contexts.get(key)
        if held is not None and held[0] == version:
            return held[1]
        data = secret.get("data") or {}
        try:
            context: SSL.Context | None = _context(
                base64.b64decode(data.get("tls.crt") or ""),
                base64.b64decode(data.get("tls.key") or ""),
            )
        except (ValueError, crypto.Error, SSL.Error) as e:
            self._log.warn("TLS Secret {secret} is unusable: {error}", secret=key, error=e)
            context = None
        self._contexts[key] = (version, context)
        return context

    def startService(self) -> None:
        super().startService()
        self._log.info("Ingress controller started")

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = super().stopService()
        for proxy in self.proxies:
            proxy.stop()
        return stopped


class MetricsPage(Resource):
    """The Ingress metrics as Prometheus text."""

    isLeaf = True

    def __init__(self, metrics: IngressMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.metrics.registry)
