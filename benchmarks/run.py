"""Decisions per second: edged's pipeline against per-turbine loops, same buffers, same
process, one core.

    make bench            # or: .venv/bin/python benchmarks/run.py [--turbines 10 100 1000]

Three ways to decide T turbines once each, on the same simulated 500-row histories:

- edged: the real Pipeline (ingest of the 10 rows that arrived since the last round,
  then one batched preprocessing pass and one model call for all turbines);
- reference loop: the reference application's way, one turbine at a time: raw rows to
  Euler angles row by row, re-denoise the whole buffer column by column, one model call
  each (tests/windturbine/reference_impl.py, the yardstick the tests also use);
- per-turbine numpy: edged's own vectorised maths but called one turbine at a time with
  one model call each (isolates the gain from batching across turbines).

Figures are ratios against the reference loop measured in the same run.
"""

from __future__ import annotations

import os

# One core: set before numpy and onnxruntime load their thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from edged.base.metrics import Counters  # noqa: E402
from edged.builtin.onnx import OnnxBackend, OnnxConfig  # noqa: E402
from edged.builtin.windturbine import WindTurbineConfig, WindTurbineStage, params_for  # noqa: E402
from edged.config import PipelineSpec  # noqa: E402
from edged.plugin.components import Readings  # noqa: E402
from edged.runtime.pipeline import Pipeline  # noqa: E402
from edged.windturbine.features import WindTurbinePreprocessor, raw_features  # noqa: E402
from edged.windturbine.layout import DATASET_COLUMNS, INPUTS  # noqa: E402
from edged.windturbine.simulator import WindFarm  # noqa: E402
from tests.windturbine.reference_impl import reference_decide  # noqa: E402

NEW_ROWS = 10  # rows per turbine between two decisions (20 Hz, decided twice a second)


def simulated_inputs(turbines: int, rows: int) -> np.ndarray:
    """(rows, turbines, 7) raw inputs from the simulator, a few turbines faulty."""
    farm = WindFarm(turbines=turbines, seed=42)
    for turbine in range(0, turbines, 7):
        farm.inject(turbine, ("vibration", "rotation", "voltage")[turbine % 3])
    columns = [DATASET_COLUMNS.index(name) for name in INPUTS]
    return farm.ticks(rows)[..., columns]


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


async def bench(turbines: int, repeat: int) -> dict:
    backend = OnnxBackend(OnnxConfig(type="onnx", threads=1))
    backend.load()
    stage = WindTurbineStage(params_for(WindTurbineConfig(type="windturbine"),
                                        backend.manifest))
    history = stage.history
    inputs = simulated_inputs(turbines, history + NEW_ROWS * (repeat + 1))
    ids = tuple(f"t{i}" for i in range(turbines))
    spec = PipelineSpec(inputs=["farm"], preprocessor={"type": "windturbine"},
                        inference={"type": "onnx"}, max_turbines=turbines)
    pipeline = Pipeline("bench", spec, stage, backend, Counters())
    pipeline.ingest([Readings(ids * history, inputs[:history].reshape(-1, 7))])

    # edged: each round ingests the rows that arrived since the last one, then decides.
    edged_times, offset = [], history
    edged_values = None
    for _ in range(repeat):
        fresh = inputs[offset:offset + NEW_ROWS].reshape(-1, 7)
        start = time.perf_counter()
        pipeline.ingest([Readings(ids * NEW_ROWS, fresh)])
        decisions = await pipeline.decide_once()
        edged_times.append(time.perf_counter() - start)
        offset += NEW_ROWS
        edged_values = np.array([d.values for d in decisions])
    edged_t = min(edged_times)
    last = inputs[offset - history:offset]  # the histories edged decided on last

    def model_fn(x):
        return backend.predict(x)

    def reference_loop():
        return [reference_decide(last[:, t], stage.params, model_fn) for t in range(turbines)]

    pre = WindTurbinePreprocessor(stage.params)

    def numpy_loop():
        out = []
        for t in range(turbines):
            x = pre.windows(raw_features(last[None, :, t]))
            out.append(pre.errors(x, backend.predict(x), 1)[0])
        return out

    reference_repeat = 1 if turbines >= 1000 else 3
    reference_t = best_of(reference_loop, reference_repeat)
    numpy_t = best_of(numpy_loop, reference_repeat)
    ref = reference_loop()
    same = all(np.array_equal(r[1], v > stage.params.thresholds)
               for r, v in zip(ref, edged_values, strict=True))
    max_diff = max(float(np.abs(r[0] - v).max()) for r, v in zip(ref, edged_values,
                                                                 strict=True))
    return {"turbines": turbines, "edged": turbines / edged_t,
            "reference": turbines / reference_t, "numpy": turbines / numpy_t,
            "same_decisions": same, "max_diff": max_diff}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turbines", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeat", type=int, default=5, help="rounds per measurement")
    args = parser.parse_args()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores (run on 1 thread); "
          f"python {platform.python_version()}, numpy {np.__version__}, "
          f"onnxruntime {onnxruntime.__version__}")
    print(f"{'turbines':>8}  {'edged dec/s':>12}  {'reference dec/s':>15}  "
          f"{'ratio':>6}  {'per-turbine numpy dec/s':>23}  {'ratio':>6}  same decisions")
    worst = float("inf")
    for turbines in args.turbines:
        r = asyncio.run(bench(turbines, args.repeat))
        ratio, numpy_ratio = r["edged"] / r["reference"], r["edged"] / r["numpy"]
        worst = min(worst, ratio)
        print(f"{r['turbines']:>8}  {r['edged']:>12.0f}  {r['reference']:>15.0f}  "
              f"{ratio:>5.1f}x  {r['numpy']:>23.0f}  {numpy_ratio:>5.1f}x  "
              f"{'yes' if r['same_decisions'] else 'NO'} (max diff {r['max_diff']:.1e})")
    print(f"edged vs the reference loop, worst case: {worst:.1f}x (target >= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
