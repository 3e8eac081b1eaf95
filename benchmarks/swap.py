"""The cost of a model update over IoT Jobs: decisions missed during the swap, and the time
from the job's notification to the new model serving.

    .venv/bin/python benchmarks/swap.py [--turbines 1000] [--interval 0.5] [--runs 3] [--json]
                                        [--tcp-nodelay none|cloud|all]

Each run is a fresh device and its cloud, all real parts in this process except the
broker: mosquitto, bundles over HTTP (``tests.support.BundleServer``), the jobs service
peer (``tests.support.jobs_peer.JobsService``) and the daemon graph itself
(``build_graph`` and ``Graph.run``, as ``edged run`` does), with a ``simulator`` source
of T turbines at 20 Hz, a pipeline serving ``store:windturbine`` every I seconds and a
``cloud:`` section. The bundle is the built-in reference model re-versioned to N+1 and
signed with a fresh Ed25519 key that the device trusts.

A run: the farm's history goes in and every turbine is decided once; 2 s of warm-up;
a 5 s baseline window; the job is queued (t0, the notification); the run waits for
SUCCEEDED and goes on 5 s more. A subscriber records the arrival (time.monotonic) and
model version of every decision. Reported:

- notification -> serving: the first decision by the new model minus t0; notification
  -> SUCCEEDED; the executor's own phase timers (statusDetails ``t:<phase>``); a
  timeline from t0: each jobs request as the service receives it, and the daemon's
  ``job_started``, ``model_candidate_ready`` and ``model_swapped`` log events;
- decision gaps, per turbine the longest interval between two consecutive decisions, in
  the baseline window and in the swap window (1 s either side of the first new-model
  decision), and in the whole job (t0 to 1 s after the first new-model decision);
  missed decisions = the sum over turbines and gaps of max(0, round(gap / I) - 1);
- decisions/s in each window (as a ratio of the baseline's, measured side by side in the
  same run; a window of 1-2 s moves by a few % with where the turbines' phases fall at
  its edges, so missed decisions and gaps are the figures to read), the longest pause
  between two decision rounds, the event loop's worst lateness (a 10 ms ticker), this
  process's CPU;
- whether every turbine was decided by the new model, and that the simulator kept up
  (rows accepted against rows due).

The simulator, the pipeline, the executor, the jobs peer and the HTTP server share this
process (and the GIL); mosquitto is the only other process. Table: median over runs
[min - max]; --json: one JSON object with every run.

Nagle: mosquitto and paho (so aiomqtt, edged's cloud link and the jobs peer) leave
TCP_NODELAY off. On loopback a small write that follows another not yet acknowledged (a
request published right after the PUBACK of the previous reply) then waits for the
peer's delayed ACK, ~40 ms, and the executor waits for a reply at the start of every
phase. ``--tcp-nodelay cloud`` turns Nagle off on the broker and the jobs peer (the cloud
side, AWS IoT Core's business in production); ``all`` on the daemon's cloud link as well,
which separates edged's own work from the transport's.
"""

from __future__ import annotations

import os

# As a device runs it: ONNX Runtime on one thread (the pipeline's default), numpy too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import structlog  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from edged.app.assembly import build_graph  # noqa: E402
from edged.cloud.jobs.protocol import TERMINAL_STATUSES  # noqa: E402
from edged.config import load_config  # noqa: E402
from edged.model.bundle import build_bundle  # noqa: E402
from edged.model.bundle.keys import public_pem  # noqa: E402
from edged.model.package import resolve_model_path  # noqa: E402
from edged.plugin.manager import make_plugin_manager  # noqa: E402
from tests.support import BundleServer, Mosquitto  # noqa: E402
from tests.support.jobs_peer import JobsService  # noqa: E402

