"""Decisions per second with pipeline capture at 1 % and at 100 %, against capture off,
interleaved in the same process, one core.

    make bench            # or: .venv/bin/python benchmarks/capture.py [--turbines 100 1000]

For T turbines, three Pipelines are fed the same simulated rows (10 new rows per turbine
a round, as benchmarks/run.py does) and decide in blocks of rounds, the three configs
taking turns (off, ``rate: {every: 100}``, ``rate: {every: 1}``), the order rotating from
block to block. Each capturing pipeline has a PipelineCapture subscribed, with its writer
and uploader tasks running to a DiskDestination under a temporary directory (spool fsync
``batch``).

Reported per config: decisions/s on the decision path (ingest + decide, the writer
running beside it on the same loop and core); decisions/s sustained, which adds the time
the writer then takes to spool what the block queued (the cost of capture in full); both
as ratios to capture off; records picked, captured (spooled), uploaded and dropped
(``capture_dropped{...}``); the time spent inside ``on_round`` a round (p99,
max), the only part of capture on the decision path; and each round's time (ingest +
decide, p99 and max), which also shows what capture's other work (the writer's and the
uploader's threads, the uploader's turns on the loop) cost the decision path.
"""

from __future__ import annotations

import os

# One core: set before numpy and onnxruntime load their thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from benchmarks.run import NEW_ROWS, simulated_inputs  # noqa: E402
from edged.base.metrics import Counters  # noqa: E402
from edged.builtin.onnx import OnnxBackend, OnnxConfig  # noqa: E402
from edged.builtin.windturbine import WindTurbineConfig, WindTurbineStage, params_for  # noqa: E402
from edged.capture.pipeline_capture import PipelineCapture  # noqa: E402
from edged.config import PipelineSpec  # noqa: E402
from edged.config.capture import PipelineCaptureSpec  # noqa: E402
from edged.plugin.components import Readings  # noqa: E402
from edged.runtime.pipeline import Pipeline  # noqa: E402

CONFIGS = {"off": None, "1 %": 100, "100 %": 1}


class Timed:
    """A subscriber timing the capture's ``on_round``, the decision path's share."""

    def __init__(self, capture: PipelineCapture) -> None:
        self.capture = capture
        self.times: list[float] = []

    def on_round(self, round) -> None:
        start = time.perf_counter()
        self.capture.on_round(round)
        self.times.append(time.perf_counter() - start)

    def on_event(self, event) -> None:
        self.capture.on_event(event)


class Run:
    """One config: its pipeline, its capture (None when off) and its figures."""

    def __init__(self, name: str, every: int | None, turbines: int, backend, stage,
                 inputs: np.ndarray, tmp: Path) -> None:
        self.name, self.turbines = name, turbines
        self.counters = Counters()
        spec = PipelineSpec(inputs=["farm"], preprocessor={"type": "windturbine"},
                            inference={"type": "onnx"}, max_turbines=turbines)
        self.pipeline = Pipeline(f"bench{every}", spec, stage, backend, self.counters)
        self.ids = tuple(f"t{i}" for i in range(turbines))
        self.inputs = inputs
        self.offset = stage.history
        self.pipeline.ingest([Readings(self.ids * stage.history,
                                       inputs[:stage.history].reshape(-1, 7))])
        self.capture: PipelineCapture | None = None
        self.timed: Timed | None = None
        self.picked = 0
        if every is not None:
            cspec = PipelineCaptureSpec.model_validate({
                "rate": {"every": every},
                "spool": {"fsync": "batch"},
                "destination": {"type": "disk", "path": str(tmp / f"out{every}")}})
            self.capture = PipelineCapture(self.pipeline.name, cspec, device="bench",
                                           root=tmp / f"spool{every}",
                                           counters=self.counters, source=self.pipeline)
            enqueue = self.capture._enqueue

            def counted(picks, meta) -> None:
                self.picked += len(picks)
                enqueue(picks, meta)

            self.capture._enqueue = counted  # type: ignore[method-assign]
            self.timed = Timed(self.capture)
            self.pipeline.subscribers.append(self.timed)
        self.round_times: list[float] = []  # each round's ingest + decide
        self.drain_s = 0.0  # then until the writer has spooled what the block queued
        self.rounds = 0

    def dropped(self) -> dict[str, int]:
        return {sample.labels["reason"]: sample.value
                for sample in self.counters.samples("capture_dropped")}

    def spooled(self) -> int:
        return self.counters.get("capture_records", pipeline=self.pipeline.name)

    async def block(self, rounds: int) -> None:
        for _ in range(rounds):
            fresh = self.inputs[self.offset:self.offset + NEW_ROWS].reshape(-1, 7)
            start = time.perf_counter()
            self.pipeline.ingest([Readings(self.ids * NEW_ROWS, fresh)])
            await self.pipeline.decide_once()
            self.round_times.append(time.perf_counter() - start)
            self.offset += NEW_ROWS
            self.rounds += 1
        if self.capture is not None:
            start = time.perf_counter()
            # Polls the counters: the writer signals nothing when it is done.
            while self.spooled() + self.dropped().get("queue_full", 0) < self.picked:  # noqa: ASYNC110
                await asyncio.sleep(0.0005)
            self.drain_s += time.perf_counter() - start

    def figures(self) -> dict:
        decisions = self.turbines * self.rounds
        times = np.array(self.timed.times if self.timed else [0.0])
        rounds = np.array(self.round_times)
        path_s = float(rounds.sum())  # the decision path: ingest + decide
        return {
            "config": self.name, "turbines": self.turbines, "rounds": self.rounds,
            "decisions_per_s": decisions / path_s,
            "sustained_per_s": decisions / (path_s + self.drain_s),
            "picked": self.picked, "spooled": self.spooled(),
            "uploaded": self.counters.get("capture_uploaded", pipeline=self.pipeline.name),
            "dropped": self.dropped(),
            "on_round_p99_ms": float(np.percentile(times, 99)) * 1000,
            "on_round_max_ms": float(times.max()) * 1000,
            "round_p99_ms": float(np.percentile(rounds, 99)) * 1000,
            "round_max_ms": float(rounds.max()) * 1000,
        }


