"""
remotedialer's framing: exact bytes as Go writes them, round trips of every
message type, and a property-based fuzz of the decoder.
"""

from __future__ import annotations

import contextlib
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from k3stw.tunnel.codec import (
    LEGACY_DEADLINE_MS,
    AddClient,
    Connect,
    Data,
    Error,
    Message,
    MessageType,
    Pause,
    ProtocolError,
    RemoveClient,
    Resume,
    SyncConnections,
    Unknown,
    decode,
    decode_data,
    encode,
    encode_data_header,
)

INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30)


def go_varint(value: int) -> bytes:
    """Go's binary.PutVarint, written out independently of the codec."""
    unsigned = (value << 1) ^ (value >> 63)
    unsigned &= (1 << 64) - 1
    out = bytearray()
    while unsigned >= 0x80:
        out.append(unsigned & 0x7F | 0x80)
        unsigned >>= 7
    out.append(unsigned)
    return bytes(out)


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Data, INT64, INT64, st.binary(max_size=200)),
    st.builds(
        Connect,
        INT64,
        INT64,
        st.sampled_from(["tcp", "udp", "unix"]),
        st.text(max_size=60),
    ),
    st.builds(Error, INT64, INT64, st.text(max_size=25)),
    st.builds(AddClient, INT64, st.text(max_size=25)),
    st.builds(RemoveClient, INT64, st.text(max_size=25)),
    st.builds(Pause, INT64, INT64),
    st.builds(Resume, INT64, INT64),
    st.builds(SyncConnections, INT64, st.lists(INT64, max_size=20).map(tuple)),
)


class EncodingTests(SynchronousTestCase):
    """The bytes on the wire are the ones remotedialer writes and reads."""

    def test_type_numbers(self) -> None:
        """The type numbers are remotedialer's C{iota + 1} sequence."""
        self.assertEqual(
            [(kind.name, kind.value) for kind in MessageType],
            [
                ("DATA", 1),
                ("CONNECT", 2),
                ("ERROR", 3),
                ("ADD_CLIENT", 4),
                ("REMOVE_CLIENT", 5),
                ("PAUSE", 6),
                ("RESUME", 7),
                ("SYNC_CONNECTIONS", 8),
            ],
        )

    def test_connect_bytes(self) -> None:
        """Connect: id, conn id, type 2, the legacy deadline 15000, then C{tcp/host:port}."""
        frame = encode(Connect(5, 2, "tcp", "127.0.0.1:10250"))
        self.assertEqual(
            frame,
            go_varint(5)
            + go_varint(2)
            + go_varint(2)
            + go_varint(LEGACY_DEADLINE_MS)
            + b"tcp/127.0.0.1:10250",
        )
        self.assertEqual(go_varint(LEGACY_DEADLINE_MS), b"\xb0\xea\x01")

    def test_data_bytes(self) -> None:
        """Data carries the deadline field too; negative ids are zig-zagged."""
        self.assertEqual(
            encode(Data(-1, 3, b"hi")), b"\x01" + b"\x06" + b"\x02" + b"\xb0\xea\x01" + b"hi"
        )

    def test_session_messages_have_no_deadline(self) -> None:
        """Error, Pause, Resume and SyncConnections have no deadline field."""
        self.assertEqual(encode(Error(1, 2, "EOF")), b"\x02\x04\x06EOF")
        self.assertEqual(encode(Pause(1, 2)), b"\x02\x04\x0c")
        self.assertEqual(encode(Resume(1, 2)), b"\x02\x04\x0e")
        self.assertEqual(
            encode(SyncConnections(1, (2, 3))),
            b"\x02\x00\x10" + (2).to_bytes(8, "little") + (3).to_bytes(8, "little"),
        )

    def test_extreme_ids(self) -> None:
        """int64's ends take ten varint bytes and come back unchanged."""
        for value in (-(1 << 63), (1 << 63) - 1):
            frame = encode(Pause(value, value))
            self.assertEqual(frame[:10], go_varint(value))
            self.assertEqual(decode(frame), Pause(value, value))

    def test_out_of_range_id(self) -> None:
        """An id outside int64 cannot be encoded."""
        self.assertRaises(ValueError, encode, Pause(1 << 63, 1))

    def test_long_error_text_is_cut(self) -> None:
        """An Error text is cut, at a character boundary, to the 100 bytes Go reads."""
        decoded = decode(encode(Error(1, 2, "é" * 80)))
        assert isinstance(decoded, Error)
        self.assertEqual(decoded.text, "é" * 50)

    def test_connect_too_long(self) -> None:
        """A Connect payload longer than remotedialer reads is refused on both ends."""
        self.assertRaises(ValueError, encode, Connect(1, 2, "tcp", "h" * 300))
        frame = go_varint(1) + go_varint(2) + go_varint(2) + go_varint(0) + b"tcp/" + b"h" * 300
        self.assertRaises(ProtocolError, decode, frame)