THING = "swap-bench-gw"
MODEL = "windturbine"
PIPELINE = "turbines"
RATE_HZ = 20.0
WARMUP_S = 2.0
BASELINE_S = 5.0
AFTER_S = 5.0
AROUND_S = 1.0  # the swap window: this long either side of the first new-model decision
JOB_TIMEOUT_S = 120.0
NODELAY = ("none", "cloud", "all")
PHASES = ("received", "downloading", "verifying", "staging", "shadow", "activating")
CONFIG = """\
device: {{id: {thing}}}
state_dir: {state_dir}
log: {{level: info, stats_interval_s: 0}}
sources:
  farm: {{type: simulator, turbines: {turbines}, rate_hz: {rate}, seed: 3, history_s: 25}}
pipelines:
  {pipeline}:
    inputs: [farm]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx, model: "store:{model}"}}
    interval_s: {interval}
cloud:
  broker: {{host: 127.0.0.1, port: {port}, reconnect_min_s: 0.1, reconnect_max_s: 0.5}}
  jobs:
    trust: {{keys_dir: {keys_dir}}}
"""


class LogTap:
    """structlog for an in-process daemon: nothing printed; the executor's and the swap's
    milestones kept with their monotonic time, warnings and errors kept whole."""

    MILESTONES = {"job_started", "model_candidate_ready", "model_swapped", "job_finished"}

    def __init__(self) -> None:
        self.events: list[tuple[float, str, dict]] = []

    def __call__(self, logger, method: str, event: dict) -> dict:
        name = event.get("event", "")
        if name in self.MILESTONES or method in ("warning", "error", "critical", "exception"):
            self.events.append((time.monotonic(), method, dict(event)))
        raise structlog.DropEvent

    def install(self) -> None:
        structlog.configure(processors=[self],
                            wrapper_class=structlog.make_filtering_bound_logger(20),
                            cache_logger_on_first_use=False)

    def first(self, name: str) -> float | None:
        return next((t for t, _, e in self.events if e.get("event") == name), None)

    def problems(self) -> list[str]:
        return [f"{m}: {e.get('event')} {({k: v for k, v in e.items() if k != 'event'})}"
                for _, m, e in self.events if m != "info"]


class Recorder:
    """A pipeline subscriber: each round's arrival time, model version and turbines."""

    def __init__(self) -> None:
        self.rounds: list[tuple[float, int, list[str]]] = []

    def on_round(self, round) -> None:
        decisions = round.decisions
        if decisions:
            self.rounds.append((time.monotonic(), decisions[0].model.version,
                                [d.turbine for d in decisions]))

    def on_event(self, event) -> None:
        pass

    def decided(self) -> set[str]:
        return {t for _, _, turbines in self.rounds for t in turbines}


class LoopLag:
    """A 10 ms ticker: how late the event loop wakes it, with the time of each tick."""

    PERIOD = 0.01

    def __init__(self) -> None:
        self.ticks: list[tuple[float, float]] = []  # (time, lateness)

    async def run(self) -> None:
        while True:
            due = time.monotonic() + self.PERIOD
            await asyncio.sleep(self.PERIOD)
            now = time.monotonic()
            self.ticks.append((now, now - due))

    def worst(self, a: float, b: float) -> float:
        return max((late for t, late in self.ticks if a <= t < b), default=0.0)


class Cpu:
    """This process's CPU time (every thread) at named moments."""

    def __init__(self) -> None:
        self.marks: dict[str, tuple[float, float]] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = (time.monotonic(), time.process_time())

    def share(self, a: str, b: str) -> float:
        (t0, c0), (t1, c1) = self.marks[a], self.marks[b]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


def new_bundle(tmp: Path, key: Ed25519PrivateKey) -> tuple[bytes, int, int]:
    """The built-in model re-versioned to N+1 and signed: (bundle, N, N+1)."""
    builtin = resolve_model_path(f"builtin:{MODEL}-v1")
    target = tmp / "model"
    shutil.copytree(builtin, target)
    manifest = json.loads((target / "manifest.json").read_text())
    old = int(manifest["version"])
    manifest["version"] = old + 1
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    out = build_bundle(target, tmp / f"{MODEL}-{old + 1}.tar.gz", key)
    return out.read_bytes(), old, old + 1


