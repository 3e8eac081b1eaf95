"""The mqtt actuator against a real mosquitto broker, read back by a real subscriber;
and the whole daemon (simulator -> windturbine -> onnx -> mqtt) braking a faulty turbine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiomqtt
import pytest
import yaml

from edged.app.assembly import build_graph
from edged.base.errors import ConfigError
from edged.base.metrics import Counters
from edged.builtin.mqtt.actuator import MqttActuator, MqttActuatorConfig
from edged.config import load_config
from edged.plugin.components import BuildContext
from edged.plugin.events import Event, ModelRef
from edged.plugin.manager import make_plugin_manager
from edged.runtime.supervisor import Supervisor
from tests.support.payloads import assert_valid, tracked_events


@dataclass
class Received:
    topic: str
    body: dict
    qos: int
    retain: bool


class Subscriber:
    """A real MQTT client that records every message on ``topics``."""

    def __init__(self, broker, topics: tuple[str, ...] = ("#",)) -> None:
        self.broker = broker
        self.topics = topics
        self.messages: list[Received] = []

    async def run(self, subscribed: asyncio.Event) -> None:
        async with aiomqtt.Client(self.broker.host, self.broker.port) as client:
            for topic in self.topics:
                await client.subscribe(topic, qos=1)
            subscribed.set()
            async for message in client.messages:
                self.messages.append(Received(str(message.topic), json.loads(message.payload),
                                              message.qos, bool(message.retain)))

    def on(self, topic: str) -> list[dict]:
        return [m.body for m in self.messages if m.topic == topic]

    async def wait(self, count: int, within_s: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + within_s
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"got {len(self.messages)} messages, wanted {count}: "
                                     f"{self.messages}")
            await asyncio.sleep(0.02)
        return self.messages


@contextlib.asynccontextmanager
async def subscribed(broker, *topics: str) -> AsyncIterator[Subscriber]:
    subscriber = Subscriber(broker, topics or ("#",))
    ready = asyncio.Event()
    task = asyncio.create_task(subscriber.run(ready), name="test-subscriber")
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield subscriber
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make(broker, counters: Counters | None = None, **options) -> MqttActuator:
    config = MqttActuatorConfig(
        type="mqtt", inputs=["turbines"],
        broker={"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.5, "connect_timeout_s": 2, "keepalive_s": 5},
        **options)
    return MqttActuator(config, BuildContext(name="bus", device_id="gw-7", state_dir=None,
                                             counters=counters or Counters()))


def alarm(turbine: str = "turbine-2", groups=("vibration", "rotation"),
          primary: str | None = "vibration") -> Event:
    return Event(kind="alarm", pipeline="turbines", turbine=turbine, time=1718000000.125,
                 groups=groups, values={"roll_std": 0.5}, thresholds={"roll_std": 0.2},
                 model=ModelRef("windturbine-v1", 1),
                 detail={"consecutive": 2, "primary": primary})


def clear(turbine: str = "turbine-2") -> Event:
    return Event(kind="clear", pipeline="turbines", turbine=turbine, time=1718000010.0,
                 values={"roll_std": 0.1}, thresholds={"roll_std": 0.2},
                 model=ModelRef("windturbine-v1", 1))


async def test_an_alarm_publishes_the_payload_and_the_command_with_qos_1(mosquitto):
    async with subscribed(mosquitto) as sub, make(mosquitto) as actuator:
        await actuator.handle(alarm())
        await sub.wait(2)
    alarm_msg, command_msg = sub.messages
    assert (alarm_msg.topic, alarm_msg.qos, alarm_msg.retain) == (
        "edged/gw-7/alarms/turbine-2", 1, False)
    assert alarm_msg.body == {
        "schema": 1, "id": "gw-7:turbines:turbine-2:1718000000125:alarm",
        "event": "alarm", "device": "gw-7", "pipeline": "turbines", "turbine": "turbine-2",
        "groups": ["vibration", "rotation"], "primary": "vibration",
        "values": {"roll_std": 0.5}, "thresholds": {"roll_std": 0.2},
        "model": {"name": "windturbine-v1", "version": 1},
        "time": "2024-06-10T06:13:20.125Z", "timestamp": 1718000000.125,
        "detail": {"consecutive": 2},
    }
    assert (command_msg.topic, command_msg.qos) == ("turbines/turbine-2/command", 1)
    # The command message: the alarm's payload, as a command (schema 1, docs/payloads.md).
    assert command_msg.body == {
        **alarm_msg.body, "id": alarm_msg.body["id"] + ":brake", "event": "command",
        "command": "brake", "reason": ["vibration"], "cause": "alarm",
        "alarm_id": alarm_msg.body["id"]}


async def test_every_message_follows_the_published_schema(mosquitto):
    """docs/schema/alarm-v1.json: alarm, clear, sensor events and commands alike, from
    events raised as the runtime raises them."""
    events = tracked_events()
    async with subscribed(mosquitto) as sub, make(mosquitto, clear_command="resume") as actuator:
        for event in events:
            await actuator.handle(event)
        # alarm + 1 command (vibration and rotation both brake), clear + resume, 3 sensor
        await sub.wait(7)
    kinds = []
    for message in sub.messages:
        assert_valid(message.body)
        kinds.append((message.body["event"], message.body.get("command")))
    assert kinds == [("alarm", None), ("command", "brake"), ("clear", None),
                     ("command", "resume"), ("sensor_stale", None),
                     ("sensor_recovered", None), ("sensor_stale", None)]
    alarm_body, brake = sub.messages[0].body, sub.messages[1].body
    assert alarm_body["detail"] == {"consecutive": 2, "rows": 610}
    assert brake["detail"] == alarm_body["detail"] and brake["cause"] == "alarm"


async def test_without_a_primary_every_group_commands_once_per_command(mosquitto):
    async with subscribed(mosquitto, "turbines/#") as sub, make(mosquitto) as actuator:
        await actuator.handle(alarm(groups=("vibration", "rotation", "voltage"), primary=None))
        await sub.wait(2)
        await asyncio.sleep(0.2)  # nothing more arrives
    commands = {m.body["command"]: m.body["reason"] for m in sub.messages}
    assert commands == {"brake": ["vibration", "rotation"], "disconnect": ["voltage"]}


async def test_clear_and_clear_command_with_custom_topics_and_retain(mosquitto):
    options = {"alarm_topic": "site/{device}/{pipeline}/{turbine}/{event}",
               "command_topic": "plc/{turbine}", "clear_command": "resume", "retain": True,
               "commands": {"any": "alert"}}
    async with make(mosquitto, **options) as actuator:
        await actuator.handle(alarm(turbine="t/1"))
        await actuator.handle(clear(turbine="t/1"))
    # Retained: a subscriber arriving afterwards still sees each topic's last event.
    async with subscribed(mosquitto, "site/#") as sub:
        await sub.wait(2)
    retained = {m.topic: (m.body["event"], m.retain) for m in sub.messages}
    assert retained == {"site/gw-7/turbines/t_1/alarm": ("alarm", True),
                        "site/gw-7/turbines/t_1/clear": ("clear", True)}
    async with subscribed(mosquitto, "plc/#") as sub, make(mosquitto, **options) as actuator:
        await actuator.handle(alarm(turbine="t/1"))
        await actuator.handle(clear(turbine="t/1"))
        await sub.wait(2)
    assert [(m.topic, m.body["command"], m.retain) for m in sub.messages] == [
        ("plc/t_1", "alert", False), ("plc/t_1", "resume", False)]
    assert sub.messages[0].body["reason"] == ["vibration"]


async def test_stale_sensors_are_published_without_commands(mosquitto):
    stale = Event(kind="sensor_stale", pipeline="turbines", turbine="turbine-4",
                  time=1718000000.0, detail={"silent_s": 7.5})
    async with subscribed(mosquitto) as sub, make(mosquitto) as actuator:
        await actuator.handle(stale)
        await sub.wait(1)
        await asyncio.sleep(0.2)
    [message] = sub.messages
    assert message.topic == "edged/gw-7/alarms/turbine-4"
    assert message.body["event"] == "sensor_stale"
    assert message.body["detail"] == {"silent_s": 7.5}
    assert message.body["groups"] == [] and message.body["model"] is None


async def test_a_summary_of_stale_sensors_is_one_message(mosquitto):
    """Beyond the first few turbines of one watch, the pipeline sums the rest up in one
    event for turbine "*" (edged.runtime.pipeline.MAX_SENSOR_EVENTS)."""
    summary = Event(kind="sensor_stale", pipeline="turbines", turbine="*",
                    time=1718000000.0, detail={"turbines": 990})
    async with subscribed(mosquitto) as sub, make(mosquitto) as actuator:
        await actuator.handle(summary)
        await sub.wait(1)
        await asyncio.sleep(0.2)
    [message] = sub.messages
    assert message.topic == "edged/gw-7/alarms/*"
    assert (message.body["turbine"], message.body["detail"]) == ("*", {"turbines": 990})


# 1 s: the first publish attempt outlasts the outage; 3 s: it does not (connect_timeout_s
# is 2 s), and the actuator tries again.
@pytest.mark.parametrize("down_for", [1, 3])
async def test_an_alarm_raised_while_the_broker_restarts_is_published_after(mosquitto,
                                                                             down_for):
    counters = Counters()
    async with make(mosquitto, counters, retain=True) as actuator:
        restart = asyncio.create_task(asyncio.to_thread(mosquitto.restart,
                                                        down_for=down_for))
        deadline = time.monotonic() + 5
        while actuator.link.client is not None:  # the link has noticed the broker left
            assert time.monotonic() < deadline, "the link did not notice the restart"
            await asyncio.sleep(0.01)
        handled = asyncio.create_task(actuator.handle(alarm()))
        await restart
        await asyncio.wait_for(handled, 10)
        assert counters.get("mqtt_reconnects", component="actuator.bus") >= 1
        if down_for > 2:
            assert counters.get("mqtt_publish_retries", actuator="bus") > 0
        assert counters.get("mqtt_publish_failures", actuator="bus") == 0
    # The alarm was retained by the restarted broker: it was published after the restart.
    async with subscribed(mosquitto, "edged/#") as sub:
        [message] = await sub.wait(1)
    assert message.body["event"] == "alarm" and message.body["turbine"] == "turbine-2"


async def test_an_event_waits_at_most_max_wait_s(tmp_path):
    from tests.support import Mosquitto

    counters = Counters()
    broker = Mosquitto(tmp_path)
    with broker:
        actuator = make(broker, counters, max_wait_s=0.5)
        await actuator.__aenter__()
    try:
        started = time.monotonic()
        await actuator.handle(alarm())  # the broker is gone
        assert time.monotonic() - started < 3
        assert counters.get("mqtt_publish_failures", actuator="bus") == 1
    finally:
        await actuator.__aexit__(None, None, None)


def test_topics_are_checked_when_the_config_is_validated():
    broker = {"host": "localhost"}
    for topic, message in [("edged/{site}/x", "unknown placeholder {site}"),
                           ("edged/+/x", "wildcards"), ("edged/{turbine", "malformed")]:
        with pytest.raises(ValueError, match=message):
            MqttActuatorConfig(type="mqtt", inputs=["p"], broker=broker, alarm_topic=topic)


# -- the whole daemon -----------------------------------------------------------------------


def daemon_config(tmp_path, broker) -> str:
    return yaml.safe_dump({
        "device": {"id": "gw-test"},
        "log": {"level": "warning", "format": "json"},
        "state_dir": str(tmp_path / "state"),
        "shutdown": {"stage_timeout_s": 2},
        "sources": {"farm": {"type": "simulator", "turbines": 3, "rate_hz": 20, "seed": 7,
                             "history_s": 25, "faults": "1:vibration@0.5-30"}},
        "pipelines": {"turbines": {
            "inputs": ["farm"],
            "preprocessor": {"type": "windturbine"},
            "inference": {"type": "onnx", "model": "builtin:windturbine-v1"},
            "interval_s": 0.25,
        }},
        "actuators": {"bus": {
            "type": "mqtt", "inputs": ["turbines"], "events": ["alarm", "clear"],
            "broker": {"host": broker.host, "port": broker.port},
            "debounce": 2, "cooldown_s": 60,
        }},
    }, sort_keys=False)


async def test_the_daemon_brakes_the_faulty_turbine_only(tmp_path, mosquitto):
    path = tmp_path / "edged.yaml"
    path.write_text(daemon_config(tmp_path, mosquitto))
    pm, registry = make_plugin_manager()
    try:
        config = load_config(path, registry)
    except ConfigError as exc:  # pragma: no cover - shows every problem at once
        raise AssertionError(exc.problems) from None
    stop = asyncio.Event()
    supervisor = Supervisor(config, registry, pm, stop=stop, reload=asyncio.Event(),
                            build=build_graph)
    async with subscribed(mosquitto, "edged/#", "turbines/#") as sub:
        run = asyncio.create_task(supervisor.run(), name="test-supervisor")
        try:
            await sub.wait(2, within_s=30)
            await asyncio.sleep(2)  # time for any wrong alarm to show up too
        finally:
            stop.set()
            await asyncio.wait_for(run, 20)
    alarms = sub.on("edged/gw-test/alarms/turbine-1")
    assert alarms and alarms[0]["event"] == "alarm"
    assert alarms[0]["primary"] == "vibration"
    assert alarms[0]["device"] == "gw-test"
    assert alarms[0]["model"] == {"name": "windturbine", "version": 1}
    commands = sub.on("turbines/turbine-1/command")
    assert commands and commands[0]["command"] == "brake"
    assert commands[0]["alarm_id"] == alarms[0]["id"]
    assert {m.topic for m in sub.messages} == {"edged/gw-test/alarms/turbine-1",
                                               "turbines/turbine-1/command"}
