"""
The server's tunnel sessions by node name, and dialling a node through them.

As remotedialer's server, a node may hold several sessions at once (an agent
reconnecting before its old websocket is noticed as gone); a dial uses the
newest that is still open, and a session leaves the registry when it ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from zope.interface import Interface, implementer

from k3stw.logs import Logger

if TYPE_CHECKING:
    from k3stw.tunnel.session import Session

__all__ = ["ITunnelDialer", "NoTunnelSession", "TunnelRegistry"]


class NoTunnelSession(Exception):
    """No open tunnel session for a node (remotedialer's wording)."""

    def __init__(self, node: str) -> None:
        super().__init__(f"failed to find Session for client {node}")
        self.node = node


class ITunnelDialer(Interface):
    """Reaches an address at a node's end of its tunnel."""

    def has_session(node: str) -> bool:
        """Whether C{node} has an open tunnel session."""

    def dial(node: str, address: str) -> IStreamClientEndpoint:
        """
        An endpoint for C{address} (C{host:port}) at C{node}'s end; its
        C{connect} fails with L{NoTunnelSession} when C{node} has no open
        session at that moment.
        """


@implementer(ITunnelDialer)
class TunnelRegistry:
    """
    Open tunnel sessions by node name.

    L{register} has the shape of L{k3stw.tunnel.protocol.SessionOpened}, so
    it can be given to a L{TunnelServerFactory} as its C{opened}.

    :param clock: time for the transports of dialled streams.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._sessions: dict[str, list[Session]] = {}
        self._waiting: dict[str, list[Deferred[Session]]] = {}

    def register(self, node: str, session: Session) -> None:
        """Keep C{session} for C{node} until it ends."""
        self._log.info("Handling backend connection request [{node}]", node=node)
        self._sessions.setdefault(node, []).append(session)
        session.ended.addCallback(self._ended, node, session)
        for waiting in self._waiting.pop(node, []):
            waiting.callback(session)

    def _ended(self, reason: str, node: str, session: Session) -> None:
        sessions = self._sessions.get(node, [])
        if session in sessions:
            sessions.remove(session)
        if not sessions:
            self._sessions.pop(node, None)
        # remotedialer's words when a session's serve loop returns (its code is always 400).
        self._log.info("error in remotedialer server [400]: {reason}", reason=reason, node=node)

    def session(self, node: str) -> Session | None:
        """The newest open session of C{node}, if any."""
        sessions = self._sessions.get(node)
        return sessions[-1] if sessions else None

    def has_session(self, node: str) -> bool:
        return node in self._sessions

    def nodes(self) -> list[str]:
        """The nodes with an open session, sorted."""
        return sorted(self._sessions)

    def when_registered(self, node: str) -> Deferred[Session]:
        """Fires with C{node}'s newest session: now if it has one, else when one registers."""
        current = self.session(node)
        if current is not None:
            return succeed(current)
        waiting: Deferred[Session] = Deferred(lambda d: self._waiting[node].remove(d))
        self._waiting.setdefault(node, []).append(waiting)
        return waiting

    def dial(self, node: str, address: str) -> IStreamClientEndpoint:
        return _NodeEndpoint(self, node, address)


@implementer(IStreamClientEndpoint)
class _NodeEndpoint:
    """Dials through whichever session the node has when C{connect} is called."""

    def __init__(self, registry: TunnelRegistry, node: str, address: str) -> None:
        self._registry = registry
        self._node = node
        self._address = address

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        session = self._registry.session(self._node)
        if session is None:
            return fail(NoTunnelSession(self._node))
        # A session exists, so autobahn is loaded already.
        from k3stw.tunnel.protocol import TunnelEndpoint

        endpoint = TunnelEndpoint(session, self._address, self._registry._clock)
        return endpoint.connect(protocolFactory)
