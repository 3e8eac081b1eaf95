"""Bytes a device uploads a day for monitoring: hourly sketch records against a 1 %
sample of raw decisions with their input window, measured from a running ``edged run``
(a simulated farm, capture to a Disk destination, gzip'ed JSONL objects as uploaded).

    .venv/bin/python benchmarks/sketch_bytes.py [--turbines 10] [--seconds 150]

Sketches: a record's size does not grow with the decisions it counts (its counts gain a
few digits), so a day is 24 records per pipeline x model version; the figure is
24 x the gzip'ed size of the sketch the daemon wrote (the open hour's partial at the
stop, or the same with its counts scaled to a full hour's, whichever is larger), each
as an object of its own (the worst case: the upload may batch it with others).
The sample: the decision objects the same daemon uploaded (plus what its spool still
held at the stop, gzip'ed the same way), bytes per record x records per second
measured per turbine between its first and last captured decision, x 86,400.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

DAY_S = 86_400


def config(root: Path, turbines: int, every: int) -> dict:
    return {
        "device": {"id": "bench-1"},
        "log": {"level": "warning", "format": "json", "stats_interval_s": 0},
        "state_dir": str(root / "state"),
        "sources": {"farm": {"type": "simulator", "turbines": turbines, "rate_hz": 20,
                             "seed": 1, "history_s": 25}},
        "pipelines": {"wt": {
            "inputs": ["farm"],
            "preprocessor": {"type": "windturbine"},
            "inference": {"type": "onnx", "model": "builtin:windturbine-v1"},
            "capture": {
                "rate": {"every": every},
                "spool": {"include_window": True, "fsync": "batch"},
                "upload": {"interval_s": 5},
                "destination": {"type": "disk", "path": str(root / "out")},
            },
        }},
    }


def records(root: Path) -> tuple[list[bytes], list[bytes], int]:
    """The decision and sketch lines (uploaded and still spooled), and the bytes of the
    uploaded objects that hold decisions only."""
    decisions, sketches, uploaded = [], [], 0
    for path in sorted((root / "out").rglob("*.jsonl.gz")):
        lines = gzip.decompress(path.read_bytes()).splitlines()
        kinds = {json.loads(line)["kind"] for line in lines}
        if kinds == {"decision"}:
            uploaded += path.stat().st_size
        for line in lines:
            (sketches if json.loads(line)["kind"] == "sketch" else decisions).append(line)
    for path in sorted((root / "state").rglob("segments/*.jsonl")):
        for line in path.read_bytes().splitlines():
            (sketches if json.loads(line)["kind"] == "sketch" else decisions).append(line)
    return decisions, sketches, uploaded


def gz(lines: list[bytes]) -> int:
    return len(gzip.compress(b"".join(line + b"\n" for line in lines)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turbines", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--every", type=int, default=100, help="sample 1 in N (100: 1 %%)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "edged.yaml"
        path.write_text(yaml.safe_dump(config(root, args.turbines, args.every)))
        edged = Path(sys.executable).with_name("edged")
        started = time.monotonic()
        proc = subprocess.Popen([str(edged), "run", "-c", str(path)],
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            time.sleep(args.seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
        ran = time.monotonic() - started
        decisions, sketches, uploaded = records(root)
    assert rc == 0, f"edged run exited {rc}"
    assert sketches, "no sketch record: were sketches off?"
    parsed = [json.loads(line) for line in sketches]
    latest = max(parsed, key=lambda r: r["time"])
    sketch_line = next(line for line, r in zip(sketches, parsed, strict=True)
                       if r is latest)
    # The rate per turbine, summed: the counter mode picks each turbine's first decision
    # and every N-th after, so the farm's picks come in bursts; first to last of each
    # turbine spans whole periods.
    by_turbine: dict[str, list[float]] = {}
    for line in decisions:
        record = json.loads(line)
        by_turbine.setdefault(record["turbine"], []).append(record["time"])
    rate = sum((len(t) - 1) / (max(t) - min(t)) for t in by_turbine.values() if len(t) > 1)
    span = max(max(t) - min(t) for t in by_turbine.values()) if by_turbine else 0.0
    per_record = gz(decisions) / len(decisions) if decisions else 0.0
    # The same record with an hour's counts (every count scaled to 2 decisions a second
    # per turbine for 3,600 s): the few digits more a final record has.
    scale = 2 * 3600 * args.turbines / max(latest["decisions"], 1)
    full = {**latest, **{name: [[round(c * scale) for c in row] for row in latest[name]]
                         for name in ("input_counts", "error_counts")},
            "decisions": round(latest["decisions"] * scale)}
    full_gz = gz([json.dumps(full).encode()])
    sketch_day = 24 * max(gz([sketch_line]), full_gz)
    sample_day = per_record * rate * DAY_S
    print(json.dumps({
        "turbines": args.turbines, "ran_s": round(ran, 1),
        "sketch": {"records": len(sketches), "decisions_counted": latest["decisions"],
                   "json_bytes": len(sketch_line), "gzip_bytes": gz([sketch_line]),
                   "gzip_bytes_full_hour": full_gz,
                   "bytes_per_day": sketch_day},
        "sample": {"every": args.every, "records": len(decisions),
                   "span_s": round(span, 1), "records_per_s": round(rate, 3),
                   "uploaded_object_bytes": uploaded,
                   "gzip_bytes_per_record": round(per_record, 1),
                   "records_per_day": round(rate * DAY_S),
                   "bytes_per_day": round(sample_day)},
        "sample_over_sketch": round(sample_day / sketch_day, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
