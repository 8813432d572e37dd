"""
remotedialer's message framing, sans-IO.

One tunnel message is one binary websocket message::

    varint  message_id      signed zig-zag (Go's binary.PutVarint)
    varint  conn_id         0 for session-level messages
    varint  message_type    1..8, see L{MessageType}
    varint  deadline_ms     only on Data and Connect; legacy, written as 15000, ignored
    bytes   payload         the rest of the message

L{encode} turns a message object into those bytes and L{decode} turns bytes
back into a message object, raising L{ProtocolError} for anything malformed.
Decoding does work proportional to the frame it was given and never
allocates from a length the peer claims: the websocket layer bounds the frame.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "CLIENT_PAYLOAD_LIMIT",
    "CONNECT_PAYLOAD_LIMIT",
    "EOF",
    "ERROR_TEXT_LIMIT",
    "LEGACY_DEADLINE_MS",
    "AddClient",
    "Connect",
    "Data",
    "Error",
    "Message",
    "MessageType",
    "Pause",
    "ProtocolError",
    "RemoveClient",
    "Resume",
    "SyncConnections",
    "Unknown",
    "decode",
    "decode_data",
    "encode",
    "encode_data_header",
]

#: The value remotedialer writes in the deadline field it no longer reads.
LEGACY_DEADLINE_MS = 15_000
#: remotedialer reads at most this many bytes of a Connect payload.
CONNECT_PAYLOAD_LIMIT = 266
#: remotedialer reads at most this many bytes of an Error text.
ERROR_TEXT_LIMIT = 100
#: remotedialer reads at most this many bytes of an AddClient/RemoveClient payload.
CLIENT_PAYLOAD_LIMIT = 100
#: The Error text that means a clean close (Go's C{io.EOF}).
EOF = "EOF"

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
#: Go's binary.MaxVarintLen64.
_MAX_VARINT_LEN = 10
_UINT64 = struct.Struct("<Q")
#: Data's type and deadline varints, as every Data message carries them.
_DATA_KIND_AND_DEADLINE = b"\x02\xb0\xea\x01"
#: The front of a well-formed Data message: message id, connection id (captured),
#: type 1 and a deadline, each varint at most 10 bytes.  Anything it does not
#: match (another type, a non-minimal type varint, a truncated frame) is left
#: to L{decode}.
_DATA_FRONT = re.compile(
    rb"([\x80-\xff]{0,9}[\x00-\x7f])([\x80-\xff]{0,9}[\x00-\x7f])\x02"
    rb"([\x80-\xff]{0,9}[\x00-\x7f])"
)


class ProtocolError(Exception):
    """A frame that is not a well-formed remotedialer message."""


class MessageType(IntEnum):
    """remotedialer's message types (C{message.go}: C{Data messageType = iota + 1} ...)."""

    DATA = 1
    CONNECT = 2
    ERROR = 3
    ADD_CLIENT = 4
    REMOVE_CLIENT = 5
    PAUSE = 6
    RESUME = 7
    SYNC_CONNECTIONS = 8


@dataclass(frozen=True, slots=True)
class Data:
    """Bytes for one connection."""

    message_id: int
    conn_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Connect:
    """Open connection C{conn_id} to C{address} (C{host:port}) over C{proto} (C{tcp})."""

    message_id: int
    conn_id: int
    proto: str
    address: str


@dataclass(frozen=True, slots=True)
class Error:
    """Connection C{conn_id} is over: cleanly when C{text} is C{"EOF"}, else with that error."""

    message_id: int
    conn_id: int
    text: str

    @property
    def is_eof(self) -> bool:
        """Whether this is a clean close."""
        return self.text == EOF


@dataclass(frozen=True, slots=True)
class AddClient:
    """Peering: C{client} (C{"<clientKey>/<sessionKey>"}) is reachable through the sender."""

    message_id: int
    client: str


@dataclass(frozen=True, slots=True)
class RemoveClient:
    """Peering: C{client} is no longer reachable through the sender."""

    message_id: int
    client: str


@dataclass(frozen=True, slots=True)
class Pause:
    """Stop sending Data on C{conn_id}: the sender's receive buffer is full."""

    message_id: int
    conn_id: int


@dataclass(frozen=True, slots=True)
class Resume:
    """Sending Data on C{conn_id} may continue."""

    message_id: int
    conn_id: int


