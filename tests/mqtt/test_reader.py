"""The burst reader on a real mosquitto: a BrokerLink receives what a publisher sent, in
order, QoS 1 acknowledged (the broker has nothing to send again), a message over
max_payload cut, and an inbox taken in bounded bites."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt

from edged.base.metrics import Counters
from edged.mqtt.link import BrokerConfig, BrokerLink, Inbox, Received
from edged.testing import stop_task

MAX_PAYLOAD = 1000


def make_link(broker, **overrides) -> BrokerLink:
    config = BrokerConfig(host=broker.host, port=broker.port, client_id="reader-test",
                          persistent_session=True, reconnect_min_s=0.2, **overrides)
    return BrokerLink(config, name="bus", device_id="test", counters=Counters(),
                      kind="source", max_payload=MAX_PAYLOAD)


async def received(link: BrokerLink, count: int, seconds: float = 20) -> list[Received]:
    got: list[Received] = []
    async with asyncio.timeout(seconds):
        while len(got) < count:
            await link.inbox.wait()
            got += link.inbox.take(10_000)
    return got


@contextlib.asynccontextmanager
async def running(link: BrokerLink):
    async def subscribe(client: aiomqtt.Client) -> None:
        await client.subscribe("bus/#", qos=1)

    async with link:
        task = asyncio.create_task(link.run(subscribe))
        try:
            await asyncio.sleep(0.3)  # subscribed
            yield link
        finally:
            await stop_task(task)


async def test_a_burst_arrives_whole_in_order_and_qos1_is_acknowledged(mosquitto):
    sizes = [0, 1, 127, 128, 16_383, 16_384, MAX_PAYLOAD, MAX_PAYLOAD + 1, 70_000]
    sent = [(f"bus/{i % 7}", bytes([i % 251]) * sizes[i % len(sizes)], i % 2)
            for i in range(3000)]
    async with running(make_link(mosquitto)) as link, \
            aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="pub",
                           max_inflight_messages=len(sent)) as pub:  # sent in order
        await asyncio.gather(*(pub.publish(topic, payload, qos=qos)
                               for topic, payload, qos in sent))
        got = await received(link, len(sent))
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        (topic, payload[:MAX_PAYLOAD + 1], qos) for topic, payload, qos in sent]
    # Every QoS 1 message was acknowledged: the persistent session has none to resend.
    async with running(make_link(mosquitto)) as again:
        await asyncio.sleep(1.0)
        assert again.inbox.take(10) == []


async def test_the_inbox_is_taken_in_bites_of_bytes():
    inbox = Inbox(100)
    inbox.put_many([Received("t", b"x" * n) for n in (10, 20, 30, 500)], 560)
    assert [len(m.payload) for m in inbox.take(10, max_bytes=35)] == [10, 20]
    assert inbox.bytes == 530
    assert [len(m.payload) for m in inbox.take(10, max_bytes=5)] == [30]  # at least one
    assert [len(m.payload) for m in inbox.take(10)] == [500] and inbox.bytes == 0
