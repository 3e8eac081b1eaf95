"""What ``edged-cloud optimize`` buys the reference model on this machine: each candidate
(graph optimisation only, dynamic int8, static int8) against fp32, side by side.

    .venv/bin/python benchmarks/optimize.py [--seconds 300] [--repeats 31] [--threads 1]
        [--batch 16] [--json]

Held-out windows are cut from the device's simulator (8 turbines, three with a fault) by
the device's own preprocessing (tests/support/training_out.py), the model is
windturbine-v1, and every figure comes from the code ``edged-cloud optimize`` runs
(``edged_cloud.optimize``): agreement of the device's decisions with fp32, and the median
microseconds per window of both models through the device's session factory, same float32
batches and threads, passes interleaved. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from edged_cloud.optimize import optimize  # noqa: E402
from tests.support import training_out  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=300, help="simulated seconds")
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = training_out.make(Path(tmp) / "train", seconds=args.seconds, stride=20)
        report = optimize(source, Path(tmp) / "out", mode="auto", batch=args.batch,
                          threads=args.threads, repeats=args.repeats)
    report["machine"] = {"cpu": cpu_name(), "cores": os.cpu_count(),
                         "python": platform.python_version(),
                         "load_1min": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['machine']['cpu']}, {report['machine']['cores']} cores, load "
          f"{report['machine']['load_1min']:.2f}; {report['windows']} windows, batch "
          f"{args.batch}, {args.threads} thread(s), median of {args.repeats}")
    for c in report["candidates"]:
        labels = ", ".join(f"{k} {v:.1%}" for k, v in c.get("by_label", {}).items())
        print(f"  {c['quantization']:<8} agreement {c['agreement']:7.2%} ({labels})  "
              f"{c['us_per_window']:7.1f} us/window vs fp32 {c['fp32_us_per_window']:7.1f}  "
              f"speed-up {c['speedup']:.2f}x  {c['bytes']:>7} bytes  "
              f"{'pass' if c['passed'] else 'FAIL'}")
    print(f"chosen: {report['quantization']} (speed-up {report['speedup']:.2f}x, "
          f"agreement {report['agreement']:.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
