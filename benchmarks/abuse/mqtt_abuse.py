"""Issue 13, items 1 and 6: abuse on the turbine bus, scaled down.

    .venv/bin/python benchmarks/abuse/mqtt_abuse.py [--tree PATH] [--duration 45]

Two runs of a real ``edged run`` (of the tree at ``--tree``: its checkout, by default)
reading a real mosquitto broker, with the mqtt actuator publishing alarms and commands:

* ``nested``: a 5-turbine farm (``edged simulate``, 25 s of history, a vibration fault on
  turbine-2 from 10 s) while 12 KB messages nested 2,000 deep (``{"a":`` x2000) arrive on
  a turbine topic, 100 a second, for ``--duration`` seconds. Figures: decisions a minute
  during the flood (a healthy run makes 5 turbines x 2 a second = 600), whether the
  fault was commanded and when, source failures, messages rejected, peak RSS.
* ``ghosts``: ``max_turbines`` 1,000 (a tenth of the default); 5,000 one-row ghost ids
  then 200 ids of 30 KB on the topic; once the ghosts are stale (6 s), a 3-turbine farm
  with a voltage fault on turbine-2 from 3 s. Figures: whether the fault was commanded,
  sensor events on the bus, rows refused as too_many_turbines, RSS and log bytes added
  by the long ids.

* ``parse_us``: what MessageParser.parse costs a message (the hot path: 20,000 messages
  a second), best of 5, in microseconds: one row as JSON and as CSV, a batch of 50 JSON
  objects, a batch of 600 JSON arrays.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

HERE = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(HERE))

from tests.support import Mosquitto  # noqa: E402  (this checkout's, whatever --tree is)

NESTED = b'{"a":' * 2000 + b"1" + b"}" * 2000


def config(port: int, max_turbines: int) -> str:
    return f"""\
device: {{id: bench-abuse}}
log: {{level: info, format: json, stats_interval_s: 1}}
sources:
  bus:
    type: mqtt
    broker: {{host: 127.0.0.1, port: {port}}}
    topics: ["turbines/{{turbine}}/raw"]
pipelines:
  turbines:
    inputs: [bus]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx}}
    interval_s: 0.5
    max_turbines: {max_turbines}
actuators:
  turbine-bus:
    type: mqtt
    inputs: [turbines]
    broker: {{host: 127.0.0.1, port: {port}}}
    events: [alarm, clear, sensor_stale, sensor_recovered]
    debounce: 2
"""


class Daemon:
    """``edged run`` of ``tree``, its JSON log kept in a file and read back."""

    def __init__(self, tree: Path, work: Path, text: str) -> None:
        path = work / "edged.yaml"
        path.write_text(text)
        self.log_path = work / "edged.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edged", "run", "-c", str(path)], cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL,
            stderr=self._log)
        self.peak_rss = 0

    def lines(self) -> list[dict]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def events(self, name: str) -> list[dict]:
        return [line for line in self.lines() if line.get("event") == name]

    def counter(self, name: str, **labels: str) -> int:
        stats = self.events("stats")
        counters = stats[-1]["counters"] if stats else {}
        return sum(v for k, v in counters.items() if (k == name or k.startswith(name + "{"))
                   and all(f"{a}={b}" in k for a, b in labels.items()))

    def rss_mb(self) -> float:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                    self.peak_rss = max(self.peak_rss, rss)
                    return rss
        return 0.0

    async def ready(self) -> None:
        deadline = time.monotonic() + 60
        while not self.events("graph_started"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"edged did not start: {self.lines()[-5:]}")
            await asyncio.sleep(0.2)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


def simulate(tree: Path, broker: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edged", "simulate", "--broker", broker, "--seed", "3",
         "--rate", "20", "--history", "25", *args], cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)


class Bus:
    """The test bench's own client: publishes the abuse, records what edged publishes."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.seen: list[tuple[str, dict]] = []
        self.started = time.monotonic()
        self.first_command: float | None = None

    async def receive(self) -> None:
        async for message in self.client.messages:
            topic = message.topic.value
            if topic.endswith("/command") and self.first_command is None:
                self.first_command = time.monotonic() - self.started
            with contextlib.suppress(ValueError):
                self.seen.append((topic, json.loads(message.payload)))

    def commanded(self, turbine: str) -> bool:
        return any(t == f"turbines/{turbine}/command" for t, _ in self.seen)

    def sensor_events(self) -> int:
        return sum(m.get("event", "").startswith("sensor_") for _, m in self.seen)


@contextlib.asynccontextmanager
async def bench(mosquitto: Mosquitto, tree: Path, work: Path, max_turbines: int):
    daemon = Daemon(tree, work, config(mosquitto.port, max_turbines))
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="bench") as client:
        await client.subscribe([("edged/#", 0), ("turbines/+/command", 0)])
        bus = Bus(client)
        receiver = asyncio.create_task(bus.receive())

        async def sample() -> None:
            while True:
                daemon.rss_mb()
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        try:
            await daemon.ready()
            yield daemon, bus
        finally:
            sampler.cancel()
            receiver.cancel()
            daemon.exit_code = await asyncio.to_thread(daemon.stop)  # type: ignore[attr-defined]


