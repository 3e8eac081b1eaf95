"""One MQTT broker connection, kept up for as long as its component runs.

Shared by the ``mqtt`` source and the ``mqtt`` actuator. The whole API::

    from edged.mqtt.link import BrokerConfig, BrokerLink

    class MyConfig(SourceConfig):               # or ActuatorConfig
        broker: BrokerConfig

    link = BrokerLink(config.broker, name=ctx.name, device_id=ctx.device_id,
                      counters=ctx.counters, kind="actuator")   # or kind="source"

    async with link:                     # the component's __aenter__: first connection,
        ...                              # bounded by connect_timeout_s; raises
                                         # aiomqtt.MqttError or TimeoutError (the runtime's
                                         # start policy decides what then);
                                         # `await link.open(connect=False)` instead
                                         # leaves the first connection to run()
        await link.run(on_connected)     # in the component's run(): keeps the connection
                                         # up until cancelled, never returns or raises on
                                         # broker restarts or network loss
        await link.publish(topic, payload, qos=1, retain=False)
        link.inbox.take(1000)            # messages received (see Inbox)

``BrokerLink(config, *, name, device_id, counters, kind="", inbox_size=100_000,
inbox_bytes=None, max_payload=None, will=None, meter=None)``
    ``name`` is the component's name (``ctx.name``) and ``kind`` its kind (``source``,
    ``actuator``): a source and an actuator may share a name. ``kind.name`` (or just
    ``name`` without a kind) is the ``component`` of the log lines and counters, and the
    default client id is ``edged-<device_id>-<kind>.<name>``. ``meter`` (a :class:`Meter`,
    e.g. the cloud link's ``edged.cloud.budget.DataBudget``) is charged for every publish.
    ``max_payload``: a message with a larger payload is handed over cut to its first
    ``max_payload + 1`` bytes (its receiver refuses it as too large) and the rest of it is
    read past, never held (None: any size the broker sends).
``async run(on_connected: Callable[[aiomqtt.Client], Awaitable[None]] | None = None)``
    Calls ``on_connected(client)`` after every (re)connection (subscribe there and
    return), then waits for the connection to drop, backs off (exponential, full jitter,
    ``reconnect_min_s`` .. ``reconnect_max_s``) and connects again. ``on_connected``
    raising ``aiomqtt.MqttError`` counts as a lost connection; any other exception
    propagates.
``async publish(topic, payload, *, qos=0, retain=False, priority="critical") -> None``
    Waits up to ``connect_timeout_s`` for a connection, then publishes (QoS 1 waits for
    the broker's PUBACK, again within ``connect_timeout_s``). Raises ``aiomqtt.MqttError``
    when there is no connection or the publish failed. Wrap it in ``asyncio.timeout``
    for a tighter bound. With a meter, the PUBLISH packet's size (:func:`publish_size`)
    is charged at ``priority`` once it is handed to a connection; the meter only counts,
    whether to send is the caller's decision.
``client`` (property)
    The connected ``aiomqtt.Client``, or None while the link is down.
``connected`` (property)
    True while a connection is up.
``async wait_connected() -> aiomqtt.Client``
    The connected client, waiting for one (bound it with ``asyncio.timeout``).
``inbox`` (an :class:`Inbox`)
    Every message received on any connection, in arrival order, as
    :class:`~edged.mqtt.packets.Received` (``topic``, ``payload``), bounded: when it holds
    ``inbox_size`` messages or ``inbox_bytes`` of payload, the oldest message is dropped
    and counted. ``await inbox.wait()`` until one is there,
    ``inbox.take(limit, max_bytes=None)`` takes up to ``limit`` (and, with ``max_bytes``,
    at most that much payload, but at least one message). ``client.messages`` is not
    used: the inbox replaces aiomqtt's per-message queue so a burst is taken in one go,
    and :mod:`edged.mqtt.reader` reads the socket in large buffers, a burst of messages
    per read, instead of paho's packet by packet.

Logs: ``mqtt_connected`` (``reconnect``, ``gap_s``: seconds without a connection),
``mqtt_disconnected`` (``reason``, ``connected_s``), ``mqtt_connect_failed``
(rate-limited, ``attempt``, ``retry_in_s``). Counters, labelled ``component=<kind>.<name>``:
``mqtt_reconnects``, ``mqtt_disconnected_seconds`` (summed outage, float),
``mqtt_connect_failures``, ``mqtt_messages_dropped`` (inbox full).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, Protocol

import aiomqtt
import paho.mqtt.client as mqtt
import structlog
from pydantic import Field, model_validator

from edged.base import retry
from edged.base.http import tls_context
from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.mqtt import reader
from edged.mqtt.packets import Received
from edged.plugin.config import EnvSecret, Strict

log = structlog.get_logger("edged.mqtt")

OnConnected = Callable[[aiomqtt.Client], Awaitable[None]]


class Meter(Protocol):
    """What counts a link's outgoing bytes (edged.cloud.budget.DataBudget)."""

    def charge(self, priority: str, nbytes: int) -> None: ...