class RoundTripTests(SynchronousTestCase):
    """decode(encode(m)) == m for every message type."""

    def test_each_type(self) -> None:
        """One example of each type survives the round trip."""
        examples: list[Message] = [
            Data(1, 2, b"\x00payload"),
            Data(1, 2, b""),
            Connect(3, 4, "tcp", "[::1]:10250"),
            Error(5, 6, "EOF"),
            Error(5, 6, "dial tcp 127.0.0.1:1: connect: connection refused"),
            AddClient(7, "node/1"),
            RemoveClient(8, "node/1"),
            Pause(9, 10),
            Resume(11, 12),
            SyncConnections(13, ()),
            SyncConnections(13, (2, 3, -5)),
        ]
        for message in examples:
            self.assertEqual(decode(encode(message)), message)

    def test_eof(self) -> None:
        """Error C{EOF} is a clean close."""
        self.assertTrue(Error(1, 2, "EOF").is_eof)
        self.assertFalse(Error(1, 2, "broken").is_eof)

    @given(messages)
    def test_property(self, message: Message) -> None:
        """Any message survives the round trip."""
        self.assertEqual(decode(encode(message)), message)


class DecoderErrorTests(SynchronousTestCase):
    """Malformed frames are refused with a clear L{ProtocolError}."""

    def assertRefused(self, frame: bytes, words: str) -> None:
        with self.assertRaises(ProtocolError) as caught:
            decode(frame)
        self.assertIn(words, str(caught.exception))

    def test_empty(self) -> None:
        """An empty frame is truncated in the message id."""
        self.assertRefused(b"", "truncated in the message id")

    def test_truncated_deadline(self) -> None:
        """A Data frame that stops before its deadline field."""
        self.assertRefused(b"\x02\x04\x02", "truncated in the deadline")

    def test_varint_overflow(self) -> None:
        """An eleven-byte varint (or a tenth byte above 1) overflows 64 bits."""
        self.assertRefused(b"\xff" * 9 + b"\x02", "overflows 64 bits")
        self.assertRefused(b"\x80" * 11, "overflows 64 bits")

    def test_connect_without_slash(self) -> None:
        """A Connect payload must be C{proto/address}."""
        self.assertRefused(b"\x02\x04\x04\x00tcp", "not <proto>/<address>")

    def test_pause_with_payload(self) -> None:
        """Pause carries nothing."""
        self.assertRefused(b"\x02\x04\x0cx", "PAUSE carries 1 payload bytes")

    def test_sync_not_multiple_of_eight(self) -> None:
        """SyncConnections is a list of 8-byte ids."""
        self.assertRefused(b"\x02\x00\x10" + b"\x00" * 9, "not a multiple of 8")

    def test_unknown_type(self) -> None:
        """An unknown type decodes to L{Unknown}, as remotedialer ignores it."""
        self.assertEqual(decode(b"\x02\x04\x12abc"), Unknown(1, 2, 9, b"abc"))


