"""Issue 13, item 4: the capture spool on a full disk.

    sudo .venv/bin/python benchmarks/abuse/spool_full.py [--tree PATH] [--duration 60]
                                                         [--min-free-mb MB]

A real ``edged run`` (of the tree at ``--tree``: its checkout, by default) captures every
decision of a 20-turbine simulated farm into a spool on a 2 MB tmpfs, S3 unreachable (an
endpoint on a closed port), for ``--duration`` seconds; then a second start on the full
disk for a quarter of that. Needs root (the tmpfs mount). ``--min-free-mb`` adds the
spool's free-space reserve to the config (a tree without the setting refuses it).

Prints one JSON object: whether each run lived until SIGTERM (else its exit code and
when it ended), the decisions it made (from /metrics, scraped every second), its exit
code on SIGTERM, the capture drops by reason, the refusing flag, and the spool's bytes as
counted (edged_spool_bytes) against what its files take on disk (du).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(state: Path, port: int, min_free_mb: float | None) -> str:
    reserve = "" if min_free_mb is None else f", min_free_mb: {min_free_mb}"
    return f"""\
device: {{id: bench-full}}
state_dir: {state}
log: {{level: info, stats_interval_s: 0}}
metrics: {{listen: "127.0.0.1:{port}"}}
sources:
  farm: {{type: simulator, turbines: 20, rate_hz: 20, seed: 3, history_s: 25}}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx, model: "builtin:windturbine-v1"}}
    interval_s: 0.3
    capture:
      rate: {{every: 1}}
      spool: {{budget_mb: 64{reserve}}}
      upload: {{interval_s: 1, retry_backoff_s: 0.5, max_backoff_s: 2}}
      destination: {{type: s3, bucket: nowhere, region: us-east-1,
                     endpoint_url: "http://127.0.0.1:{free_port()}"}}
"""


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as reply:
        text = reply.read().decode()
    figures = {}
    for line in text.splitlines():
        found = re.fullmatch(r"([a-z_]+(?:\{[^}]*\})?) (\S+)", line)
        if found and not line.startswith("#"):
            figures[found[1]] = float(found[2])
    return figures


def on_disk(directory: Path) -> int:
    return sum(os.stat(Path(root) / name).st_blocks * 512
               for root, _, names in os.walk(directory) for name in names)


def run(tree: Path, path: Path, port: int, seconds: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_EC2_METADATA_DISABLED": "true"}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=tempfile.gettempdir())
    last: dict[str, float] = {}
    while time.monotonic() - started < seconds and proc.poll() is None:
        time.sleep(1.0)
        with contextlib.suppress(OSError, ValueError):
            last = scrape(port)
    lived = proc.poll() is None
    ended_after = None if lived else round(time.monotonic() - started, 1)
    if lived:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    errors = [line for line in proc.stderr.read().splitlines() if "Error" in line]
    return {
        "lived_until_sigterm": lived,
        "ended_after_s": ended_after,
        "exit_code": code,
        "decisions": int(sum(v for k, v in last.items()
                             if k.startswith("edged_decisions_total"))),
        "capture_records": int(sum(v for k, v in last.items()
                                   if k.startswith("edged_capture_records_total"))),
        "dropped": {re.search(r'reason="([^"]+)"', k)[1]: int(v) for k, v in last.items()
                    if k.startswith("edged_capture_dropped_total")},
        "refusing": last.get("edged_spool_refusing"),
        "spool_bytes_counted": last.get("edged_spool_bytes"),
        "last_error": errors[-1][:200] if errors else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=HERE)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--min-free-mb", type=float, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(state)],
                       check=True)
        try:
            port = free_port()
            path = Path(tmp) / "edged.yaml"
            path.write_text(config(state, port, args.min_free_mb))
            first = run(args.tree, path, port, args.duration)
            second = run(args.tree, path, port, args.duration / 4)
            segments = state / "capture" / "turbines" / "segments"
            result = {
                "tree": str(args.tree), "min_free_mb": args.min_free_mb,
                "duration_s": args.duration, "first_start": first,
                "second_start_on_full_disk": second,
                "spool_bytes_du": on_disk(segments) if segments.is_dir() else 0,
                "segment_files": len(os.listdir(segments)) if segments.is_dir() else 0,
                "filesystem_free_bytes": os.statvfs(state).f_bavail
                * os.statvfs(state).f_frsize,
            }
        finally:
            subprocess.run(["umount", "-l", str(state)], check=False)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
