"""What the cloud link charges for a publish is what it sends: the bytes a forwarder
between the link and mosquitto sees, packet for packet."""

from __future__ import annotations

from pathlib import Path

from edged.base.metrics import Counters
from edged.cloud.budget import DataBudget
from edged.config.cloud import DataBudgetConfig
from edged.mqtt.link import BrokerConfig, BrokerLink, publish_size
from tests.support import Mosquitto

from .conftest import Forwarder


async def test_each_publish_is_charged_the_bytes_of_its_packet(tmp_path: Path):
    counters = Counters()
    budget = DataBudget(DataBudgetConfig(daily_mb=1), tmp_path, counters)
    with Mosquitto(tmp_path) as broker, Forwarder(broker.port) as forwarder:
        link = BrokerLink(BrokerConfig(host="127.0.0.1", port=forwarder.port),
                          name="cloud", device_id="d", counters=counters, meter=budget)
        async with link:
            # Payloads whose packets need 1, 2 and 3 bytes of remaining length, a
            # multi-byte topic, and QoS 0 (no packet id).
            cases = [("a/b", b"x" * 10, 1, "critical"), ("edged/é/health", b"y" * 300, 1,
                     "heartbeat"), ("big", b"z" * 20_000, 1, "capture"),
                     ("a/b", "text", 1, "critical")]
            for topic, payload, qos, priority in cases:
                before, charged = forwarder.upstream, budget.total()
                await link.publish(topic, payload, qos=qos, priority=priority)
                # QoS 1 returns on the PUBACK: the broker, so the forwarder, had it all.
                assert forwarder.upstream - before == budget.total() - charged == \
                    publish_size(topic, payload, qos)
    assert budget.usage()["used_bytes"] == {
        "critical": publish_size("a/b", b"x" * 10, 1) + publish_size("a/b", "text", 1),
        "heartbeat": publish_size("edged/é/health", b"y" * 300, 1),
        "capture": publish_size("big", b"z" * 20_000, 1),
        "total": budget.total()}


def test_the_packet_size_follows_mqtt_3_1_1():
    # Fixed header 1 + remaining length 1 + topic length 2 + "t" + packet id 2 + payload.
    assert publish_size("t", b"12345", 1) == 1 + 1 + 2 + 1 + 2 + 5
    assert publish_size("t", b"12345", 0) == 1 + 1 + 2 + 1 + 5
    # 127 bytes of remaining length fit one length byte, 128 need two.
    assert publish_size("t", b"x" * 122, 1) == 2 + 127
    assert publish_size("t", b"x" * 123, 1) == 3 + 128