async def nested(mosquitto: Mosquitto, tree: Path, work: Path, duration: float) -> dict:
    async with bench(mosquitto, tree, work, 10_000) as (daemon, bus):
        rss_before = daemon.rss_mb()
        sim = simulate(tree, mosquitto.address, "--turbines", "5", "--faults",
                       "2:vibration@10-600", "--duration", str(duration + 5))
        await asyncio.sleep(2)  # the history is in; the flood starts among live rows
        decided, bus.started = daemon.counter("decisions"), time.monotonic()
        end = time.monotonic() + duration
        while time.monotonic() < end:
            await bus.client.publish("turbines/turbine-1/raw", NESTED)
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.5)  # the last stats line
        decisions = daemon.counter("decisions") - decided
        sim.send_signal(signal.SIGTERM)
        sim.wait(20)
        result = {
            "seconds": duration,
            "decisions_per_min": round(decisions / duration * 60),
            "fault_commanded": bus.commanded("turbine-2"),
            "command_after_s": None if bus.first_command is None
            else round(bus.first_command, 1),
            "source_failures": len(daemon.events("source_failed")),
            "messages_rejected": daemon.counter("messages_rejected"),
            "rss_before_mb": round(rss_before),
        }
    result |= {"rss_peak_mb": round(daemon.peak_rss), "exit_code": daemon.exit_code}
    return result


async def ghosts(mosquitto: Mosquitto, tree: Path, work: Path) -> dict:
    async with bench(mosquitto, tree, work, 1000) as (daemon, bus):
        from edged.windturbine.simulator import WindFarm

        farm = WindFarm(turbines=1, rate_hz=20, seed=1)
        row = ",".join(farm.records(farm.ticks(1), 1_700_000_000.0)[0]).encode()
        for i in range(5000):
            await bus.client.publish(f"turbines/ghost-{i}/raw", row)
        await asyncio.sleep(2)
        rss, log_bytes = daemon.rss_mb(), daemon.log_path.stat().st_size
        for i in range(200):
            await bus.client.publish(f"turbines/{'x' * 30_000}{i}/raw", row)
        await asyncio.sleep(4)  # the ghosts are stale now (stale_after_s 5)
        long_rss, long_log = daemon.rss_mb() - rss, daemon.log_path.stat().st_size - log_bytes
        bus.started = time.monotonic()
        sim = simulate(tree, mosquitto.address, "--turbines", "3", "--faults",
                       "2:voltage@3-600", "--duration", "40")
        deadline = time.monotonic() + 30
        while not bus.commanded("turbine-2") and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)
        sim.send_signal(signal.SIGTERM)
        sim.wait(20)
        result = {
            "ghosts": 5000, "max_turbines": 1000,
            "fault_commanded": bus.commanded("turbine-2"),
            "command_after_s": None if bus.first_command is None
            else round(bus.first_command, 1),
            "too_many_turbines_rows": daemon.counter("rows_rejected",
                                                     reason="too_many_turbines"),
            "turbines_evicted": daemon.counter("turbines_evicted"),
            "sensor_events_on_bus": bus.sensor_events(),
            "long_ids_rss_mb": round(long_rss, 1),
            "long_ids_log_kb": round(long_log / 1024),
        }
    result |= {"rss_peak_mb": round(daemon.peak_rss), "exit_code": daemon.exit_code}
    return result


PARSE_COST = r"""
import json, sys, timeit
from edged.builtin.mqtt.formats import MessageParser, TopicRouter, make_decoder
from edged.windturbine import layout
from edged.windturbine.simulator import WindFarm

farm = WindFarm(turbines=1, rate_hz=20, seed=5)
records = farm.records(farm.ticks(600), 1_700_000_000.0)
text = {"nanoId", "turbineId", "eventTime"}
def row(r): return {c: v if c in text else float(v) for c, v in zip(layout.DATASET_COLUMNS, r)}
def fields(r): return [v if c in text else float(v) for c, v in zip(layout.DATASET_COLUMNS, r)]
parser = MessageParser(make_decoder("dataset23", layout.INPUTS),
                       TopicRouter(["turbines/{turbine}/raw"]), max_bytes=1 << 20)
messages = {"json_row": json.dumps(row(records[0])).encode(),
            "csv_row": ",".join(records[0]).encode(),
            "json_batch_50": json.dumps([row(r) for r in records[:50]]).encode(),
            "json_arrays_600": json.dumps([fields(r) for r in records]).encode()}
costs = {}
for name, payload in messages.items():
    def once(payload=payload):
        parser.parse("turbines/t1/raw", payload, [], [], [])
    number = 20000 if "row" in name else 100
    costs[name] = round(min(timeit.repeat(once, number=number, repeat=5)) / number * 1e6, 2)
print(json.dumps(costs))
"""


def parse_costs(tree: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PARSE_COST], cwd=tree, check=True,
                         env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                         text=True)
    return json.loads(out.stdout)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=HERE)
    parser.add_argument("--duration", type=float, default=45.0)
    args = parser.parse_args()
    tree = args.tree.resolve()
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as mosquitto:
        (Path(tmp) / "nested").mkdir()
        (Path(tmp) / "ghosts").mkdir()
        result = {"tree": str(tree), "parse_us": parse_costs(tree),
                  "nested": await nested(mosquitto, tree, Path(tmp) / "nested",
                                         args.duration),
                  "ghosts": await ghosts(mosquitto, tree, Path(tmp) / "ghosts")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
