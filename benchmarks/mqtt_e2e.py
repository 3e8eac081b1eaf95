"""End to end through a real broker: ``edged simulate`` -> mosquitto -> ``edged run`` ->
alarm -> a subscriber, all on this machine.

    .venv/bin/python benchmarks/mqtt_e2e.py [--runs 100:1:0.5 1000:10:0.5 ...]

A run ``N:K:I``: N turbines at 20 Hz publish on ``turbines/<id>/raw`` (CSV, QoS 0; K rows
per message), the daemon decides every turbine every I seconds (0.5: twice a second) and
its ``mqtt`` actuator publishes alarms (QoS 1). Reported: readings/s
received, readings lost (published minus accepted, over the whole run), decisions/s, the
latency from the publish of the newest reading a decision used to the arrival of its alarm
at a subscriber (p50/p99), and the daemon's RSS and CPU.

Latency is exact: probe turbines are published by this script, which records when each of
their rows was published; an alarm carries ``detail.rows``, the count of rows its decision
had seen, which names that newest row. The probes inject short faults in turn so that
alarms keep coming.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edged.windturbine.simulator import Fault, WindFarm  # noqa: E402
from tests.support import Mosquitto  # noqa: E402

EDGED = [sys.executable, "-m", "edged"]
RATE = 20.0
HISTORY_S = 25.0
PROBES = 40
FAULT_EVERY_S = 12.0
CONFIG = """
log: {{level: info, format: json, stats_interval_s: 1}}
sources:
  bus:
    type: mqtt
    broker: {{host: 127.0.0.1, port: {port}}}
    topics: ["turbines/{{turbine}}/raw"]
    format: csv
    layout: dataset23
pipelines:
  turbines:
    inputs: [bus]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx}}
    interval_s: {interval}
    max_turbines: 100000
    stale_after_s: 30
actuators:
  bus-alarms:
    type: mqtt
    inputs: [turbines]
    broker: {{host: 127.0.0.1, port: {port}}}
    alarm_topic: "bench/alarms/{{turbine}}"
    command_topic: "bench/commands/{{turbine}}"
    events: [alarm]
    debounce: 1
    clear_after: 2
    cooldown_s: 0