def gaps(times: dict[str, np.ndarray], a: float, b: float, interval: float) -> dict:
    """Per turbine, the longest interval between consecutive decisions that overlaps
    [a, b); the decisions that interval length implies were missed."""
    longest, missed = [], 0
    for stamps in times.values():
        if len(stamps) < 2:
            continue
        start, end = stamps[:-1], stamps[1:]
        inside = (end > a) & (start < b)
        if not inside.any():
            continue
        span = end[inside] - start[inside]
        longest.append(float(span.max()))
        missed += int(np.maximum(0, np.rint(span / interval) - 1).sum())
    ordered = sorted(longest)
    return {"max_gap_s": ordered[-1] if ordered else None,
            "p50_gap_s": ordered[len(ordered) // 2] if ordered else None,
            "missed": missed, "turbines": len(ordered)}


def window(recorder: Recorder, times: dict[str, np.ndarray], lag: LoopLag,
           a: float, b: float, interval: float) -> dict:
    stamps = np.array([t for t, _, _ in recorder.rounds])
    counts = np.array([len(ts) for _, _, ts in recorder.rounds])
    inside = (stamps >= a) & (stamps < b)
    # The longest pause between two rounds that overlaps the window (any turbine).
    pauses = np.diff(stamps)
    overlap = (stamps[1:] > a) & (stamps[:-1] < b)
    return {"from": a, "to": b, "decisions_per_s": float(counts[inside].sum()) / (b - a),
            "round_pause_s": float(pauses[overlap].max()) if overlap.any() else None,
            "loop_lag_ms": lag.worst(a, b) * 1e3, **gaps(times, a, b, interval)}


class TimedJobsService(JobsService):
    """The jobs peer, noting when each request arrives: (time, operation, status, phase)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[tuple[float, str, str | None, str | None]] = []

    async def _answer(self, topic, parsed, raw: bytes) -> None:
        now = time.monotonic()
        try:
            request = json.loads(raw) if raw else {}
        except ValueError:
            request = {}
        request = request if isinstance(request, dict) else {}
        details = request.get("statusDetails")
        phase = details.get("phase") if isinstance(details, dict) else None
        self.arrivals.append((now, parsed.operation, request.get("status"), phase))
        await super()._answer(topic, parsed, raw)

    def first(self, after: float, operation: str, status: str | None = None,
              phase: str | None = None) -> float | None:
        return next((t for t, op, st, ph in self.arrivals if t >= after and op == operation
                     and (status is None or st == status)
                     and (phase is None or ph == phase)), None)


@dataclass
class Observed:
    """What one run recorded."""

    recorder: Recorder = field(default_factory=Recorder)
    lag: LoopLag = field(default_factory=LoopLag)
    cpu: Cpu = field(default_factory=Cpu)
    t0: float = 0.0  # the job queued: notify-next goes out
    live_at: float = 0.0  # the simulator's live rows begin
    end_at: float = 0.0
    rows: int = 0  # rows accepted from live_at to end_at
    dropped: int = 0  # batches dropped by the pipeline's queue
    execution: Any = None  # the service's execution once terminal


def nodelay(client: Any) -> None:
    """TCP_NODELAY on an aiomqtt client's socket (paho leaves Nagle on)."""
    sock = client._client.socket()  # aiomqtt.Client -> paho client -> socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def one_run(args: argparse.Namespace, registry, tap: LogTap) -> dict:
    with tempfile.TemporaryDirectory(prefix="edged-swap-") as name:
        tmp = Path(name)
        key = Ed25519PrivateKey.generate()
        keys_dir = tmp / "trusted"
        keys_dir.mkdir()
        (keys_dir / "release.pub.pem").write_bytes(public_pem(key.public_key()))
        data, old_version, new_version = new_bundle(tmp, key)
        extra = "set_tcp_nodelay true" if args.tcp_nodelay != "none" else ""
        with Mosquitto(tmp, extra_config=extra) as broker, \
                BundleServer({"bundle.tar.gz": data}) as server:
            config = tmp / "edged.yaml"
            config.write_text(CONFIG.format(
                thing=THING, state_dir=tmp / "state", turbines=args.turbines, rate=RATE_HZ,
                pipeline=PIPELINE, model=MODEL, interval=args.interval, port=broker.port,
                keys_dir=keys_dir))
            document = {
                "operation": "edged.deploy-model",
                "bundle": {"url": server.url("bundle.tar.gz"), "size": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()},
                "model": {"name": MODEL, "version": new_version},
                "options": {"allow_http": True}}
            graph = build_graph(load_config(config, registry), registry)
            tap.events.clear()
            async with TimedJobsService(broker.host, broker.port) as jobs:
                if args.tcp_nodelay != "none":
                    nodelay(jobs._client)
                seen = await observe(graph, jobs, document, args, f"deploy-{new_version}")
            result = analyse(seen, jobs, tap, args, old_version, new_version)
            result["bundle_bytes"] = len(data)
            return result


async def observe(graph, jobs: TimedJobsService, document: dict,
                  args: argparse.Namespace, job_id: str) -> Observed:
    """Run the daemon graph: steady state, baseline, the job, the time after."""
    seen = Observed()
    ready = asyncio.Event()
    task = asyncio.create_task(graph.run(on_ready=ready.set))
    ticker = asyncio.create_task(seen.lag.run())
    try:
        await asyncio.wait_for(ready.wait(), 60)
        graph.pipelines[PIPELINE].subscribers.append(seen.recorder)
        if args.tcp_nodelay == "all":
            nodelay(await asyncio.wait_for(graph.cloud.link.wait_connected(), 30))
        await asyncio.wait_for(graph.sources["farm"].component.live.wait(), 120)
        seen.live_at = time.monotonic()
        rows0 = accepted(graph)
        deadline = seen.live_at + 120
        while len(seen.recorder.decided()) < args.turbines:  # every turbine decided once
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(seen.recorder.decided())} of "
                                   f"{args.turbines} turbines decided after 120 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(WARMUP_S)
        seen.cpu.mark("baseline")
        await asyncio.sleep(BASELINE_S)
        seen.cpu.mark("t0")
        seen.t0 = time.monotonic()
        await jobs.queue_job(THING, job_id, document)
        while (execution := jobs.execution(THING, job_id)).status not in TERMINAL_STATUSES:
            if time.monotonic() - seen.t0 > JOB_TIMEOUT_S:
                raise TimeoutError(f"{job_id} still {execution.status} after "
                                   f"{JOB_TIMEOUT_S:g} s: {execution.status_details}")
            await asyncio.sleep(0.01)
        seen.execution = execution
        seen.cpu.mark("done")
        await asyncio.sleep(AFTER_S)
        seen.cpu.mark("end")
        seen.end_at = time.monotonic()
        seen.rows = accepted(graph) - rows0
        seen.dropped = graph.counters.total("batches_dropped")
    finally:
        graph.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    return seen


