"""End to end on a real broker: ``edged simulate`` publishes five turbines, ``edged run``
reads them with the mqtt source, decides with the reference model and publishes alarms
and commands with the mqtt actuator; a test subscriber sees what a turbine would see."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt

from edged.testing import eventually
from tests.support import EdgedProcess

ROOT = Path(__file__).resolve().parents[1]
FAULTY = "turbine-2"

CONFIG = """\
device:
  id: e2e-gateway
log:
  level: info
  format: json
sources:
  bus:
    type: mqtt
    broker: {{host: 127.0.0.1, port: {port}, reconnect_min_s: 0.2}}
    topics: ["turbines/{{turbine}}/raw"]
    format: auto
    layout: dataset23
pipelines:
  turbines:
    inputs: [bus]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx}}
    interval_s: 0.5
actuators:
  turbine-bus:
    type: mqtt
    inputs: [turbines]
    broker: {{host: 127.0.0.1, port: {port}, reconnect_min_s: 0.2}}
    alarm_topic: "edged/{{device}}/alarms/{{turbine}}"
    command_topic: "turbines/{{turbine}}/command"
    events: [alarm, clear]
    debounce: 2
"""


def simulate(broker: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edged", "simulate", "--broker", broker,
                             *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


async def test_a_fault_on_the_bus_raises_an_alarm_and_a_command(mosquitto, tmp_path):
    async with daemon_on_bus(mosquitto, tmp_path, CONFIG.format(port=mosquitto.port),
                             "e2e-turbines") as (daemon, bus):
        seen = bus.seen
        started = time.monotonic()
        # 25 s of history fills the 500-row buffers at once; the fault starts 3 s in.
        simulator = simulate(mosquitto.address, "--turbines", "5", "--rate", "20",
                             "--seed", "3", "--history", "25",
                             "--faults", "2:vibration@3-60", "--duration", "30")

        def commanded() -> bool:
            return any(topic == f"turbines/{FAULTY}/command" for topic, _ in seen)

        try:
            await eventually(commanded, 25)
            alarm_after = time.monotonic() - started
            await asyncio.sleep(2.0)  # room for a wrong alarm on a healthy turbine
        finally:
            simulator.send_signal(signal.SIGTERM)
            sim_out, sim_err = await asyncio.to_thread(simulator.communicate, None, 20)

    assert simulator.returncode == 0, sim_err
    alarms = [(t, m) for t, m in seen if t.startswith("edged/")]
    commands = [(t, m) for t, m in seen if t.endswith("/command")]
    # The faulty turbine: an alarm naming vibration, then the brake command for it.
    assert [t for t, _ in alarms] == [f"edged/e2e-gateway/alarms/{FAULTY}"], seen
    alarm = alarms[0][1]
    assert alarm["event"] == "alarm" and alarm["turbine"] == FAULTY
    assert alarm["primary"] == "vibration"
    assert commands == [(f"turbines/{FAULTY}/command", {
        **alarm, "id": alarm["id"] + ":brake", "event": "command", "command": "brake",
        "reason": ["vibration"], "cause": "alarm", "alarm_id": alarm["id"]})]
    # 3 s into the live rows, plus two anomalous decisions half a second apart.
    assert 3.0 < alarm_after < 15.0
    # Healthy turbines: decided on, never alarmed; nothing on the bus was malformed.
    rows = [line for line in daemon.lines if line.get("event") in ("row_rejected",
                                                                    "message_rejected")]
    assert rows == []
    assert daemon.events("mqtt_subscribed"), daemon.lines
    assert "late ticks" in sim_out


# -- abuse on the bus (issue 13, items 1 and 6) -------------------------------------------
# Each test runs `edged run` against a real broker with abuse published among (or before)
# a simulated farm with a fault, and fails unless the fault raises its alarm.

ABUSE_CONFIG = """\
device:
  id: e2e-gateway
log: {{level: info, format: json, stats_interval_s: 1}}
sources:
  bus:
    type: mqtt
    broker: {{host: 127.0.0.1, port: {port}, reconnect_min_s: 0.2}}
    topics: ["turbines/{{turbine}}/raw"]
pipelines:
  turbines:
    inputs: [bus]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx}}
    interval_s: 0.5
    max_turbines: {max_turbines}
    stale_after_s: 1.0
actuators:
  turbine-bus:
    type: mqtt
    inputs: [turbines]
    broker: {{host: 127.0.0.1, port: {port}, reconnect_min_s: 0.2}}
    alarm_topic: "edged/{{device}}/alarms/{{turbine}}"
    command_topic: "turbines/{{turbine}}/command"
    events: [alarm, clear, sensor_stale, sensor_recovered]
    debounce: 2
"""
NESTED = b'{"a":' * 2000 + b"1" + b"}" * 2000  # 12 KB; RecursionError in json.loads


def ghost_row() -> bytes:
    from edged.windturbine.simulator import WindFarm

    farm = WindFarm(turbines=1, rate_hz=20, seed=1)
    return ",".join(farm.records(farm.ticks(1), 1_700_000_000.0)[0]).encode()


def counter(daemon: EdgedProcess, name: str) -> int:
    """The newest `stats` line's total of counter ``name`` over its labels."""
    stats = daemon.events("stats")
    counters = stats[-1]["counters"] if stats else {}
    return sum(v for k, v in counters.items() if k == name or k.startswith(name + "{"))