async def bench(turbines: int, rounds: int, block: int) -> list[dict]:
    backend = OnnxBackend(OnnxConfig(type="onnx", threads=1))
    backend.load()
    stage = WindTurbineStage(params_for(WindTurbineConfig(type="windturbine"),
                                        backend.manifest))
    inputs = simulated_inputs(turbines, stage.history + NEW_ROWS * (rounds + 1))
    with tempfile.TemporaryDirectory(prefix="edged-capture-bench-") as tmp:
        runs = [Run(name, every, turbines, backend, stage, inputs, Path(tmp))
                for name, every in CONFIGS.items()]
        async with contextlib.AsyncExitStack() as stack:
            tasks = []
            for run in runs:
                if run.capture is not None:
                    await stack.enter_async_context(run.capture)
                    tasks += [asyncio.create_task(run.capture.write_loop()),
                              asyncio.create_task(run.capture.upload_loop())]
            for run in runs:  # warm-up: one round each, not counted
                await run.block(1)
                run.drain_s = 0.0
                run.rounds = 0
                run.round_times.clear()
                if run.timed:
                    run.timed.times.clear()
            done, turn = 0, 0
            while done < rounds:
                n = min(block, rounds - done)
                for i in range(len(runs)):
                    await runs[(turn + i) % len(runs)].block(n)
                done += n
                turn += 1
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for run in runs:
                if run.capture is not None:
                    await run.capture.upload_pending()
        return [run.figures() for run in runs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turbines", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=40, help="rounds per config")
    parser.add_argument("--block", type=int, default=5,
                        help="rounds a config decides before the next takes its turn")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    results = []
    for turbines in args.turbines:
        results += asyncio.run(bench(turbines, args.rounds, args.block))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores (run on 1 thread); "
          f"python {platform.python_version()}, numpy {np.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; {args.rounds} rounds a config, "
          f"interleaved in blocks of {args.block}")
    print(f"{'turbines':>8}  {'capture':>7}  {'dec/s':>7}  {'ratio':>5}  "
          f"{'sustained':>9}  {'ratio':>5}  {'picked':>7}  {'spooled':>7}  "
          f"{'uploaded':>8}  {'dropped':>7}  {'on_round p99 / max':>22}  "
          f"{'round p99 / max':>17}")
    for r in results:
        off = next(o for o in results if o["turbines"] == r["turbines"]
                   and o["config"] == "off")
        dropped = sum(r["dropped"].values())
        print(f"{r['turbines']:>8}  {r['config']:>7}  {r['decisions_per_s']:>7.0f}  "
              f"{r['decisions_per_s'] / off['decisions_per_s']:>5.2f}  "
              f"{r['sustained_per_s']:>9.0f}  "
              f"{r['sustained_per_s'] / off['sustained_per_s']:>5.2f}  "
              f"{r['picked']:>7}  {r['spooled']:>7}  {r['uploaded']:>8}  {dropped:>7}  "
              f"{r['on_round_p99_ms']:>10.2f} / {r['on_round_max_ms']:.2f} ms  "
              f"{r['round_p99_ms']:>7.1f} / {r['round_max_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