def accepted(graph) -> int:
    return graph.counters.total("rows_accepted")


def analyse(seen: Observed, jobs: TimedJobsService, tap: LogTap, args: argparse.Namespace,
            old_version: int, new_version: int) -> dict:
    rounds, t0, interval = seen.recorder.rounds, seen.t0, args.interval
    details = dict(seen.execution.status_details)
    first_new = next((t for t, v, _ in rounds if v == new_version), None)
    per_turbine: dict[str, list[float]] = defaultdict(list)
    for t, _, names in rounds:
        for turbine in names:
            per_turbine[turbine].append(t)
    times = {k: np.array(v) for k, v in per_turbine.items()}

    def since(t: float | None) -> float | None:
        return None if t is None else t - t0

    timeline = {
        # The device reads its pending list on notify, then describes the job.
        "pending list read": since(jobs.first(t0, "get")),
        "describe received": since(jobs.first(t0, "describe")),
        "job_started (log)": since(tap.first("job_started")),
        **{f"{phase} reported": since(jobs.first(t0, "update", "IN_PROGRESS", phase))
           for phase in PHASES},
        "candidate ready (log)": since(tap.first("model_candidate_ready")),
        "model_swapped (log)": since(tap.first("model_swapped")),
        "first new-model decision": since(first_new),
        "SUCCEEDED received": since(jobs.first(t0, "update", "SUCCEEDED")),
    }
    result: dict[str, Any] = {
        "turbines": args.turbines, "interval_s": interval,
        "status": seen.execution.status, "from_version": old_version,
        "to_version": new_version,
        "notify_to_serving_s": since(first_new),
        "notify_to_succeeded_s": timeline["SUCCEEDED received"],
        "phase_timers_s": {p: float(details[f"t:{p}"]) for p in PHASES
                           if f"t:{p}" in details},
        "timeline_s": {k: v for k, v in timeline.items() if v is not None},
        "jobs_requests": sum(1 for t, *_ in jobs.arrivals
                             if t0 <= t <= t0 + (timeline["SUCCEEDED received"] or 0.0)),
        "status_details": details,
        "turbines_decided_by_new_model": len(
            {t for _, v, ts in rounds if v == new_version for t in ts}),
        "old_decisions_after_first_new": sum(
            len(ts) for t, v, ts in rounds
            if v != new_version and first_new is not None and t > first_new),
        "problems": tap.problems(),
    }
    if first_new is None:
        return result
    windows = {
        "baseline": window(seen.recorder, times, seen.lag, t0 - BASELINE_S, t0, interval),
        "swap": window(seen.recorder, times, seen.lag, first_new - AROUND_S,
                       first_new + AROUND_S, interval),
        "job": window(seen.recorder, times, seen.lag, t0, first_new + AROUND_S, interval),
        "after": window(seen.recorder, times, seen.lag, first_new + AROUND_S, seen.end_at,
                        interval)}
    for name in ("swap", "job", "after"):
        windows[name]["rate_ratio"] = (windows[name]["decisions_per_s"]
                                       / windows["baseline"]["decisions_per_s"])
    result |= {
        "windows": windows,
        "cpu": {"baseline": seen.cpu.share("baseline", "t0"),
                "job": seen.cpu.share("t0", "done"), "after": seen.cpu.share("done", "end")},
        "rows_accepted_per_due": seen.rows / (args.turbines * RATE_HZ
                                              * (seen.end_at - seen.live_at)),
        "batches_dropped": seen.dropped,
    }
    return result


