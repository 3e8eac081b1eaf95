"""MQTT 3.1.1 packets as a broker sends them, split out of what the socket gave: the
PUBLISH packets (QoS 0 and 1) read here, in one pass over a whole buffer, every other
packet found whole and left to paho.

Pure functions, no I/O: :mod:`edged.mqtt.reader` feeds them a connection's bytes. Bytes
from the broker are trusted no more than the broker's publishers: whatever they are,
:func:`read_publishes` returns, or raises :class:`MalformedPacket` (the connection is then
dropped, as paho drops it), and never holds more of a PUBLISH whose payload is over
``max_payload`` than its first ``max_payload + 1`` payload bytes.
"""

from __future__ import annotations

from typing import NamedTuple

#: Fixed-header type of a PUBLISH packet (the high nibble of its first byte).
PUBLISH = 3
#: Largest packet other than a PUBLISH of QoS 0 or 1 read whole (a v3.1.1 broker sends
#: CONNACK, SUBACK, UNSUBACK, PUBACK/PUBREC/PUBREL/PUBCOMP and PINGRESP: a few bytes
#: each, a SUBACK one byte per topic subscribed; QoS 2 is never subscribed to).
MAX_CONTROL_PACKET = 65_536


class Received(NamedTuple):
    """One message, as a link hands it over."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


class MalformedPacket(ValueError):
    """Bytes that are no MQTT 3.1.1 packet; the message says where."""


class Publishes(NamedTuple):
    """What :func:`read_publishes` read."""

    messages: list[Received]
    acks: list[int]  # packet ids of the QoS 1 messages, in order, to acknowledge
    end: int  # offset of the first byte not read: another packet, or an incomplete one
    nbytes: int  # payload bytes of ``messages``
    skip: int  # bytes past the end of the buffer that belong to the last message read
    other: bool  # whether ``end`` is the start of a packet of another kind


def _length(data: bytes, start: int) -> tuple[int, int] | None:
    """(remaining length, offset of the variable header) of the packet at ``start``, or
    None if the buffer ends inside its fixed header."""
    end = len(data)
    length, shift, i = 0, 0, start + 1
    while True:
        if i >= end:
            return None
        byte = data[i]
        i += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return length, i
        shift += 7
        if shift > 21:
            raise MalformedPacket(f"remaining length over 4 bytes at offset {start}")


def packet_end(data: bytes, start: int) -> int | None:
    """Where the packet (not a PUBLISH) at ``start`` ends, or None if it is incomplete."""
    found = _length(data, start)
    if found is None:
        return None
    length, body = found
    if length > MAX_CONTROL_PACKET:
        raise MalformedPacket(f"a packet of type {data[start] >> 4} with {length} bytes "
                              f"(over {MAX_CONTROL_PACKET}) at offset {start}")
    end = body + length
    return end if end <= len(data) else None


def read_publishes(data: bytes, start: int = 0,
                   max_payload: int | None = None) -> Publishes:
    """The PUBLISH packets of QoS 0 and 1 from ``data[start:]`` on, in order, up to the
    first packet of another kind (a QoS 2 PUBLISH included), or the first incomplete one.

    A message whose payload is over ``max_payload`` bytes is returned with its first
    ``max_payload + 1`` bytes as soon as they are there (a reader can tell it is too
    large, and never holds more); ``skip`` then says how many bytes of it, past the end of
    ``data``, are still to come (the caller reads past them), and reading stops there.
    A topic that is not UTF-8 is decoded with U+FFFD for each bad byte (mosquitto refuses
    such a publish; from a broker that does not, it is matched like any other topic).
    """
    messages: list[Received] = []
    acks: list[int] = []
    nbytes = 0
    end = len(data)
    pos = start
    other = False
    while pos < end:
        header = data[pos]
        qos = (header >> 1) & 3
        if header >> 4 != PUBLISH or qos == 2:  # QoS 2 (PUBREC/PUBREL/PUBCOMP): paho's
            other = True
            break
        if qos == 3:
            raise MalformedPacket(f"PUBLISH with QoS 3 at offset {pos}")
        if pos + 1 >= end:
            break
        length = data[pos + 1]
        body = pos + 2
        if length & 0x80:  # more than one length byte (a message over 127 bytes)
            found = _length(data, pos)
            if found is None:
                break
            length, body = found
        full_end = body + length
        if length < 2:
            raise MalformedPacket(f"PUBLISH without a topic length at offset {pos}")
        if body + 2 > end:
            break
        topic_end = body + 2 + ((data[body] << 8) | data[body + 1])
        payload_start = topic_end + 2 if qos else topic_end
        if topic_end == body + 2 or payload_start > full_end:
            raise MalformedPacket(f"PUBLISH with an empty topic or one longer than the "
                                  f"packet at offset {pos}")
        stop = full_end
        if max_payload is not None and full_end - payload_start > max_payload:
            stop = payload_start + max_payload + 1  # enough to see it is too large
        if stop > end:
            break  # incomplete: wait for the rest
        messages.append(Received(data[body + 2:topic_end].decode(errors="replace"),
                                 data[payload_start:stop], qos, header & 1 == 1))
        nbytes += stop - payload_start
        if qos:
            acks.append((data[topic_end] << 8) | data[topic_end + 1])
        if full_end > end:
            return Publishes(messages, acks, end, nbytes, full_end - end, False)
        pos = full_end
    return Publishes(messages, acks, pos, nbytes, 0, other)
