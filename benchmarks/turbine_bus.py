"""A real ``edged run`` reading a real mosquitto, fed by ``edged simulate`` and by probe
turbines whose publish times are known, its alarms heard by a subscriber: the parts
``mqtt_e2e.py`` and ``lean.py`` share.

    run = Scenario(turbines=1000, batch=1, interval=0.5, measure_s=20).run()

Latency is exact: probe turbines are published by this process, which records when each
of their rows was published; an alarm carries ``detail.rows``, the count of rows its
decision had seen, which names that newest row. The probes inject short faults in turn
so that alarms keep coming.

``tree`` runs the daemon of another checkout (``python -m edged`` with ``PYTHONPATH`` and
the working directory set to it: imports come from there, the venv is this one), with the
environment its ``systemd/edged.service`` sets. ``pin`` runs the daemon on CPU 1 and
everything else (this process, the broker, the publisher) on CPU 0, with ``taskset``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edged.builtin.mqtt.simulate import Encoder  # noqa: E402
from edged.windturbine.simulator import Fault, WindFarm  # noqa: E402
from tests.support import Mosquitto  # noqa: E402

RATE = 20.0
HISTORY_S = 25.0
PROBES = 40
FAULT_EVERY_S = 12.0
DAEMON_CPU, REST_CPU = 1, 0
CONFIG = """
log: {{level: info, format: json, stats_interval_s: 1}}
sources:
  bus:
    type: mqtt
    broker: {{host: 127.0.0.1, port: {port}}}
    topics: ["turbines/{{turbine}}/raw"]
    format: {format}
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


def pinning() -> str | None:
    """Why processes cannot be pinned (None: they can)."""
    if shutil.which("taskset") is None:
        return "taskset is absent"
    if len(os.sched_getaffinity(0)) < 2 or not {DAEMON_CPU, REST_CPU} <= os.sched_getaffinity(0):
        return f"CPUs {REST_CPU} and {DAEMON_CPU} are not both available"
    return None


def unit_environment(tree: Path) -> dict[str, str]:
    """The Environment= settings of ``tree``'s systemd/edged.service."""
    env: dict[str, str] = {}
    unit = tree / "systemd" / "edged.service"
    if not unit.is_file():
        return env
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            for item in line.removeprefix("Environment=").split():
                name, _, value = item.partition("=")
                env[name] = value
    return env


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """utime + stime of each thread of ``pid``: ``main`` (edged's event loop) and
    ``thread <id>`` for the others (Python does not name its threads for the OS)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended meanwhile
        name = "main" if task.name == str(pid) else f"thread {task.name}"
        out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def process_memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines())
    return (int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024)


def memory_map_mb(pid: int) -> dict[str, float]:
    """Resident MB of ``pid`` by what is mapped: the heap, other anonymous memory (malloc's
    thread arenas, arrays large enough to be mapped alone, ONNX Runtime's arena, thread
    stacks) and each shared library or file, from /proc/PID/smaps."""
    out: dict[str, float] = {}
    name = "?"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:
            path = head[5].strip() if len(head) > 5 else ""
            name = _mapping_name(path)
        elif line.startswith("Rss:"):
            out[name] = out.get(name, 0.0) + int(line.split()[1]) / 1024
    return dict(sorted(out.items(), key=lambda item: -item[1]))


def _mapping_name(path: str) -> str:
    if path == "[heap]":
        return "[heap] (malloc's main arena: the event loop's objects)"
    if not path or path.startswith("[anon"):
        return "anonymous (thread arenas, large arrays, ORT)"
    if path.startswith("["):
        return path
    parts = Path(path).parts
    if "site-packages" in parts:
        return "site-packages/" + parts[parts.index("site-packages") + 1].split(".")[0]
    return Path(path).name


class Daemon:
    """``edged run`` of ``tree`` in a subprocess; its JSON log lines are read in a thread,
    each ``stats`` line kept with the time it arrived."""

    def __init__(self, config: Path, tree: Path = ROOT, cpu: int | None = None) -> None:
        path = os.pathsep.join(filter(None, (str(tree), os.environ.get("PYTHONPATH"))))
        env = {**os.environ, **unit_environment(tree), "PYTHONPATH": path}
        prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "edged", "run", "-c", str(config)], cwd=tree,
            env=env, stderr=subprocess.PIPE, text=True)
        self.pid = self.process.pid  # taskset execs: the same process
        self.stats: list[tuple[float, dict]] = []
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
                self.stats.append((time.time(), entry))
            elif entry.get("event") == "graph_started":
                self.started.set()
            elif entry.get("level") in ("error", "critical"):
                self.errors.append(line.strip())

    def counter(self, name: str, stats: dict | None = None) -> int:
        if stats is None:
            stats = self.stats[-1][1] if self.stats else {}
        return sum(v for k, v in stats.get("counters", {}).items()
                   if k == name or k.startswith(name + "{"))

    def rate(self, name: str, t0: float, t1: float) -> float:
        """``name`` per second between the stats lines that arrived nearest t0 and t1."""
        first = min(self.stats, key=lambda s: abs(s[0] - t0))
        last = min(self.stats, key=lambda s: abs(s[0] - t1))
        if last[0] <= first[0]:
            return float("nan")
        return (self.counter(name, last[1]) - self.counter(name, first[1])) / (last[0] - first[0])

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def memory_mb(self) -> tuple[float, float]:
        return process_memory_mb(self.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class Probes:
    """Probe turbines published by this process, remembering each row's publish time."""

    def __init__(self, broker: Mosquitto, count: int, fmt: str = "csv") -> None:
        self.encode = Encoder(fmt, "dataset23").row
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
            self.client.publish(f"turbines/{self.ids[i]}/raw", self.encode(record))

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