def spread(values: list[float | None], fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} [{fmt.format(min(values))} - {fmt.format(max(values))}]"


def table(runs: list[dict]) -> list[str]:
    ok = [r for r in runs if "windows" in r]

    def col(*path: str) -> list[float | None]:
        out = []
        for r in ok:
            value = r
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            out.append(value)
        return out

    def ms(*path: str) -> str:
        return spread([None if v is None else v * 1e3 for v in col(*path)], "{:.0f}")

    lines = [("notification -> first new-model decision (ms)", ms("notify_to_serving_s")),
             ("notification -> SUCCEEDED received (ms)", ms("notify_to_succeeded_s")),
             ("executor's timers (statusDetails t:<phase>, ms)", "")]
    for phase in PHASES:
        if any(phase in r["phase_timers_s"] for r in ok):
            lines.append((f"  t:{phase}", ms("phase_timers_s", phase)))
    lines.append(("timeline from the notification (ms)", ""))
    for key in ok[0]["timeline_s"] if ok else ():
        lines.append((f"  {key}", ms("timeline_s", key)))
    lines.append(("jobs requests (MQTT round trips) per job", spread(col("jobs_requests"),
                                                                     "{:.0f}")))
    lines.append(("", ""))
    lines.append(("window", "baseline 5 s | swap (+-1 s) | whole job"))
    for name, label, fmt, scale in (
            ("decisions_per_s", "decisions/s", "{:.0f}", 1),
            ("rate_ratio", "  ratio to baseline", "{:.3f}", 1),
            ("max_gap_s", "longest gap, worst turbine (ms)", "{:.0f}", 1e3),
            ("p50_gap_s", "longest gap, median turbine (ms)", "{:.0f}", 1e3),
            ("missed", "missed decisions (all turbines)", "{:.0f}", 1),
            ("round_pause_s", "longest pause between rounds (ms)", "{:.0f}", 1e3),
            ("loop_lag_ms", "worst event-loop lateness (ms)", "{:.0f}", 1)):
        cells = []
        for w in ("baseline", "swap", "job"):
            values = [None if v is None else v * scale for v in col("windows", w, name)]
            cells.append(spread(values, fmt) if any(v is not None for v in values) else "-")
        lines.append((label, " | ".join(cells)))
    lines.append(("process CPU (%), baseline | job",
                  f"{spread([v * 100 for v in col('cpu', 'baseline')], '{:.0f}')} | "
                  f"{spread([v * 100 for v in col('cpu', 'job')], '{:.0f}')}"))
    lines.append(("turbines decided by the new model",
                  " ".join(f"{r['turbines_decided_by_new_model']}/{r['turbines']}"
                           for r in runs)))
    lines.append(("rows accepted / rows due (simulator kept up)",
                  spread(col("rows_accepted_per_due"), "{:.3f}")))
    width = max(len(label) for label, _ in lines)
    return [f"{label:<{width}}  {value}" if label else "" for label, value in lines]