class DataPathTests(SynchronousTestCase):
    """The data path's encoder and decoder agree with L{encode} and L{decode}."""

    @settings(max_examples=300)
    @given(INT64, INT64, st.binary(max_size=200))
    def test_data_messages(self, message_id: int, conn_id: int, data: bytes) -> None:
        """Every Data message: the same header bytes, the same connection and payload."""
        frame = encode(Data(message_id, conn_id, data))
        self.assertEqual(encode_data_header(message_id, conn_id) + data, frame)
        self.assertEqual(decode_data(frame), (conn_id, data))

    def test_other_types_are_left_to_decode(self) -> None:
        """A message of another type, or Data with a non-minimal type varint, is not decoded."""
        self.assertIsNone(decode_data(encode(Pause(1, 2))))
        self.assertIsNone(decode_data(encode(Connect(1, 2, "tcp", "127.0.0.1:10250"))))
        self.assertIsNone(decode_data(encode(Error(1, 2, "EOF"))))
        # Go reads 0x82 0x00 as type 1 too; decode does, the data path leaves it.
        frame = b"\x02\x04\x82\x00\xb0\xea\x01abc"
        self.assertEqual(decode(frame), Data(1, 2, b"abc"))
        self.assertIsNone(decode_data(frame))

    def test_overflow_is_left_to_decode(self) -> None:
        """A Data message whose connection id overflows 64 bits is decode's error."""
        frame = b"\x02" + b"\xff" * 9 + b"\x02\x02\xb0\xea\x01abc"
        self.assertRaises(ProtocolError, decode, frame)
        self.assertIsNone(decode_data(frame))


class DecoderFuzzTests(SynchronousTestCase):
    """The decoder on hostile input: only L{ProtocolError}, and bounded work."""

    def check(self, frame: bytes) -> None:
        fast = decode_data(frame)
        try:
            message = decode(frame)
        except ProtocolError as error:
            self.assertTrue(str(error))
            # The data path's decoder leaves every malformed frame to decode.
            self.assertIsNone(fast)
            return
        if fast is not None:
            # ... and what it does decode, it decodes as decode does.
            assert isinstance(message, Data)
            self.assertEqual(fast, (message.conn_id, message.data))
        # Nothing decoded is bigger than the frame it came from.
        size = 0
        match message:
            case Data(data=data) | Unknown(payload=data):
                size = len(data)
            case SyncConnections(conn_ids=ids):
                size = 8 * len(ids)
            case Connect(proto=proto, address=address):
                size = len(proto) + len(address)
            case Error(text=text) | AddClient(client=text) | RemoveClient(client=text):
                size = len(text)
        self.assertLessEqual(size, len(frame))

    @settings(max_examples=500)
    @given(st.binary(max_size=400))
    def test_random_frames(self, frame: bytes) -> None:
        """Random bytes decode or raise L{ProtocolError}, nothing else."""
        self.check(frame)

    @settings(max_examples=300)
    @given(messages, st.data())
    def test_truncated_frames(self, message: Message, data: st.DataObject) -> None:
        """Every prefix of a valid frame decodes or raises L{ProtocolError}."""
        frame = encode(message)
        cut = data.draw(st.integers(min_value=0, max_value=len(frame)))
        self.check(frame[:cut])

    @settings(max_examples=300)
    @given(messages, st.data())
    def test_corrupted_frames(self, message: Message, data: st.DataObject) -> None:
        """A valid frame with one byte changed decodes or raises L{ProtocolError}."""
        frame = bytearray(encode(message))
        index = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
        frame[index] = data.draw(st.integers(min_value=0, max_value=255))
        self.check(bytes(frame))

    @settings(max_examples=300)
    @given(st.lists(st.sampled_from([0x00, 0x01, 0x02, 0x7F, 0x80, 0x81, 0xFF]), max_size=40))
    def test_varint_edges(self, frame: list[int]) -> None:
        """Frames of varint edge bytes (overflows, Data's type byte): as L{decode} does."""
        self.check(bytes(frame))

    def test_no_allocation_from_claimed_sizes(self) -> None:
        """Maximal varints claim nothing: decoding a short frame allocates little."""
        frame = b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01" * 3 + b"x" * 16
        tracemalloc.start()
        try:
            for _ in range(100):
                with contextlib.suppress(ProtocolError):
                    decode(frame)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 64 * 1024)
