"""
``/v1-k3s/connect``: the websocket agents open their tunnel on.

As k3s's tunnel server, only a kubelet's client certificate (CN
``system:node:<name>``, O ``system:nodes``, from the client CA) may open a
session, and the session is kept under the name in that certificate, never
under anything the client says.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography import x509
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from k3stw.logs import Logger
from k3stw.machinery.identity import user_of_certificate
from k3stw.machinery.times import utc
from k3stw.pki.certs import is_signed_by

if TYPE_CHECKING:
    from autobahn.twisted.resource import WebSocketResource
    from autobahn.websocket.types import ConnectionRequest

    from k3stw.tunnel.protocol import TunnelServerFactory
    from k3stw.tunnel.registry import TunnelRegistry

__all__ = ["FAILED_AUTHENTICATION", "TunnelConnectResource", "node_check", "node_of_peer"]

#: remotedialer's answer to a client its authorizer refuses.
FAILED_AUTHENTICATION = "failed authentication"
#: gorilla/websocket's answer to a plain HTTP request on a websocket path.
NOT_WEBSOCKET = (
    "websocket: the client is not using the websocket protocol: "
    "'upgrade' token not found in 'Connection' header"
)


def node_of_peer(
    transport: object, client_ca: x509.Certificate, now: datetime.datetime
) -> str | None:
    """
    The node named by the client certificate on C{transport}, or C{None}.

    The TLS layer asked for the certificate without requiring it; this
    checks again that one was presented, that C{client_ca} signed it and that
    it is valid C{now}, before trusting its subject.
    """
    get_certificate = getattr(transport, "getPeerCertificate", None)
    peer = get_certificate() if get_certificate is not None else None
    if peer is None:
        return None
    certificate = peer.to_cryptography()
    if not is_signed_by(certificate, client_ca):
        return None
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        return None
    user = user_of_certificate(peer)
    return user.node_name if user is not None else None


def node_check(
    client_ca: x509.Certificate, clock: IReactorTime
) -> Callable[[ConnectionRequest, ITransport], str]:
    """A L{k3stw.tunnel.protocol.WebSocketCheck} admitting kubelet client certificates only."""

    def check(request: ConnectionRequest, transport: ITransport) -> str:
        # autobahn is loaded by now: only its onConnect calls this.
        from autobahn.websocket.types import ConnectionDeny

        node = node_of_peer(transport, client_ca, _now(clock))
        if not node:
            raise ConnectionDeny(401, FAILED_AUTHENTICATION)
        return node

    return check


def _now(clock: IReactorTime) -> datetime.datetime:
    return utc(clock.seconds())


class TunnelConnectResource(Resource):
    """
    The tunnel endpoint: refuses, in plain text as remotedialer does, a
    client without a node certificate (401) and a request that is not a
    websocket upgrade (400), then hands the connection to autobahn.

    autobahn and the tunnel protocol are loaded by the first upgrade a node
    certificate asks for: a server without agents never needs them.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self, registry: TunnelRegistry, client_ca: x509.Certificate, clock: IReactorTime
    ) -> None:
        super().__init__()
        self._registry = registry
        self._client_ca = client_ca
        self._clock = clock
        self._websocket: tuple[TunnelServerFactory, WebSocketResource] | None = None

    @property
    def factory(self) -> TunnelServerFactory:
        """The websocket factory of the tunnels (autobahn loaded on first use)."""
        return self._websocket_resource()[0]

    def _websocket_resource(self) -> tuple[TunnelServerFactory, WebSocketResource]:
        if self._websocket is None:
            # autobahn costs about 5 MiB and 60 ms: load it once a node opens a tunnel.
            from autobahn.twisted.resource import WebSocketResource

            from k3stw.tunnel.protocol import TunnelServerFactory

            # The check runs again in onConnect, on the transport autobahn takes over.
            factory = TunnelServerFactory(
                check=node_check(self._client_ca, self._clock),
                opened=self._registry.register,
                clock=self._clock,
            )
            self._websocket = (factory, WebSocketResource(factory))
        return self._websocket

    def render(self, request: Request) -> bytes | int:
        if not node_of_peer(request.transport, self._client_ca, _now(self._clock)):
            self._log.info(
                "tunnel: refused {client}: no node client certificate",
                client=str(request.getClientAddress()),
            )
            return _plain(request, 401, FAILED_AUTHENTICATION)
        connection = (request.getHeader(b"connection") or b"").lower()
        if b"upgrade" not in [token.strip() for token in connection.split(b",")]:
            return _plain(request, 400, NOT_WEBSOCKET)
        rendered: bytes | int = self._websocket_resource()[1].render(request)
        if rendered is NOT_DONE_YET:
            # autobahn is loaded by now.
            from k3stw.tunnel.autobahn_hooks import release_http_channel

            release_http_channel(request)
        return rendered


def _plain(request: Request, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return message.encode("utf-8")