@contextlib.asynccontextmanager
async def daemon_on_bus(mosquitto, tmp_path, config_text: str, identifier: str):
    """A running `edged run` of ``config_text`` and a client on the bus that records what
    the daemon publishes (``bus.seen``) and publishes what a test sends (``bus``); the
    daemon must exit 0 when stopped."""
    config = tmp_path / "edged.yaml"
    config.write_text(config_text)
    seen: list[tuple[str, dict]] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=identifier) as bus:
        await bus.subscribe([("edged/#", 1), ("turbines/+/command", 1)])

        async def receive() -> None:
            async for message in bus.messages:
                seen.append((message.topic.value, json.loads(message.payload)))

        receiver = asyncio.create_task(receive())
        daemon = EdgedProcess(config, cwd=ROOT)
        try:
            await eventually(lambda: daemon.events("graph_started")
                             or daemon.proc.poll() is not None, 30)
            assert daemon.proc.poll() is None, daemon.lines
            bus.seen = seen  # type: ignore[attr-defined]
            yield daemon, bus
        finally:
            code = await asyncio.to_thread(daemon.stop)
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
    assert code == 0, daemon.lines[-20:]


def abused_daemon(mosquitto, tmp_path, max_turbines: int = 10_000):
    """The abuse tests' daemon (ABUSE_CONFIG) on the bus: see :func:`daemon_on_bus`."""
    return daemon_on_bus(mosquitto, tmp_path, ABUSE_CONFIG.format(
        port=mosquitto.port, max_turbines=max_turbines), "e2e-abuse")


@contextlib.asynccontextmanager
async def farm(mosquitto, bus, faulty: str, *args: str):
    """A 3-turbine farm published on the bus (25 s of history, then live rows with a
    fault on ``faulty`` from 3 s), entered once the daemon has commanded ``faulty``."""
    simulator = simulate(mosquitto.address, "--turbines", "3", "--rate", "20", "--seed", "3",
                         "--history", "25", "--duration", "60", *args)
    try:
        await eventually(lambda: any(t == f"turbines/{faulty}/command" for t, _ in bus.seen),
                         30)
        yield
    finally:
        simulator.send_signal(signal.SIGTERM)
        await asyncio.to_thread(simulator.communicate, None, 20)


async def test_deeply_nested_json_among_the_rows_never_stops_detection(mosquitto, tmp_path):
    """Item 1: 12 KB of nesting, 100 a second on a turbine topic among the farm's rows.
    It used to kill the source (RecursionError) and restart it with growing backoff."""
    async with abused_daemon(mosquitto, tmp_path) as (daemon, bus):
        async def flood() -> None:
            while True:
                await bus.publish("turbines/turbine-1/raw", NESTED)
                await asyncio.sleep(0.01)

        flooder = asyncio.create_task(flood())
        try:
            await asyncio.sleep(1.0)
            async with farm(mosquitto, bus, "turbine-2", "--faults", "2:vibration@3-60"):
                decided = counter(daemon, "decisions")
                await asyncio.sleep(3.0)  # decisions go on while the flood does
                assert counter(daemon, "decisions") >= decided + 3 * 2 * 1, "decisions stalled"
        finally:
            flooder.cancel()
        assert counter(daemon, "messages_rejected") > 100
    assert not daemon.events("source_failed"), daemon.events("source_failed")[:1]
    deep = [e for e in daemon.events("message_rejected") if e["reason"] == "too_deep"]
    assert deep and len(deep) <= 10, "a rejection is logged at a limited rate"
    alarms = [m for t, m in bus.seen if t.startswith("edged/") and m["event"] == "alarm"]
    assert [(m["turbine"], m["primary"]) for m in alarms] == [("turbine-2", "vibration")]


async def test_a_flood_of_ghost_ids_cannot_keep_a_real_turbine_out(mosquitto, tmp_path):
    """Item 6: 200 one-row ghosts fill all 50 slots and keep coming, and 30 KB ids come
    from the topic; then three real turbines arrive, one with a voltage fault. Ghosts
    used to hold every slot for good (too_many_turbines for the real ones, no alarm) and
    each raised a sensor_stale on the bus."""
    row = ghost_row()
    async with abused_daemon(mosquitto, tmp_path, max_turbines=50) as (daemon, bus):
        for i in range(200):
            await bus.publish(f"turbines/ghost-{i}/raw", row)
        for i in range(20):
            await bus.publish(f"turbines/{'x' * 30_000}{i}/raw", row)

        async def trickle() -> None:  # ghosts keep coming, 20 new ids a second
            for i in range(200, 100_000):
                await bus.publish(f"turbines/ghost-{i}/raw", row)
                await asyncio.sleep(0.05)

        await asyncio.sleep(1.5)  # the first ghosts are stale now
        flooder = asyncio.create_task(trickle())
        try:
            async with farm(mosquitto, bus, "turbine-2", "--faults", "2:voltage@3-60"):
                await asyncio.sleep(1.5)  # a stats line after the alarm
        finally:
            flooder.cancel()
        assert counter(daemon, "turbines_evicted") >= 3
    alarms = [m for t, m in bus.seen if t.startswith("edged/") and m["event"] == "alarm"]
    assert [(m["turbine"], m["primary"]) for m in alarms] == [("turbine-2", "voltage")]
    # Ghosts never filled a history: not one sensor event about them on the bus.
    sensor = [m for t, m in bus.seen if m.get("event", "").startswith("sensor_")]
    assert not [m for m in sensor if m["turbine"].startswith("ghost-")], sensor[:3]
    # Long ids: refused from the topic, and never written out whole.
    refused = [e for e in daemon.events("message_rejected") if e["reason"] == "bad_turbine_id"]
    assert refused and max(len(json.dumps(line)) for line in daemon.lines) < 4096
