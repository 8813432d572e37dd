"""
Every place the tunnel (and the supervisor's C{/v1-k3s/connect}) reaches
into autobahn's internals, for speed and memory; the rest keeps to
autobahn's public API (C{setProtocolOptions}, C{sendMessage}, C{sendClose},
C{registerProducer}, C{unregisterProducer}, C{onConnect}, C{onOpen},
C{onMessage}, C{onClose}, C{WebSocketResource}).
C{tests/test_autobahn_hooks.py} checks each hook against the installed
autobahn and fails on a release that breaks one.

The hooks, each on an autobahn protocol:

- L{is_open}: the protocol's C{state} against C{STATE_OPEN}: a message sent
  while closing would raise, and nothing more should go out.
- L{masks_frames} and L{send_binary_messages}: the data path's fast path.
  The same frames as C{sendMessage} writes (one final binary frame per
  message, masked by a client with autobahn's C{create_xor_masker}), written
  to C{protocol.transport} in one write and counted in C{trafficStats} as
  C{sendMessage} counts them, without its per-message work: a 64 KiB read is
  two messages and, written together, TLS encrypts them at once.  While
  autobahn trickles queued writes out (C{send_queue}) or fragments
  (C{autoFragmentSize}), C{sendMessage} itself sends them, in order.
- L{forget_handshake}: drops what autobahn keeps of the opening handshake for
  the connection's life and nothing reads once it is open (C{http_*}
  attributes, C{transport_details.peer_cert} rendered as text): about 3 KB
  per idle tunnel.
- L{receive}: a C{dataReceived} straight to C{_dataReceived}, without the
  debug line autobahn formats (qualified name, peer) for every read.
- L{deliver_message}: an C{onMessageEnd} without autobahn's C{"message"}
  event, a Deferred per message that no one here listens to; it reads
  C{failedByMe}, C{message_data} and C{message_is_binary}.
- L{protocol_with_options}: the factory's options (C{CONFIG_ATTRS}) as class
  attributes of a protocol subclass: autobahn copies into each connection's
  C{__dict__} only the options its class lacks (the server protocol's
  C{__dict__} drops from 88 entries, 3.3 KB, to 59, 1.5 KB).
- L{release_http_channel}: C{WebSocketResource} takes the connection from
  Twisted Web's HTTP channel by setting the channel's C{transport} to
  C{None}, and the channel never hears of it; telling it frees the channel
  and the upgrade request (about 4 KB) at once instead of at the cycle
  collector's next full run.
"""

from __future__ import annotations

import random
import struct
from types import FunctionType
from typing import TYPE_CHECKING, Any, TypeVar

# autobahn's masker (native when it can); its module imports it without exporting it.
from autobahn.websocket.xormasker import create_xor_masker  # type: ignore[attr-defined]
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from k3stw.tunnel.session import Frames

if TYPE_CHECKING:
    from twisted.web.server import Request

__all__ = [
    "HANDSHAKE_LEFTOVERS",
    "deliver_message",
    "forget_handshake",
    "is_open",
    "masks_frames",
    "protocol_with_options",
    "receive",
    "release_http_channel",
    "send_binary_messages",
]

_P = TypeVar("_P")

#: What autobahn keeps of the opening handshake (some by one role only):
#: bytes, text or dicts, each emptied to the empty value of its type.
HANDSHAKE_LEFTOVERS = (
    "http_request_data",
    "http_response_data",
    "http_status_line",
    "http_headers",
    "http_request_params",
)

#: A final binary frame (FIN, opcode 2), RFC 6455 5.2.
_FIN_BINARY = 0x82
_MASKED = 0x80
_LENGTH_16 = struct.Struct("!BBH")
_LENGTH_64 = struct.Struct("!BBQ")


def is_open(protocol: Any) -> bool:
    """Whether C{protocol}'s websocket is open (not yet closing)."""
    return bool(protocol.state == protocol.STATE_OPEN)


def masks_frames(protocol: Any) -> bool:
    """Whether C{protocol} masks the frames it sends: RFC 6455 has a client mask every one."""
    return not protocol.factory.isServer and bool(protocol.maskClientFrames)


