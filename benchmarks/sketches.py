"""Cost of hourly sketches on the decision path: microseconds per round of 1,000
turbines, PipelineCapture.on_round with sketches on vs off, side by side; and the bytes
a day of sketch records takes gzip'ed (24 per pipeline).

    .venv/bin/python benchmarks/sketches.py [--turbines 1000] [--rounds 300]
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import numpy as np

from edged.base.metrics import Counters
from edged.capture.pipeline_capture import PipelineCapture
from edged.capture.sketches import encode_sketch
from edged.config.capture import PipelineCaptureSpec
from edged.plugin.events import Decision, ModelRef, Round

FEATURES = ("roll", "pitch", "yaw", "wind_speed_rps", "rps", "voltage")
GROUPS = {"vibration": (0, 1, 2), "rotation": (3, 4), "voltage": (5,)}


class Source:
    backend = type("B", (), {"model": ModelRef("wt", 1), "manifest": {}})()
    preprocessor = type("P", (), {"groups": GROUPS, "features": FEATURES})()


def make_round(n: int, rng: np.random.Generator) -> Round:
    model = ModelRef("wt", 1)
    values = rng.gamma(2.0, 0.2, (n, 6))
    flags = values > 1.0
    groups = np.stack([flags[:, list(ix)].any(axis=1) for ix in GROUPS.values()], axis=1)
    decisions = [Decision("p", f"turbine-{i}", time.time(), tuple(values[i]), tuple(flags[i]),
                          dict(zip(GROUPS, groups[i].tolist(), strict=True)), model)
                 for i in range(n)]
    x = rng.standard_normal((n, 1, 6, 10, 10))
    return Round("p", decisions, FEATURES, [1.0] * 6, time.time(), time.monotonic(),
                 model_io=(x, x), values=values, anomalous=flags, group_flags=groups)


def per_round_us(enabled: bool, rnd: Round, rounds: int, root: Path) -> float:
    spec = PipelineCaptureSpec.model_validate({
        "rate": {"every": 100}, "sketches": {"enabled": enabled},
        "destination": {"type": "disk", "path": str(root / "out")}})
    capture = PipelineCapture("p", spec, device="bench", root=root / f"spool-{enabled}",
                              counters=Counters(), source=Source())
    capture.queue.put_nowait = lambda item: None  # measure the decision path only
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            capture.on_round(rnd)
        best = min(best, (time.perf_counter() - started) / rounds)
    if enabled:
        record = capture.sketcher.partial(time.time())[0]
        day = gzip.compress(encode_sketch(record) * 24)
        print(f"a day of sketch records (24, one pipeline): {len(day)} bytes gzip'ed; "
              f"one record {len(encode_sketch(record))} bytes raw")
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turbines", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    rnd = make_round(args.turbines, np.random.default_rng(1))
    with tempfile.TemporaryDirectory() as tmp:
        off = per_round_us(False, rnd, args.rounds, Path(tmp))
        on = per_round_us(True, rnd, args.rounds, Path(tmp))
    print(f"on_round, {args.turbines} turbines: sketches off {off:.0f} us, on {on:.0f} us "
          f"(+{on - off:.0f} us a round)")


if __name__ == "__main__":
    main()
