"""``edged simulate`` as a subprocess against a real broker, read back by a subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import aiomqtt
import pytest

from edged.builtin.mqtt.formats import MessageParser, TopicRouter, make_decoder
from edged.windturbine import layout

ROOT = Path(__file__).resolve().parents[3]
VOLTAGE = layout.INPUTS.index("voltage")
QX = layout.INPUTS.index("qx")


def simulate(broker, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edged", "--log-format", "json", "simulate",
         "--broker", broker.address, *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 20) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


class Rows:
    """Every row the subscriber saw, parsed the way the mqtt source parses them."""

    def __init__(self, layout_name: str = "dataset23", topics=("turbines/{turbine}/raw",),
                 turbine: str | None = None) -> None:
        decoder = make_decoder(layout_name, layout.INPUTS)
        self.parser = MessageParser(decoder, TopicRouter(topics), turbine=turbine)
        self.messages = 0
        self.payloads: list[bytes] = []
        self.by_turbine: dict[str, list[list[float]]] = defaultdict(list)
        self.arrival: dict[str, list[float]] = defaultdict(list)
        self.rejected: list[str] = []

    def add(self, topic: str, payload: bytes) -> None:
        turbines, values, rejected = [], [], []
        self.parser.parse(topic, payload, turbines, values, rejected)
        self.messages += 1
        self.payloads.append(payload)
        self.rejected += [e.reason for e in rejected]
        now = time.monotonic()
        for turbine, row in zip(turbines, values, strict=True):
            self.by_turbine[turbine].append(row)
            self.arrival[turbine].append(now)


@contextlib.asynccontextmanager
async def subscriber(broker, rows: Rows, topic: str = "turbines/#"):
    async with aiomqtt.Client(broker.host, broker.port, identifier="test-sub") as client:
        await client.subscribe(topic)

        async def receive() -> None:
            async for message in client.messages:
                rows.add(message.topic.value, message.payload)

        task = asyncio.create_task(receive())
        try:
            yield client
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def wait_exit(proc: subprocess.Popen, seconds: float = 20) -> tuple[int, str, str]:
    return await asyncio.to_thread(finish, proc, seconds)


async def eventually(predicate, seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"still not true after {seconds} s")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(("fmt", "layout_name"), [("json", "dataset23"),
                                                    ("csv", "dataset23"),
                                                    ("json", "successor20"),
                                                    ("csv", "successor20")])
async def test_publishes_rate_times_turbines_messages_a_second(mosquitto, fmt, layout_name):
    rows = Rows(layout_name)
    async with subscriber(mosquitto, rows):
        proc = simulate(mosquitto, "--turbines", "3", "--rate", "20", "--duration", "2",
                        "--format", fmt, "--layout", layout_name, "--seed", "1")
        code, out, err = await wait_exit(proc)
        await asyncio.sleep(0.2)
    assert code == 0, err
    assert sorted(rows.by_turbine) == ["turbine-0", "turbine-1", "turbine-2"]
    assert rows.rejected == []
    for turbine, values in rows.by_turbine.items():
        assert 36 <= len(values) <= 42, (turbine, len(values))  # 20 Hz for 2 s
        healthy = [v[VOLTAGE] for v in values]
        assert 0 < sum(healthy) / len(healthy) < 150, turbine
    assert rows.messages == sum(len(v) for v in rows.by_turbine.values())
    assert "published" in out and "late ticks" in out
    if fmt == "json":
        json.loads(rows.payloads[0])  # each message is plain JSON
    else:
        width = len(layout.DATASET_COLUMNS if layout_name == "dataset23"
                    else layout.SUCCESSOR_COLUMNS)
        assert len(rows.payloads[0].split(b",")) == width


async def test_a_fault_injected_on_the_control_topic_shows_in_the_values(mosquitto):
    rows = Rows()
    async with subscriber(mosquitto, rows) as client:
        proc = simulate(mosquitto, "--turbines", "2", "--rate", "20", "--duration", "4")
        await eventually(lambda: len(rows.by_turbine["turbine-1"]) >= 10)
        before = len(rows.by_turbine["turbine-1"])
        await client.publish("simulate/control", json.dumps(
            {"turbine": 1, "kind": "voltage", "duration": 10}), qos=1)
        await asyncio.sleep(1.0)
        injected_until = len(rows.by_turbine["turbine-1"])
        await client.publish("simulate/control", json.dumps(
            {"turbine": "turbine-1", "clear": True}), qos=1)
        await client.publish("simulate/control", b"{nonsense", qos=1)
        # Nested 2,000 deep: refused, where json.loads' RecursionError ended the simulator.
        await client.publish("simulate/control", b'{"a":' * 2000 + b"1" + b"}" * 2000,
                             qos=1)
        code, _, err = await wait_exit(proc)
        await asyncio.sleep(0.2)
    assert code == 0, err
    voltages = [v[VOLTAGE] for v in rows.by_turbine["turbine-1"]]
    assert all(v < 200 for v in voltages[:before])
    # From the first row the command reached, until it was cleared.
    first = next(i for i, v in enumerate(voltages) if i >= before and v >= 200)
    assert first - before < 10  # within half a second
    faulty = voltages[first:injected_until]
    assert len(faulty) >= 10
    assert all(v == int(v) and 0 <= v < 10000 for v in faulty)
    assert sum(faulty) / len(faulty) > 1000  # nothing like a healthy ~48 mV
    assert all(v < 200 for v in voltages[-10:])  # cleared
    assert all(v[VOLTAGE] < 200 for v in rows.by_turbine["turbine-0"])
    assert '"fault_injected"' in err and '"fault_cleared"' in err
    assert err.count('"simulate_control_rejected"') == 2


async def test_scheduled_faults_batches_and_history(mosquitto):
    rows = Rows()
    async with subscriber(mosquitto, rows):
        started = time.time()
        proc = simulate(mosquitto, "--turbines", "2", "--rate", "20", "--duration", "2",
                        "--faults", "0:vibration@1-5", "--batch", "5", "--history", "3",
                        "--history-batch", "30", "--format", "csv")
        code, out, err = await wait_exit(proc)
        await asyncio.sleep(0.2)
    assert code == 0, err
    history, live = 60, 40
    for turbine in ("turbine-0", "turbine-1"):
        assert history + live - 5 <= len(rows.by_turbine[turbine]) <= history + live
    assert rows.messages <= 2 * (2 + 8 + 1)  # 60 history rows in 30s, live rows in 5s
    # History rows are stamped in the past: 3 s before the live start.
    first = rows.payloads[0].split(b"\n")[0].split(b",")[layout.DATASET_COLUMNS.index(
        "eventTime")]
    assert datetime.fromisoformat(first.decode()).timestamp() < started - 2
    qx = [v[QX] for v in rows.by_turbine["turbine-0"]]
    live_qx = qx[history:]
    assert all(abs(q) < 1 for q in qx[:history] + live_qx[:15])  # healthy until 1 s live
    assert sum(q > 1 for q in live_qx[25:]) >= 10  # vibration: uniform in [0, 100)
    assert all(abs(v[QX]) < 1 for v in rows.by_turbine["turbine-1"])
    assert "120 of them history" in out


async def test_sigterm_stops_it_cleanly_with_a_summary(mosquitto):
    proc = simulate(mosquitto, "--turbines", "2")
    await asyncio.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    code, out, err = await wait_exit(proc, seconds=10)
    assert code == 0, err
    assert out.startswith("published ") and out.count("\n") == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--faults", "2:vibration@5"], "--faults"),
    (["--faults", "7:voltage@1-2"], "turbine 7 does not exist"),
    (["--broker", "not a host:99"], "--broker"),
    (["--broker", "host:70000"], "port"),
    (["--rate", "0"], "--rate"),
    (["--topic", "turbines/+/raw"], "wildcards"),
    (["--topic", "turbine/raw", "--layout", "successor20"], "indistinguishable"),
])
def test_bad_arguments_exit_64(args, message):
    result = subprocess.run([sys.executable, "-m", "edged", "simulate", "--broker",
                             "127.0.0.1:1883", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 64, result.stderr
    assert message in result.stderr


def test_an_unreachable_broker_exits_69(mosquitto):
    mosquitto.stop()
    result = subprocess.run([sys.executable, "-m", "edged", "simulate", "--broker",
                             mosquitto.address], cwd=ROOT, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 69
    assert "cannot connect" in result.stderr


async def test_it_rides_out_a_broker_restart(mosquitto):
    proc = simulate(mosquitto, "--turbines", "2", "--duration", "4.5", "--qos", "1")
    await asyncio.sleep(1.0)
    await asyncio.to_thread(mosquitto.restart, 1.0)
    rows = Rows()
    async with subscriber(mosquitto, rows):
        code, out, err = await wait_exit(proc)
    assert code == 0, err
    assert "reconnects 1" in out
    assert '"simulate_reconnected"' in err
    assert len(rows.by_turbine["turbine-0"]) >= 20  # publishing again after the restart