@dataclass
class Scenario:
    """One run: ``turbines`` at 20 Hz (``PROBES`` of them probes, one row per message;
    the rest from ``edged simulate``, ``batch`` rows per message), decided every
    ``interval`` seconds, measured over ``measure_s`` once the history is in."""

    turbines: int
    batch: int = 1
    interval: float = 0.5
    measure_s: float = 20.0
    tree: Path = ROOT
    pin: bool = False
    memory_map: bool = False
    format: str = "csv"  # or json: one object a row, an array of them a batch

    def run(self) -> dict:
        pin = self.pin and pinning() is None
        if pin:
            os.sched_setaffinity(0, {REST_CPU})  # the broker and publisher inherit it
        try:
            with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as broker:
                return self._run(Path(tmp), broker, pin)
        finally:
            if pin:
                os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))

    def _run(self, tmp: Path, broker: Mosquitto, pin: bool) -> dict:
        config = tmp / "edged.yaml"
        config.write_text(CONFIG.format(port=broker.port, interval=self.interval,
                                        format=self.format))
        daemon = Daemon(config, self.tree, DAEMON_CPU if pin else None)
        if not daemon.started.wait(60):
            daemon.stop()
            raise RuntimeError(f"edged did not start: {daemon.errors}")
        listener = AlarmListener(broker)
        probes = Probes(broker, PROBES, self.format)
        bulk = self.turbines - PROBES
        simulate = subprocess.Popen(
            [sys.executable, "-m", "edged", "simulate", "--broker", broker.address,
             "--turbines", str(bulk), "--rate", str(RATE), "--format", self.format,
             "--batch", str(self.batch), "--history", str(HISTORY_S),
             "--duration", str(self.measure_s + 15), "--control-topic", "", "--seed", "3"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        probes.thread.start()
        time.sleep(10)  # the history is in; the first decisions have run
        others = [os.getpid(), simulate.pid, broker.process.pid]
        threads0 = thread_cpu_seconds(daemon.pid)
        cpu0, rest0, t0 = daemon.cpu_seconds(), _cpu(others), time.time()
        time.sleep(self.measure_s)
        cpu1, rest1, t1 = daemon.cpu_seconds(), _cpu(others), time.time()
        threads = {name: (seconds - threads0.get(name, 0.0)) / (t1 - t0)
                   for name, seconds in thread_cpu_seconds(daemon.pid).items()}
        rss, peak = daemon.memory_mb()
        mapped = memory_map_mb(daemon.pid) if self.memory_map else {}
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
            "turbines": self.turbines, "batch": self.batch, "interval": self.interval,
            "pinned": pin,
            "published_per_s": _live_rate(summary) + PROBES * RATE,
            "readings_per_s": daemon.rate("rows_accepted", t0, t1),
            "lost": published - accepted, "dropped_counted": dropped,
            "decisions_per_s": daemon.rate("decisions", t0, t1),
            "p50_ms": _percentile(latencies, 50), "p99_ms": _percentile(latencies, 99),
            "decide_p99_ms": _percentile(deciding, 99),
            "alarms": len(latencies), "rss_mb": rss, "peak_rss_mb": peak,
            "cpu": (cpu1 - cpu0) / (t1 - t0),
            "rest_cpu": (rest1 - rest0) / (t1 - t0),  # this process, publisher and broker
            "memory_map": mapped,
            "thread_cpu": dict(sorted(threads.items(), key=lambda item: -item[1])),
        }


def _cpu(pids: list[int]) -> float:
    return sum(process_cpu_seconds(pid) for pid in pids)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _published_rows(summary: str) -> int:
    # "published M messages (R rows, H of them history) ..."
    return int(summary.split("(", 1)[1].split(maxsplit=1)[0])


def _live_rate(summary: str) -> float:
    # "... messages/s, R rows/s live (target T), ..."
    return float(summary.split(" rows/s live", 1)[0].rsplit(maxsplit=1)[1])


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


def print_table(columns: list[tuple[str, str, int, str]], rows: list[dict], *,
                header: bool = True) -> None:
    """``columns``: (title, key, width, format) each."""
    if header:
        print(" ".join(f"{title:>{width}}" for title, _, width, _ in columns))
    for row in rows:
        print(" ".join(f"{row[key]:>{width}{fmt}}" for _, key, width, fmt in columns),
              flush=True)