"""


class Daemon:
    """`edged run` in a subprocess; its JSON log lines are read in a thread."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen([*EDGED, "run", "-c", str(config)], cwd=ROOT,
                                        stderr=subprocess.PIPE, text=True)
        self.stats: dict = {}
        self.started = threading.Event()
        self.errors: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == "stats":
                self.stats = entry
            elif entry.get("event") == "graph_started":
                self.started.set()
            elif entry.get("level") in ("error", "critical"):
                self.errors.append(line.strip())

    def counter(self, name: str) -> int:
        return sum(v for k, v in self.stats.get("counters", {}).items()
                   if k == name or k.startswith(name + "{"))

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mb(self) -> tuple[float, float]:
        status = dict(line.split(":", 1) for line in
                      Path(f"/proc/{self.process.pid}/status").read_text().splitlines())
        return (int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class Probes:
    """Probe turbines published by this script, remembering each row's publish time."""

    def __init__(self, broker: Mosquitto, count: int) -> None:
        faults = [Fault(i, ("vibration", "rotation", "voltage")[i % 3], start, start + 1.0)
                  for i in range(count)
                  for start in np.arange(HISTORY_S + 5 + i * FAULT_EVERY_S / count, 1e4,
                                         FAULT_EVERY_S)[:30]]
        self.farm = WindFarm(turbines=count, rate_hz=RATE, seed=99, faults=faults)
        self.ids = [f"probe-{i}" for i in range(count)]
        self.published: list[list[float]] = [[] for _ in range(count)]  # per probe, per row
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-probes")
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _publish(self, rows: np.ndarray, wall: float) -> None:
        for i, record in enumerate(self.farm.records(rows, wall)):
            self.published[i].append(time.time())
            self.client.publish(f"turbines/{self.ids[i]}/raw", ",".join(record))

    def _run(self) -> None:
        for _ in range(int(HISTORY_S * RATE)):
            self._publish(self.farm.tick(), time.time())
        start, ticks = time.monotonic(), 0
        while not self.stop.is_set():
            self._publish(self.farm.tick(), time.time())
            ticks += 1
            time.sleep(max(0.0, start + ticks / RATE - time.monotonic()))

    def rows(self) -> int:
        return sum(len(p) for p in self.published)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.client.loop_stop()
        self.client.disconnect()


class AlarmListener:
    def __init__(self, broker: Mosquitto) -> None:
        self.alarms: list[tuple[float, dict]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-alarms")
        self.client.on_message = lambda c, u, m: self.alarms.append(
            (time.time(), json.loads(m.payload)))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("bench/alarms/#", qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def scenario(turbines: int, batch: int, interval: float, measure_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as broker:
        config = Path(tmp) / "edged.yaml"
        config.write_text(CONFIG.format(port=broker.port, interval=interval))
        daemon = Daemon(config)
        if not daemon.started.wait(30):
            daemon.stop()
            raise RuntimeError(f"edged did not start: {daemon.errors}")
        listener = AlarmListener(broker)
        probes = Probes(broker, PROBES)
        bulk = turbines - PROBES
        simulate = subprocess.Popen(
            [*EDGED, "simulate", "--broker", broker.address, "--turbines", str(bulk),
             "--rate", str(RATE), "--format", "csv", "--batch", str(batch),
             "--history", str(HISTORY_S), "--duration", str(measure_s + 15),
             "--control-topic", "", "--seed", "3"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        probes.thread.start()
        time.sleep(10)  # the history is in; the first decisions have run
        rows0, decisions0 = daemon.counter("rows_accepted"), daemon.counter("decisions")
        cpu0, t0 = daemon.cpu_seconds(), time.time()
        time.sleep(measure_s)
        rows1, decisions1 = daemon.counter("rows_accepted"), daemon.counter("decisions")
        cpu1, t1 = daemon.cpu_seconds(), time.time()
        rss, peak = daemon.memory_mb()
        summary = simulate.communicate(timeout=60)[0]
        probes.close()
        time.sleep(3)  # let the last rows drain into the counters
        published = _published_rows(summary) + probes.rows()
        accepted = daemon.counter("rows_accepted")
        dropped = daemon.counter("mqtt_messages_dropped") + daemon.counter("batches_dropped")
        listener.close()
        daemon.stop()
        latencies, deciding = _latencies(listener.alarms, probes, t0, t1)
    return {
        "turbines": turbines, "batch": batch, "interval": interval,
        "readings_per_s": (rows1 - rows0) / (t1 - t0),
        "lost": published - accepted, "dropped_counted": dropped,
        "decisions_per_s": (decisions1 - decisions0) / (t1 - t0),
        "p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies else float("nan"),
        "decide_p99_ms": float(np.percentile(deciding, 99)) if deciding else float("nan"),
        "alarms": len(latencies), "rss_mb": rss, "peak_rss_mb": peak,
        "cpu": (cpu1 - cpu0) / (t1 - t0),
    }


def _published_rows(summary: str) -> int:
    # "published M messages (R rows, H of them history) ..."
    return int(summary.split("(", 1)[1].split(maxsplit=1)[0])


def _latencies(alarms, probes: Probes, t0: float, t1: float) -> tuple[list, list]:
    """Per probe alarm: publish of its newest reading -> arrival of the alarm, and the
    part of it up to the decision (the alarm's own timestamp), in ms."""
    out, deciding = [], []
    for arrived, alarm in alarms:
        turbine = alarm.get("turbine", "")
        if not turbine.startswith("probe-") or not t0 <= arrived <= t1:
            continue
        rows = alarm["detail"]["rows"]
        sent = probes.published[int(turbine.split("-")[1])]
        if 0 < rows <= len(sent):
            out.append((arrived - sent[rows - 1]) * 1000)
            deciding.append((alarm["timestamp"] - sent[rows - 1]) * 1000)
    return out, deciding


# (title, key, width, format) of each printed column
COLUMNS = [
    ("turbines", "turbines", 8, "d"), ("rows/msg", "batch", 8, "d"),
    ("every s", "interval", 7, "g"), ("readings/s", "readings_per_s", 10, ".0f"),
    ("lost", "lost", 6, "d"), ("decisions/s", "decisions_per_s", 11, ".0f"),
    ("p50 ms", "p50_ms", 7, ".1f"), ("p99 ms", "p99_ms", 7, ".1f"),
    ("p99 to decision", "decide_p99_ms", 15, ".1f"), ("alarms", "alarms", 6, "d"),
    ("RSS MB", "rss_mb", 7, ".1f"), ("peak MB", "peak_rss_mb", 7, ".1f"),
    ("CPU", "cpu", 5, ".0%"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", metavar="N:K:I",
                        default=["100:1:0.5", "500:1:0.5", "1000:1:0.5", "1000:10:0.5",
                                 "1000:1:1"],
                        help="turbines : rows per message : decision interval (s)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window")
    args = parser.parse_args()
    runs = [(int(n), int(k), float(i)) for n, k, i in (r.split(":") for r in args.runs)]
    print(" ".join(f"{title:>{width}}" for title, _, width, _ in COLUMNS))
    for turbines, batch, interval in runs:
        r = scenario(turbines, batch, interval, args.seconds)
        print(" ".join(f"{r[key]:>{width}{fmt}}" for _, key, width, fmt in COLUMNS),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
