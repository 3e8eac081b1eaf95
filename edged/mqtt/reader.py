"""Reading a broker connection in large buffers instead of packet by packet.

paho reads a packet with three or more ``recv`` calls (its type, its length byte by
byte, its body), wraps each PUBLISH in an ``MQTTMessage`` and aiomqtt in a ``Message``,
one trip through the event loop per message: at 20,000 messages a second that was most
of the daemon's CPU. :class:`BurstReader` takes over paho's ``loop_read`` on one client:
each time the socket is readable it ``recv``s up to 256 KiB at a time until the socket
is drained (or 1 MiB is read: the loop is never held long), splits out every PUBLISH of
QoS 0 and 1 itself (:mod:`edged.mqtt.packets`) and hands them to ``deliver`` in one
list (and asks the kernel to ACK at once: see ``_ack_now``); QoS 1 ones are
acknowledged (PUBACK) after delivery, as paho does. Every other
packet (CONNACK, SUBACK, PINGRESP, PUBACK, QoS 2) is handed to paho, whole and in order,
by serving paho's own read calls from it: connecting, subscribing, keepalive, publishing
and every disconnect path stay paho's.

Installed by :class:`edged.mqtt.link.BrokerLink` on each new client before it connects.
It needs a few of paho's internals (``_sock``, ``_sock_recv``, ``_loop_rc_handle``,
``_send_puback``, ``_last_bytes_received``); on a paho without them, or on MQTT 5,
:func:`install` changes nothing and paho reads as before, one message at a time.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import paho.mqtt.client as mqtt

from edged.mqtt.packets import MalformedPacket, Received, packet_end, read_publishes

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux
_QUICKACK_BELOW = 10_000  # messages a second (see BurstReader._ack_now)
_RECV_BYTES = 256 * 1024  # one recv() (a TLS socket returns at most a record, 16 KiB)
_READ_BUDGET = 1024 * 1024  # bytes read per readable event, at most
_PAHO_INTERNALS = ("_sock", "_sock_recv", "_loop_rc_handle", "_send_puback", "_easy_log",
                   "_msgtime_mutex", "_last_bytes_received", "_protocol")

#: What a reader hands over: the messages, in order, and their payload bytes.
Deliver = Callable[[list[Received], int], None]


def install(paho: mqtt.Client, deliver: Deliver,
            max_payload: int | None = None) -> BurstReader | None:
    """A :class:`BurstReader` on ``paho`` (not yet connected), or None where paho lacks
    what it needs (it then reads as it always did)."""
    if not all(hasattr(paho, name) for name in _PAHO_INTERNALS) \
            or paho._protocol == mqtt.MQTTv5:
        return None
    return BurstReader(paho, deliver, max_payload)


class BurstReader:
    """See the module docstring. ``max_payload``: payloads over it are delivered cut to
    their first ``max_payload + 1`` bytes (enough for the receiver to refuse them as
    too large) and the rest is read past, never held."""

    def __init__(self, paho: mqtt.Client, deliver: Deliver,
                 max_payload: int | None = None) -> None:
        self._paho = paho
        self._deliver = deliver
        self.max_payload = max_payload
        self._recv = paho._sock_recv  # the socket's; paho's own reads go to _serve
        self._paho_read = paho.loop_read
        self._rest = b""  # the start of a packet whose end has not arrived
        self._skip = 0  # bytes of a message over max_payload still to read past
        self._handoff = b""  # one whole packet for paho
        self._quickack = _TCP_QUICKACK is not None
        self._light = True  # under _QUICKACK_BELOW messages a second (see _ack_now)
        self._counted = 0  # messages since _counted_since
        self._counted_since = mqtt.time_func()
        paho._sock_recv = self._serve  # type: ignore[method-assign]
        paho.loop_read = self.loop_read  # type: ignore[method-assign]

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """paho's ``loop_read``, reading everything the socket has (see above)."""
        paho = self._paho
        read = 0
        try:
            while read < _READ_BUDGET:
                if paho._sock is None:
                    return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
                try:
                    chunk = self._recv(_RECV_BYTES)
                except BlockingIOError:
                    break
                except OSError as exc:
                    paho._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", exc)
                    return paho._loop_rc_handle(mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST)
                if not chunk:
                    return paho._loop_rc_handle(mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST)
                read += len(chunk)
                if self._quickack and self._light:
                    self._ack_now(paho._sock)
                rc = self._take(chunk)
                if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return rc
        finally:
            if read:
                now = mqtt.time_func()
                with paho._msgtime_mutex:
                    paho._last_bytes_received = now  # keepalive: alive
                if now - self._counted_since >= 1.0:
                    self._light = self._counted < _QUICKACK_BELOW * (now - self._counted_since)
                    self._counted, self._counted_since = 0, now
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _ack_now(self, sock: socket.socket) -> None:
        """Acknowledge what was read at once. One large read lets Linux delay its ACK by
        up to 40 ms (paho's small reads did not), and a broker with Nagle's algorithm on
        (mosquitto's default) holds the next messages back until the ACK comes: readings
        then wait 40 ms in bursts. The setting lasts a while only, so it is made again
        after every read, but only while traffic is light: above _QUICKACK_BELOW
        messages a second the broker's segments fill and its wait is short, and quick
        ACKs would make it send more, smaller ones (at 20,000 messages a second, twice
        the reading CPU for the same p99)."""
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except (OSError, AttributeError):
            self._quickack = False  # not a TCP socket: nothing to hurry

    def _take(self, chunk: bytes) -> mqtt.MQTTErrorCode:
        if self._skip:
            skipped = min(self._skip, len(chunk))
            self._skip -= skipped
            chunk = chunk[skipped:]
        data = self._rest + chunk if self._rest else chunk
        pos = 0
        try:
            while pos < len(data):
                found = read_publishes(data, pos, self.max_payload)
                if found.messages:
                    self._counted += len(found.messages)
                    self._deliver(found.messages, found.nbytes)
                    for mid in found.acks:
                        rc = self._paho._send_puback(mid)
                        if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS:
                            return rc
                pos = found.end
                if found.skip:
                    self._skip = found.skip
                    break
                end = packet_end(data, pos) if found.other else None
                if end is None:
                    break  # the rest of a packet has not arrived yet
                rc = self._hand_over(data[pos:end])
                if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return rc
                pos = end
        except MalformedPacket as exc:
            self._paho._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            self._rest = b""
            return self._paho._loop_rc_handle(mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL)
        self._rest = data[pos:]
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _hand_over(self, packet: bytes) -> mqtt.MQTTErrorCode:
        """Let paho read and handle one whole packet, as if from the socket."""
        self._handoff = packet
        try:
            rc = self._paho_read()
        finally:
            self._handoff = b""
        if rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._paho._sock is None:
            return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN  # paho closed it (a DISCONNECT)
        return rc

    def _serve(self, size: int) -> bytes:
        """paho's socket reads, served from the packet handed over."""
        data = self._handoff
        if not data:
            raise BlockingIOError
        self._handoff = data[size:]
        return data[:size]