@dataclass(frozen=True, slots=True)
class SyncConnections:
    """The sender's open connection ids; the receiver may drop any other."""

    message_id: int
    conn_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message type this code does not know; remotedialer ignores those too."""

    message_id: int
    conn_id: int
    message_type: int
    payload: bytes


Message = Data | Connect | Error | AddClient | RemoveClient | Pause | Resume | SyncConnections


# -- varints ---------------------------------------------------------------------------


def _put_varint(out: bytearray, value: int) -> None:
    """Append C{value} as Go's C{binary.PutVarint} does (zig-zag, then LEB128)."""
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{value} does not fit in a signed 64-bit varint")
    unsigned = (value << 1) if value >= 0 else ((~value) << 1) | 1
    while unsigned >= 0x80:
        out.append((unsigned & 0x7F) | 0x80)
        unsigned >>= 7
    out.append(unsigned)


def _read_varint(frame: bytes, offset: int, field: str) -> tuple[int, int]:
    """
    Read one signed varint at C{offset}, as Go's C{binary.ReadVarint} does.

    :return: the value and the offset after it.
    :raises ProtocolError: truncated, or longer than 64 bits.
    """
    unsigned = 0
    shift = 0
    for index in range(_MAX_VARINT_LEN):
        position = offset + index
        if position >= len(frame):
            raise ProtocolError(f"frame truncated in the {field} varint")
        byte = frame[position]
        if index == _MAX_VARINT_LEN - 1 and byte > 1:
            raise ProtocolError(f"the {field} varint overflows 64 bits")
        unsigned |= (byte & 0x7F) << shift
        if byte < 0x80:
            value = unsigned >> 1
            if unsigned & 1:
                value = ~value
            return value, position + 1
        shift += 7
    raise ProtocolError(f"the {field} varint overflows 64 bits")


# -- encode / decode -------------------------------------------------------------------


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    _put_varint(out, value)
    return bytes(out)


def encode_data_header(message_id: int, conn_id: int) -> bytes:
    """
    What goes in front of a Data payload: the same bytes as
    C{encode(Data(message_id, conn_id, payload))} starts with, without
    building the message (the data path sends one per 32 KiB).
    """
    return _varint_bytes(message_id) + _varint_bytes(conn_id) + _DATA_KIND_AND_DEADLINE


