"""Property: whatever bytes a broker sends, cut wherever TCP cuts them, the burst reader
(edged.mqtt.reader on a real paho client, its socket a fake) hands over exactly the
PUBLISH messages they hold, in order, acknowledges each QoS 1 one once, lets paho have
every other packet, never holds more than its bound of one message, and on bytes that
are no MQTT closes the connection (as paho does) instead of raising."""

from __future__ import annotations

from collections import deque

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from edged.mqtt import packets, reader
from edged.mqtt.packets import MAX_CONTROL_PACKET, MalformedPacket, Received, read_publishes

MAX_PAYLOAD = 300
PINGRESP = b"\xd0\x00"


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: bytes, payload: bytes, qos: int = 0, mid: int = 1,
            retain: bool = False) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    body += payload
    return bytes([0x30 | qos << 1 | retain]) + remaining_length(len(body)) + body


def puback(mid: int) -> bytes:
    return b"\x40\x02" + mid.to_bytes(2, "big")


class FakeSocket:
    """What paho's client reads from and writes to: bytes pushed by the test."""

    def __init__(self) -> None:
        self.incoming: deque[bytes] = deque()
        self.sent = bytearray()
        self.closed = False

    def recv(self, size: int) -> bytes:
        if not self.incoming:
            raise BlockingIOError
        chunk = self.incoming.popleft()
        if len(chunk) > size:
            self.incoming.appendleft(chunk[size:])
        return chunk[:size]

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def close(self) -> None:
        self.closed = True

    def fileno(self) -> int:
        return -1


def connected_reader() -> tuple[mqtt.Client, FakeSocket, list[Received]]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fuzz")
    sock = FakeSocket()
    client._sock = sock  # type: ignore[assignment]
    got: list[Received] = []
    installed = reader.install(client, lambda messages, _: got.extend(messages),
                               max_payload=MAX_PAYLOAD)
    assert installed is not None
    return client, sock, got


def feed(client: mqtt.Client, sock: FakeSocket, chunks: list[bytes]) -> None:
    state = client.loop_read.__self__  # the BurstReader
    for chunk in chunks:
        sock.incoming.append(chunk)
        client.loop_read()
        # Bounded: the start of at most one message (its kept part) or control packet.
        assert len(state._rest) <= 5 + 2 + 65_535 + 2 + MAX_PAYLOAD + 1
        assert len(state._rest) <= 5 + MAX_CONTROL_PACKET or state._rest[0] >> 4 == 3


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


_TOPIC = st.one_of(st.sampled_from([b"turbines/t1/raw", b"a", b"\xff\xfe"]),
                   st.binary(min_size=1, max_size=40))
_MESSAGE = st.tuples(_TOPIC, st.binary(max_size=2 * MAX_PAYLOAD), st.sampled_from([0, 1]),
                     st.integers(1, 65535), st.booleans())


@pytest.mark.fuzz
@given(items=st.lists(st.one_of(_MESSAGE, st.just(None)), max_size=30),
       points=st.lists(st.integers(0, 1 << 20), max_size=40))
def test_every_message_is_handed_over_once_in_order(monkeypatch, items, points):
    # A bound on control packets below the messages' sizes: an incomplete PUBLISH must
    # never be mistaken for an oversized packet of another kind.
    monkeypatch.setattr(packets, "MAX_CONTROL_PACKET", 40)
    client, sock, got = connected_reader()
    data = b"".join(PINGRESP if item is None else publish(*item) for item in items)
    feed(client, sock, cut(data, points))
    messages = [item for item in items if item is not None]
    assert got == [Received(topic.decode(errors="replace"), payload[:MAX_PAYLOAD + 1], qos,
                            retain)
                   for topic, payload, qos, _, retain in messages]
    assert bytes(sock.sent) == b"".join(puback(mid) for _, _, qos, mid, _ in messages if qos)
    assert client._sock is sock and not sock.closed  # still connected


@pytest.mark.fuzz
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_any_bytes_are_messages_or_a_closed_connection(chunks):
    client, sock, got = connected_reader()
    feed(client, sock, chunks)
    assert all(isinstance(m, Received) and len(m.payload) <= MAX_PAYLOAD + 1 for m in got)
    if sock.closed:
        assert client._sock is None


@pytest.mark.fuzz
@given(st.binary(max_size=400), st.integers(0, 400), st.none() | st.integers(0, 100))
def test_read_publishes_reads_or_raises_malformed(data, start, max_payload):
    try:
        found = read_publishes(data, min(start, len(data)), max_payload)
    except MalformedPacket:
        return
    assert min(start, len(data)) <= found.end <= len(data)
    assert len(found.acks) <= len(found.messages)
    assert found.nbytes == sum(len(m.payload) for m in found.messages)
    assert found.skip >= 0
    if max_payload is not None:
        assert all(len(m.payload) <= max_payload + 1 for m in found.messages)


def test_a_message_over_the_bound_is_cut_and_the_rest_read_past():
    client, sock, got = connected_reader()
    big = publish(b"turbines/t1/raw", b"x" * 100_000, qos=1, mid=7)
    after = publish(b"turbines/t2/raw", b"1,2,3")
    feed(client, sock, cut(big + after, list(range(0, len(big) + len(after), 1000))))
    assert got == [Received("turbines/t1/raw", b"x" * (MAX_PAYLOAD + 1), 1),
                   Received("turbines/t2/raw", b"1,2,3")]
    assert bytes(sock.sent) == puback(7)


def test_bytes_that_are_no_mqtt_close_the_connection():
    client, sock, got = connected_reader()
    feed(client, sock, [publish(b"a", b"1"), b"\x30\xff\xff\xff\xff\x01"])
    assert got == [Received("a", b"1")]
    assert sock.closed and client._sock is None