def publish_size(topic: str, payload: str | bytes, qos: int) -> int:
    """Bytes of the MQTT 3.1.1 PUBLISH packet that carries ``payload`` to ``topic``: the
    fixed header (type byte, remaining length), the topic with its length prefix, the
    packet id (QoS 1 and 2) and the payload. TLS and TCP framing are not included."""
    body = (2 + len(topic.encode()) + (2 if qos else 0)
            + len(payload.encode() if isinstance(payload, str) else payload))
    length_bytes = 1 if body < 128 else 2 if body < 16_384 else 3 if body < 2_097_152 else 4
    return 1 + length_bytes + body


_CLIENT_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class TlsConfig(Strict):
    """TLS towards the broker; an empty mapping means TLS with the system's CAs."""

    ca_file: Path | None = Field(None, description="CA bundle that signed the broker's "
                                 "certificate (default: the system's).")
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Private key of cert_file.")
    insecure: bool = Field(False, description="Skip the broker hostname check (testing "
                           "only: it allows a man in the middle).")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class BrokerConfig(Strict):
    """Where and how to connect to an MQTT broker."""

    host: str = Field(min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual "
                      "with TLS).")
    client_id: str | None = Field(
        None, min_length=1, max_length=128,
        description="MQTT client id; default edged-<device id>-<kind>.<component name>, "
        "stable across restarts so a persistent session finds its subscriptions.")
    username: str | None = Field(None, description="User name, if the broker wants one.")
    password: EnvSecret | None = Field(None, description="Password, as ${ENV_NAME}.")
    tls: TlsConfig | None = Field(None, description="Use TLS; omit for plain TCP.")
    keepalive_s: int = Field(30, ge=5, le=65535, description="Seconds between keepalive "
                             "pings; a dead link is noticed within about 1.5x this.")
    persistent_session: bool = Field(
        False, description="Keep the session on the broker while disconnected (MQTT "
        "clean_session false): with QoS 1 the broker holds messages for us meanwhile.")
    connect_timeout_s: float = Field(10.0, gt=0, le=300,
                                     description="Bound on one connection attempt.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay bound; "
                                   "doubles per failed attempt (with full jitter).")
    reconnect_max_s: float = Field(30.0, gt=0, description="Largest reconnect delay.")

    @model_validator(mode="after")
    def _backoff(self) -> BrokerConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        return self


def default_client_id(device_id: str, name: str) -> str:
    return _CLIENT_ID_UNSAFE.sub("-", f"edged-{device_id}-{name}")[:128]


def reconnect_delay(config: BrokerConfig, attempt: int) -> float:
    """Exponential backoff with full jitter (:mod:`edged.base.retry`): a fleet that lost its
    broker together does not come back together."""
    return retry.delay(attempt, config.reconnect_min_s, config.reconnect_max_s)


