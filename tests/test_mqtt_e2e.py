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

from edged.testing import EdgedProcess, eventually

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
    config = tmp_path / "edged.yaml"
    config.write_text(CONFIG.format(port=mosquitto.port))
    seen: list[tuple[str, dict]] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="e2e-turbines") as sub:
        await sub.subscribe([("edged/#", 1), ("turbines/+/command", 1)])

        async def receive() -> None:
            async for message in sub.messages:
                seen.append((message.topic.value, json.loads(message.payload)))

        receiver = asyncio.create_task(receive())
        daemon = EdgedProcess(config, cwd=ROOT)
        simulator = None
        try:
            await eventually(lambda: daemon.events("graph_started")
                             or daemon.proc.poll() is not None, 30)
            assert daemon.proc.poll() is None, daemon.lines
            started = time.monotonic()
            # 25 s of history fills the 500-row buffers at once; the fault starts 3 s in.
            simulator = simulate(mosquitto.address, "--turbines", "5", "--rate", "20",
                                 "--seed", "3", "--history", "25",
                                 "--faults", "2:vibration@3-60", "--duration", "30")

            def commanded() -> bool:
                return any(topic == f"turbines/{FAULTY}/command" for topic, _ in seen)

            await eventually(commanded, 25)
            alarm_after = time.monotonic() - started
            await asyncio.sleep(2.0)  # room for a wrong alarm on a healthy turbine
        finally:
            if simulator is not None:
                simulator.send_signal(signal.SIGTERM)
                sim_out, sim_err = await asyncio.to_thread(simulator.communicate, None, 20)
            code = await asyncio.to_thread(daemon.stop)
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver

    assert simulator.returncode == 0, sim_err
    assert code == 0, daemon.lines[-20:]
    alarms = [(t, m) for t, m in seen if t.startswith("edged/")]
    commands = [(t, m) for t, m in seen if t.endswith("/command")]
    # The faulty turbine: an alarm naming vibration, then the brake command for it.
    assert [t for t, _ in alarms] == [f"edged/e2e-gateway/alarms/{FAULTY}"], seen
    alarm = alarms[0][1]
    assert alarm["event"] == "alarm" and alarm["turbine"] == FAULTY
    assert alarm["primary"] == "vibration"
    assert commands == [(f"turbines/{FAULTY}/command", {
        "command": "brake", "device": "e2e-gateway", "turbine": FAULTY,
        "reason": ["vibration"], "time": alarm["time"], "alarm_id": alarm["id"]})]
    # 3 s into the live rows, plus two anomalous decisions half a second apart.
    assert 3.0 < alarm_after < 15.0
    # Healthy turbines: decided on, never alarmed; nothing on the bus was malformed.
    rows = [line for line in daemon.lines if line.get("event") in ("row_rejected",
                                                                    "message_rejected")]
    assert rows == []
    assert daemon.events("mqtt_subscribed"), daemon.lines
    assert "late ticks" in sim_out
