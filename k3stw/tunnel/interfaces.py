"""
The tunnel's boundaries: what a L{k3stw.tunnel.session.Session} needs from
the websocket under it, from whatever opens local connections, and from the
local end of each stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from k3stw.tunnel.session import Stream


class ITunnelTransport(Interface):
    """The websocket carrying one session, seen from the session."""

    def send_frame(frame: bytes) -> None:
        """Send C{frame} as one binary websocket message."""

    def close(reason: str) -> None:
        """Close the websocket (the session is over); idempotent."""


class ILocalDialer(Interface):
    """Opens the local connections that a peer's Connect asks for."""

    def dial(proto: str, address: str, stream: Stream) -> Deferred[None]:
        """
        Connect to C{address} (C{host:port}) over C{proto} and attach the new
        connection to C{stream} (L{Stream.attach}, L{Stream.register_producer}).

        :return: fires when connected; fails with the reason the dial failed.
            Cancelling it abandons the dial.
        """


class IStreamReceiver(Interface):
    """The local end of one tunnelled stream: what the peer's bytes are delivered to."""

    def stream_data(data: bytes) -> None:
        """Bytes from the peer, in order."""

    def stream_ended(reason: str | None) -> None:
        """
        The stream is over and nothing more will be delivered: C{None} for a
        clean close, else why (the peer's error text, or a local one).
        """