def _frame_header(length: int, masked: bool) -> bytes:
    """The websocket header of a final binary frame of C{length} bytes, before any mask key."""
    mask_bit = _MASKED if masked else 0
    if length <= 125:
        return bytes((_FIN_BINARY, mask_bit | length))
    if length <= 0xFFFF:
        return _LENGTH_16.pack(_FIN_BINARY, mask_bit | 126, length)
    return _LENGTH_64.pack(_FIN_BINARY, mask_bit | 127, length)


def send_binary_messages(protocol: Any, frames: Frames, masked: bool) -> None:
    """
    Send each C{(head, payload)} of C{frames} on the open C{protocol} as one
    binary message C{head + payload}, all in one write.

    :param masked: L{masks_frames} of C{protocol}.
    """
    if protocol.send_queue or protocol.autoFragmentSize:
        # autobahn is trickling queued frames out, or fragments: keep its order and frames.
        for head, payload in frames:
            protocol.sendMessage(head + payload, isBinary=True)
        return
    pieces: list[bytes | memoryview] = []
    octets = 0
    for head, payload in frames:
        length = len(head) + len(payload)
        octets += length
        pieces.append(_frame_header(length, masked))
        if masked:
            # As sendFrame draws its key: a test that seeds random gets the same bytes.
            key = struct.pack("!I", random.getrandbits(32))
            pieces.append(key)
            pieces.append(create_xor_masker(key, length).process(head + payload))
        else:
            pieces.append(head)
            pieces.append(payload)
    raw = b"".join(pieces)
    protocol.transport.write(raw)
    stats = protocol.trafficStats
    stats.outgoingWebSocketMessages += len(frames)
    stats.outgoingWebSocketFrames += len(frames)
    stats.outgoingOctetsAppLevel += octets
    stats.outgoingOctetsWebSocketLevel += octets
    stats.outgoingOctetsWireLevel += len(raw)


def forget_handshake(protocol: Any) -> None:
    """
    Drop what C{protocol} keeps of its opening handshake: the raw request
    and response, the parsed headers and the peer certificate rendered as
    text (the supervisor checked the certificate itself, from the TLS
    transport).  Call it once the websocket is open.
    """
    kept = protocol.__dict__
    for name in HANDSHAKE_LEFTOVERS:
        value = kept.get(name)
        if value is not None:
            setattr(protocol, name, type(value)())
    details = protocol.transport_details
    if details is not None:
        details.peer_cert = None


def receive(protocol: Any, data: bytes) -> None:
    """
    What autobahn's C{dataReceived} does with C{data}, without its debug
    line: a protocol's C{dataReceived}.
    """
    protocol._dataReceived(data)


def deliver_message(protocol: Any) -> None:
    """
    What autobahn's C{onMessageEnd} does, without its C{"message"} event: a
    protocol's C{onMessageEnd}.  The message just received goes to
    C{onMessage} (unless autobahn is failing the connection), and its parts
    are released.
    """
    if not protocol.failedByMe:
        protocol.onMessage(b"".join(protocol.message_data), protocol.message_is_binary)
    protocol.message_data = None


def _class_attribute(value: object) -> object:
    # A function stored on a class would become a method of each protocol.
    return staticmethod(value) if isinstance(value, FunctionType) else value


def protocol_with_options(base: type[_P], factory: object) -> type[_P]:
    """
    A subclass of C{base} (an autobahn protocol) holding C{factory}'s options
    as class attributes, so that no connection carries its own copy.
    """
    options: dict[str, object] = {
        name: _class_attribute(getattr(factory, name))
        for name in base.CONFIG_ATTRS  # type: ignore[attr-defined]
    }
    options["__module__"] = base.__module__
    options["__qualname__"] = base.__qualname__
    return type(base.__name__, (base,), options)


def release_http_channel(request: Request) -> None:
    """
    Let the HTTP channel of C{request} and the request go, once a
    C{WebSocketResource} has rendered it and taken the connection over.

    The channel keeps the request and the request keeps it; the pair
    (headers, body buffer and the channel's parser state) would wait for a
    full run of the cycle collector, which a busy server makes rarely.
    Telling the channel its connection is gone, as its own
    C{connectionLost} would, breaks the cycle: both are freed once the
    request is rendered.
    """
    channel = request.channel
    if channel is None or channel.transport is not None:
        # Not taken over (a refused upgrade answered over HTTP).
        return
    channel.connectionLost(Failure(ConnectionDone("the connection is a websocket now")))