def _check_text(text: str, limit: int, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > limit:
        raise ValueError(f"{what} is {len(raw)} bytes; remotedialer reads at most {limit}")
    return raw


def encode(message: Message) -> bytes:
    """
    The websocket message carrying C{message}.

    An Error text longer than remotedialer reads (100 bytes) is cut, at a
    character boundary, to what the peer would have read anyway.

    :raises ValueError: an id outside int64, or a payload remotedialer would cut.
    """
    out = bytearray()
    payload: bytes
    match message:
        case Data(message_id, conn_id, data):
            kind, payload = MessageType.DATA, data
        case Connect(message_id, conn_id, proto, address):
            if "/" in proto:
                raise ValueError(f"protocol {proto!r} contains '/'")
            payload = _check_text(f"{proto}/{address}", CONNECT_PAYLOAD_LIMIT, "Connect payload")
            kind = MessageType.CONNECT
        case Error(message_id, conn_id, text):
            kind = MessageType.ERROR
            payload = (
                text.encode("utf-8")[:ERROR_TEXT_LIMIT].decode("utf-8", "ignore").encode("utf-8")
            )
        case AddClient(message_id, client):
            kind, conn_id = MessageType.ADD_CLIENT, 0
            payload = _check_text(client, CLIENT_PAYLOAD_LIMIT, "AddClient payload")
        case RemoveClient(message_id, client):
            kind, conn_id = MessageType.REMOVE_CLIENT, 0
            payload = _check_text(client, CLIENT_PAYLOAD_LIMIT, "RemoveClient payload")
        case Pause(message_id, conn_id):
            kind, payload = MessageType.PAUSE, b""
        case Resume(message_id, conn_id):
            kind, payload = MessageType.RESUME, b""
        case SyncConnections(message_id, conn_ids):
            kind, conn_id = MessageType.SYNC_CONNECTIONS, 0
            for one in conn_ids:
                if not _INT64_MIN <= one <= _INT64_MAX:
                    raise ValueError(f"connection id {one} does not fit in int64")
            payload = b"".join(_UINT64.pack(one & 0xFFFF_FFFF_FFFF_FFFF) for one in conn_ids)
        case _:  # pragma: no cover - the union is exhaustive
            raise TypeError(f"not a tunnel message: {message!r}")
    _put_varint(out, message_id)
    _put_varint(out, conn_id)
    _put_varint(out, kind)
    if kind in (MessageType.DATA, MessageType.CONNECT):
        _put_varint(out, LEGACY_DEADLINE_MS)
    return bytes(out) + payload


def _text(payload: bytes, limit: int, what: str) -> str:
    if len(payload) > limit:
        raise ProtocolError(f"{what} is {len(payload)} bytes, more than the {limit} allowed")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8") from None


def decode_data(frame: bytes) -> tuple[int, bytes] | None:
    """
    The data path's decoder: C{(conn_id, payload)} when C{frame} is a
    well-formed Data message (what L{decode} would return as a L{Data}),
    else C{None}, for L{decode} to handle (or reject).
    """
    front = _DATA_FRONT.match(frame)
    if front is None:
        return None
    end = front.end()
    # Ten bytes is the most a varint has; a tenth byte above 1 overflows 64
    # bits, and decode raises that error.  Four varints in 12 bytes or less
    # have no tenth byte.
    if end > 12:
        for varint in front.groups():
            if len(varint) == _MAX_VARINT_LEN and varint[-1] > 1:
                return None
    conn = front.group(2)
    if len(conn) == 1:
        unsigned = conn[0]
    else:
        unsigned = 0
        for shift, byte in enumerate(conn):
            unsigned |= (byte & 0x7F) << (7 * shift)
    conn_id = ~(unsigned >> 1) if unsigned & 1 else unsigned >> 1
    return conn_id, frame[end:]


def decode(frame: bytes) -> Message | Unknown:
    """
    The message carried by one websocket message.

    :raises ProtocolError: the frame is truncated, a varint overflows, or a
        payload does not fit its type.
    """
    message_id, offset = _read_varint(frame, 0, "message id")
    conn_id, offset = _read_varint(frame, offset, "connection id")
    kind, offset = _read_varint(frame, offset, "message type")
    if kind in (MessageType.DATA, MessageType.CONNECT):
        _deadline, offset = _read_varint(frame, offset, "deadline")
    payload = frame[offset:]
    if kind == MessageType.DATA:
        return Data(message_id, conn_id, bytes(payload))
    if kind == MessageType.CONNECT:
        text = _text(payload, CONNECT_PAYLOAD_LIMIT, "Connect payload")
        proto, slash, address = text.partition("/")
        if not slash:
            raise ProtocolError(f"Connect payload {text!r} is not <proto>/<address>")
        return Connect(message_id, conn_id, proto, address)
    if kind == MessageType.ERROR:
        # Go writes any error text, and reads only the first 100 bytes of it.
        cut = bytes(payload[:ERROR_TEXT_LIMIT])
        return Error(message_id, conn_id, cut.decode("utf-8", "replace"))
    if kind == MessageType.ADD_CLIENT:
        return AddClient(message_id, _text(payload, CLIENT_PAYLOAD_LIMIT, "AddClient payload"))
    if kind == MessageType.REMOVE_CLIENT:
        return RemoveClient(
            message_id, _text(payload, CLIENT_PAYLOAD_LIMIT, "RemoveClient payload")
        )
    if kind in (MessageType.PAUSE, MessageType.RESUME):
        if payload:
            raise ProtocolError(f"{MessageType(kind).name} carries {len(payload)} payload bytes")
        return (Pause if kind == MessageType.PAUSE else Resume)(message_id, conn_id)
    if kind == MessageType.SYNC_CONNECTIONS:
        if len(payload) % 8:
            raise ProtocolError(
                f"SyncConnections payload is {len(payload)} bytes, not a multiple of 8"
            )
        ids = tuple(
            one - (1 << 64) if one > _INT64_MAX else one for (one,) in _UINT64.iter_unpack(payload)
        )
        return SyncConnections(message_id, ids)
    return Unknown(message_id, conn_id, kind, bytes(payload))