async def main_async(args) -> list[dict]:
    _, registry = make_plugin_manager()
    tap = LogTap()
    tap.install()
    runs = []
    for index in range(args.runs):
        result = await one_run(args, registry, tap)
        runs.append(result)
        if not args.json:
            w = result.get("windows", {})
            print(f"run {index + 1}: {result['status']}, serving after "
                  f"{(result['notify_to_serving_s'] or float('nan')) * 1e3:.0f} ms, missed "
                  f"{w.get('swap', {}).get('missed')} in the swap window "
                  f"(baseline {w.get('baseline', {}).get('missed')})", flush=True)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turbines", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.5,
                        help="seconds between two decisions of one turbine")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object, nothing else")
    parser.add_argument("--tcp-nodelay", choices=NODELAY, default="none",
                        help="turn Nagle's algorithm off (paho and mosquitto leave it on; "
                        "on loopback a request/reply then often waits ~40 ms for a delayed "
                        "ACK): on the broker and the jobs peer (cloud), and on the daemon's "
                        "cloud link too (all); default none, as the tests run")
    args = parser.parse_args()
    machine = (f"{cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}, "
               f"numpy {np.__version__}, onnxruntime {onnxruntime.__version__}")
    if not args.json:
        print(f"machine: {machine}")
        print(f"{args.turbines} turbines at {RATE_HZ:g} Hz, decided every {args.interval:g} s;"
              f" {args.runs} runs, each a fresh device (state dir, broker, bundle, key)"
              f"; TCP_NODELAY: {args.tcp_nodelay}")
    started = time.monotonic()
    runs = asyncio.run(main_async(args))
    ok = [r for r in runs if "windows" in r]
    summary = {
        "missed_in_swap_window": [r["windows"]["swap"]["missed"] for r in ok],
        "missed_in_baseline": [r["windows"]["baseline"]["missed"] for r in ok],
        "every_turbine_on_new_model": all(r["turbines_decided_by_new_model"] == r["turbines"]
                                          for r in runs),
        "all_succeeded": all(r["status"] == "SUCCEEDED" for r in runs),
    }
    if args.json:
        print(json.dumps({"machine": machine, "turbines": args.turbines,
                          "interval_s": args.interval, "rate_hz": RATE_HZ,
                          "tcp_nodelay": args.tcp_nodelay,
                          "summary": summary, "runs": runs,
                          "wall_s": time.monotonic() - started}, default=str))
    else:
        print("median [min - max] over runs")
        print("\n".join(table(runs)))
        problems = sorted({p for r in runs for p in r["problems"]})
        if problems:
            print(f"daemon warnings/errors ({len(problems)}):")
            for problem in problems[:10]:
                print(f"  {problem[:200]}")
        print(f"target: zero missed decisions in the swap window -> "
              f"{'met' if not any(summary['missed_in_swap_window']) and ok else 'NOT met'}"
              f" (runs: {summary['missed_in_swap_window']}; baseline: "
              f"{summary['missed_in_baseline']}); wall {time.monotonic() - started:.0f} s")
    return 0 if summary["all_succeeded"] and summary["every_turbine_on_new_model"] else 1


if __name__ == "__main__":
    sys.exit(main())