class Inbox:
    """The messages a link received, bounded, dropping the oldest when full.

    The link's reader (:mod:`edged.mqtt.reader`) hands it each burst with
    :meth:`put_many`; it also stands in for aiomqtt's incoming queue (``queue_type``), for
    a message paho reads itself (QoS 2, or a paho the reader cannot read for), which
    aiomqtt hands to :meth:`put_nowait`. The consumer takes whole bursts with
    :meth:`take`. :meth:`get` never returns, so iterating ``client.messages`` only ever
    reports a lost connection (that is how the link notices one).
    """

    def __init__(self, size: int, on_drop: Callable[[], None] = lambda: None,
                 max_bytes: int | None = None) -> None:
        self.size = size
        # Payload bytes held: a count bound alone lets 100,000 large messages take GBs.
        self.max_bytes = max_bytes
        self.bytes = 0  # payload bytes held
        self._items: deque[Received] = deque()
        self._ready = asyncio.Event()
        self._on_drop = on_drop
        self.received = 0
        self.dropped = 0

    def __call__(self, maxsize: int = 0) -> Inbox:  # aiomqtt's queue_type(maxsize=...)
        return self

    def put_nowait(self, message: aiomqtt.Message | Received) -> None:
        if isinstance(message, aiomqtt.Message):
            payload = message.payload
            message = Received(message.topic.value, payload if isinstance(payload, bytes)
                               else str(payload).encode(), message.qos, message.retain)
        self.put_many([message], len(message.payload))

    def put_many(self, messages: list[Received], nbytes: int) -> None:
        """Add ``messages`` (``nbytes``: their payload bytes), then drop the oldest while
        over a bound: what is kept is what adding them one by one would keep (the
        longest run of newest messages within both bounds, never less than one)."""
        items = self._items
        items.extend(messages)
        self.received += len(messages)
        self.bytes += nbytes
        while len(items) > self.size:
            self._drop_oldest()
        if self.max_bytes is not None:
            while self.bytes > self.max_bytes and len(items) > 1:
                self._drop_oldest()
        if not self._ready.is_set():
            self._ready.set()

    def _drop_oldest(self) -> None:
        dropped = self._items.popleft()
        self.bytes -= len(dropped.payload)
        self.dropped += 1
        self._on_drop()

    def qsize(self) -> int:
        return len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    async def get(self) -> NoReturn:
        await asyncio.Future()  # never: messages are taken with take()
        raise AssertionError("unreachable")

    async def wait(self) -> None:
        """Until at least one message is there."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()

    def take(self, limit: int, max_bytes: int | None = None) -> list[Received]:
        """Up to ``limit`` messages, oldest first, and (with ``max_bytes``) no more
        payload bytes than that but at least one message; an empty list if none."""
        items = self._items
        if len(items) <= limit and (max_bytes is None or self.bytes <= max_bytes):
            taken = list(items)
            items.clear()
            self.bytes = 0
            return taken
        taken = []
        room = self.bytes if max_bytes is None else max_bytes
        while items and len(taken) < limit:
            size = len(items[0].payload)
            if taken and size > room:
                break
            taken.append(items.popleft())
            room -= size
            self.bytes -= size
        return taken


class BrokerLink:
    """See the module docstring."""

    def __init__(self, config: BrokerConfig, *, name: str, device_id: str,
                 counters: Counters, kind: str = "", inbox_size: int = 100_000,
                 inbox_bytes: int | None = None, max_payload: int | None = None,
                 will: aiomqtt.Will | None = None, meter: Meter | None = None) -> None:
        self.config = config
        self.meter = meter
        self.max_payload = max_payload
        # Component names are unique per kind only; "." never occurs in one.
        self.name = f"{kind}.{name}" if kind else name
        self.counters = counters
        self.client_id = config.client_id or default_client_id(device_id, self.name)
        self.will = will
        self.inbox = Inbox(inbox_size, on_drop=self._count_drop, max_bytes=inbox_bytes)
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._connected_at = 0.0
        self._down_since: float | None = None  # monotonic time the link went down
        self._rate_limit = RateLimit()
        self._tls: ssl.SSLContext | None = None

    # -- public ---------------------------------------------------------------------------

    @property
    def client(self) -> aiomqtt.Client | None:
        return self._client

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def __aenter__(self) -> BrokerLink:
        return await self.open()

    async def open(self, *, connect: bool = True) -> BrokerLink:
        """What ``async with`` does; ``connect=False`` only loads the TLS files and
        leaves the first connection to :meth:`run` (for a link whose broker may be
        unreachable for a long time without that stopping the daemon)."""
        if self.config.tls is not None:
            self._tls = await asyncio.to_thread(_tls_context, self.config.tls)
        if connect:
            self._up(await self._connect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        self._connected.clear()
        if client is not None:
            await self._close(client)

    async def wait_connected(self) -> aiomqtt.Client:
        while self._client is None:
            await self._connected.wait()
        return self._client

    async def publish(self, topic: str, payload: str | bytes, *, qos: int = 0,
                      retain: bool = False, priority: str = "critical") -> None:
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                client = await self.wait_connected()
        except TimeoutError:
            raise aiomqtt.MqttError(f"not connected to {self._address}") from None
        if self.meter is not None:
            # Charged once handed to a connection: paho writes it out even when the
            # PUBACK never comes, so a failed QoS 1 publish has still used the bytes.
            self.meter.charge(priority, publish_size(topic, payload, qos))
        await client.publish(topic, payload, qos=qos, retain=retain)

    async def run(self, on_connected: OnConnected | None = None) -> NoReturn:
        attempt = 0
        while True:
            client = self._client
            if client is None:
                try:
                    client = await self._connect()
                except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                    attempt += 1
                    self.counters.inc("mqtt_connect_failures", component=self.name)
                    delay = reconnect_delay(self.config, attempt)
                    suppressed = self._rate_limit.allow("connect_failed")
                    if suppressed is not None:
                        log.warning("mqtt_connect_failed", component=self.name,
                                    broker=self._address, attempt=attempt,
                                    retry_in_s=round(delay, 2), error=_describe(exc),
                                    suppressed_since_last=suppressed)
                    await asyncio.sleep(delay)
                    continue
                attempt = 0
                self._up(client)
            reason = "closed by broker"
            try:
                if on_connected is not None:
                    await on_connected(client)
                async for _ in client.messages:  # the inbox never yields: waits for a drop
                    pass
            except aiomqtt.MqttError as exc:
                reason = _describe(exc)
            await self._down(client, reason)
            # Not even a first immediate retry: a broker that just restarted is better
            # not hit by every client in the same millisecond.
            await asyncio.sleep(reconnect_delay(self.config, 1))

    # -- internals ------------------------------------------------------------------------

    @property
    def _address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def _count_drop(self) -> None:
        self.counters.inc("mqtt_messages_dropped", component=self.name)
        suppressed = self._rate_limit.allow("dropped")
        if suppressed is not None:
            log.warning("mqtt_messages_dropped", component=self.name,
                        inbox_size=self.inbox.size, inbox_bytes=self.inbox.max_bytes,
                        suppressed_since_last=suppressed)

    def _new_client(self) -> aiomqtt.Client:
        config = self.config
        password = config.password.get_secret_value() if config.password else None
        client = aiomqtt.Client(
            config.host, config.port,
            identifier=self.client_id,
            username=config.username,
            password=password,
            clean_session=not config.persistent_session,
            keepalive=config.keepalive_s,
            timeout=config.connect_timeout_s,
            queue_type=self.inbox,  # type: ignore[arg-type]
            tls_context=self._tls,
            tls_insecure=config.tls.insecure if config.tls else None,
            will=self.will,
            # QoS 1 deliveries outstanding at once; paho's default of 20 throttles a
            # busy subscriber on a slow link.
            max_inflight_messages=1000,
            # Requests and replies are small and each waits for the last (IoT Jobs,
            # alarms): Nagle's algorithm would hold every one back for a delayed ACK.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        paho = getattr(client, "_client", None)  # aiomqtt 2.x keeps paho's client there
        if isinstance(paho, mqtt.Client):
            reader.install(paho, self.inbox.put_many, self.max_payload)
        return client

    async def _connect(self) -> aiomqtt.Client:
        client = self._new_client()
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                await client.__aenter__()
        except BaseException:
            _abandon(client)
            raise
        return client

    def _up(self, client: aiomqtt.Client) -> None:
        now = time.monotonic()
        gap = None if self._down_since is None else now - self._down_since
        self._client, self._connected_at = client, now
        self._connected.set()
        if gap is None:
            log.info("mqtt_connected", component=self.name, broker=self._address,
                     client_id=self.client_id, reconnect=False)
            return
        self.counters.inc("mqtt_reconnects", component=self.name)
        self.counters.inc("mqtt_disconnected_seconds", round(gap, 3),  # type: ignore[arg-type]
                          component=self.name)
        log.info("mqtt_connected", component=self.name, broker=self._address,
                 client_id=self.client_id, reconnect=True, gap_s=round(gap, 3))
        self._down_since = None

    async def _down(self, client: aiomqtt.Client, reason: str) -> None:
        now = time.monotonic()
        self._client = None
        self._connected.clear()
        self._down_since = now
        log.warning("mqtt_disconnected", component=self.name, broker=self._address,
                    reason=reason, connected_s=round(now - self._connected_at, 3))
        await self._close(client)

    async def _close(self, client: aiomqtt.Client) -> None:
        # A graceful DISCONNECT when the link still works; nothing to wait for otherwise.
        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
            async with asyncio.timeout(self.config.connect_timeout_s):
                await client.__aexit__(None, None, None)


def _tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """Built once, in a thread: loading certificates reads files."""
    return tls_context(ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file,
                       check_hostname=not tls.insecure)


def _abandon(client: aiomqtt.Client) -> None:
    """Close the socket of a connection attempt that timed out. aiomqtt leaves it open
    (and its reader registered), and a late CONNACK would then bring up a second
    session with our client id, which the broker answers by dropping the other one."""
    paho = getattr(client, "_client", None)
    with contextlib.suppress(Exception):
        if paho is not None and paho.socket() is not None:
            paho.disconnect()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text


__all__ = ["BrokerConfig", "BrokerLink", "Inbox", "Meter", "OnConnected", "Received",
           "TlsConfig", "default_client_id", "publish_size", "reconnect_delay"]
