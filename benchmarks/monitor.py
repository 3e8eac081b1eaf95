"""Time to build the edged-cloud monitor report for N devices x D days of hourly sketches.

    .venv/bin/python benchmarks/monitor.py [--devices 1000] [--days 7] [--dir DIR]

Generates the lake (edged_cloud.monitor.synth: one object per device x hour, 2 % of the
devices drifting, 1 % silent for the last day) unless DIR holds one, then times
``report.build`` (DuckDB reading every object, PSI, verdicts) and the HTML report.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edged_cloud.monitor import html, report, synth
from edged_cloud.monitor.lake import Lake


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    start = 1_790_000_000 // 3600 * 3600
    hours = 24 * args.days
    now = start + hours * 3600
    root = args.dir or Path(tempfile.mkdtemp(prefix="edged-monitor-bench-"))
    if not any(root.glob("device=*")):
        devices = [synth.Device(f"dev-{i:05d}") for i in range(args.devices)]
        for d in devices[:: 50]:
            d.drift_feature, d.drift = "yaw", 1.0
        for d in devices[7:: 100]:
            d.silent_from = now - 24 * 3600
        t = time.perf_counter()
        count = synth.write_lake(root, devices, start, hours)
        print(f"wrote {count} objects in {time.perf_counter() - t:.1f} s under {root}")
    size = sum(p.stat().st_size for p in root.rglob("*.jsonl.gz"))
    options = report.Options(now=now, since_s=hours * 3600)
    t = time.perf_counter()
    result = report.build(Lake(str(root)), options)
    built = time.perf_counter() - t
    t = time.perf_counter()
    page = html.render(result, options)
    rendered = time.perf_counter() - t
    print(json.dumps({"devices": result["fleet"]["devices"], "days": args.days,
                      "lake_bytes": size, "report_s": round(built, 2),
                      "html_s": round(rendered, 2), "html_bytes": len(page),
                      "drifted": len(result["fleet"]["drifted"]),
                      "silent": len(result["fleet"]["silent"])}))


if __name__ == "__main__":
    main()
