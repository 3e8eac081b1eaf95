"""What edged itself costs on a shared gateway: its own CPU and memory at 100 and 1,000
turbines at 20 Hz through a real mosquitto, with the broker and the publisher on another
core, and its memory idle with the production config (issue 20).

    .venv/bin/python benchmarks/lean.py [--baseline REV] [--runs 1000:1 1000:10 ...]
                                        [--seconds 20] [--repeat 1] [--memory-map]
                                        [--threads] [--format csv|json] [--no-idle]
                                        [--json]

A run ``N:K``: N turbines publish on ``turbines/<id>/raw`` (CSV, or JSON objects with
``--format json``; QoS 0, K rows per message: 40 probe turbines from this process, the
rest from ``edged simulate``); the daemon (``configs`` of turbine_bus.py: the mqtt
source, the reference model, the mqtt actuator) decides each turbine twice a second. The
daemon runs on CPU 1, this process, mosquitto and the publisher on CPU 0 (``taskset``;
the output says when they could not be pinned). Over a ``--seconds`` window once the
history is in:

* ``published/s``: rows the publishers achieved (``edged simulate``'s own live rate, plus
  the probes'); ``readings/s``: rows the daemon accepted; ``lost``: published minus
  accepted over the whole run (after a drain);
* ``decisions/s``; ``p50``/``p99``: a probe's newest reading published -> its alarm at a
  subscriber (turbine_bus.py says how it is exact);
* ``CPU``: the daemon's utime + stime over the window (1.00 = one core), its threads
  included; ``CPU0``: what this process, the broker and the publisher used meanwhile
  (near 1.00 means the publisher side, not edged, is the limit);
* ``RSS``: the daemon's VmRSS at the end of the window, ``peak``: its VmHWM.

Then ``idle``: ``configs/edged.yaml`` (the config systemd/install.sh installs) with its
broker and state directory pointed here, the environment of ``systemd/edged.service``,
nothing published: VmRSS 10 s after the graph started.

``--baseline REV`` measures the code at git revision REV the same way (a ``git worktree``
in a temporary directory, run with this venv), each run right after the current tree's,
and prints the ratios current / REV. ``--memory-map`` adds the resident memory of each
daemon by mapping (anonymous memory, each shared library) from /proc/PID/smaps,
``--threads`` its CPU by thread from /proc/PID/task (``main`` is the event loop; the
busiest other one, the pipeline's worker: preprocessing and the model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_name  # noqa: E402
from benchmarks.turbine_bus import (  # noqa: E402
    DAEMON_CPU,
    REST_CPU,
    ROOT,
    Daemon,
    Scenario,
    memory_map_mb,
    pinning,
    print_table,
)
from tests.support import Mosquitto  # noqa: E402

COLUMNS = [
    ("code", "code", 8, "s"), ("turbines", "turbines", 8, "d"), ("rows/msg", "batch", 8, "d"),
    ("published/s", "published_per_s", 11, ".0f"), ("readings/s", "readings_per_s", 10, ".0f"),
    ("lost", "lost", 7, "d"), ("decisions/s", "decisions_per_s", 11, ".0f"),
    ("p50 ms", "p50_ms", 7, ".1f"), ("p99 ms", "p99_ms", 8, ".1f"), ("alarms", "alarms", 6, "d"),
    ("CPU", "cpu", 5, ".2f"), ("CPU0", "rest_cpu", 5, ".2f"),
    ("RSS MB", "rss_mb", 7, ".1f"), ("peak MB", "peak_rss_mb", 7, ".1f"),
]
RATIOS = ("cpu", "rss_mb", "peak_rss_mb", "p50_ms", "p99_ms")
IDLE_SECONDS = 10.0


def production_config(tree: Path, port: int, state_dir: Path) -> str:
    """``tree``'s configs/edged.yaml with its brokers and state directory pointed here."""
    config = yaml.safe_load((tree / "configs" / "edged.yaml").read_text())
    config["state_dir"] = str(state_dir)
    for section in ("sources", "actuators"):
        for component in config.get(section, {}).values():
            if "broker" in component:
                component["broker"].update(host="127.0.0.1", port=port)
    return yaml.safe_dump(config)


def idle(tree: Path, pin: bool, memory_map: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as broker:
        config = Path(tmp) / "edged.yaml"
        config.write_text(production_config(tree, broker.port, Path(tmp) / "state"))
        daemon = Daemon(config, tree, DAEMON_CPU if pin else None)
        try:
            if not daemon.started.wait(60):
                raise RuntimeError(f"edged did not start: {daemon.errors}")
            time.sleep(IDLE_SECONDS)
            rss, peak = daemon.memory_mb()
            mapped = memory_map_mb(daemon.pid) if memory_map else {}
        finally:
            daemon.stop()
    return {"rss_mb": rss, "peak_rss_mb": peak, "memory_map": mapped}


def worktree(rev: str, directory: Path) -> Path:
    path = directory / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT,
                   check=True, capture_output=True, text=True)
    return path


def ratio(new: float, old: float) -> str:
    return f"{new / old:.2f}" if old else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", metavar="N:K",
                        default=["100:1", "100:10", "1000:1", "1000:10"],
                        help="turbines : rows per message")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure git revision REV, run by run")
    parser.add_argument("--repeat", type=int, default=1, help="each run this many times")
    parser.add_argument("--memory-map", action="store_true",
                        help="resident memory by mapping, per daemon")
    parser.add_argument("--threads", action="store_true",
                        help="the daemon's CPU by thread, per run")
    parser.add_argument("--format", choices=("csv", "json"), default="csv",
                        help="what the turbines publish: CSV lines or JSON objects")
    parser.add_argument("--no-idle", action="store_true", help="skip the idle run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    runs = [tuple(int(x) for x in r.split(":")) for r in args.runs]
    why_not = pinning()
    head = (f"machine: {cpu_name()}, {os.cpu_count()} cores; "
            + (f"daemon on CPU {DAEMON_CPU}, broker and publishers on CPU {REST_CPU}"
               if why_not is None else f"NOT pinned: {why_not}"))
    say = (lambda *a, **k: None) if args.json else print
    say(head)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"current": ROOT}
        if args.baseline:
            trees[args.baseline[:8]] = worktree(args.baseline, Path(tmp))
        try:
            results = measure(trees, runs, args, say)
        finally:
            if args.baseline:
                subprocess.run(["git", "worktree", "remove", "--force",
                                str(trees[args.baseline[:8]])], cwd=ROOT, check=False)
    if args.json:
        print(json.dumps({"machine": head, **results}, indent=1))
    return 0


def measure(trees: dict[str, Path], runs: list, args: argparse.Namespace, say) -> dict:
    rows: list[dict] = []
    if not args.json:
        print()
        print_table(COLUMNS, [])
    for turbines, batch in runs:
        for _ in range(args.repeat):
            for code, tree in trees.items():
                row = Scenario(turbines, batch, 0.5, args.seconds, format=args.format,
                               tree=tree, pin=True, memory_map=args.memory_map).run()
                row["code"] = code
                rows.append(row)
                if not args.json:
                    print_table(COLUMNS, [row], header=False)
    idles = {}
    if not args.no_idle:
        for code, tree in trees.items():
            idles[code] = [idle(tree, True, args.memory_map) for _ in range(args.repeat)]
        say("\nidle, production config: " + "; ".join(
            f"{code} RSS {statistics.median(r['rss_mb'] for r in runs_):.1f} MB "
            f"(peak {statistics.median(r['peak_rss_mb'] for r in runs_):.1f})"
            for code, runs_ in idles.items()))
    if len(trees) == 2:
        say(f"\nratios current / {list(trees)[1]} (medians):")
        for turbines, batch in runs:
            pair = [[r for r in rows if r["code"] == code and r["turbines"] == turbines
                     and r["batch"] == batch] for code in trees]
            say(f"  {turbines}:{batch}  " + "  ".join(
                f"{key} {ratio(*(statistics.median(r[key] for r in side) for side in pair))}"
                for key in RATIOS))
        if idles:
            new, old = (statistics.median(r["rss_mb"] for r in idles[c]) for c in trees)
            say(f"  idle  rss_mb {ratio(new, old)}")
    if args.threads:
        for row in rows:
            say(f"\nCPU by thread, {row['code']} {row['turbines']}:{row['batch']} (cores): "
                + ", ".join(f"{name} {cores:.3f}" for name, cores in row["thread_cpu"].items()
                            if cores >= 0.001))
    if args.memory_map:
        for row in rows:
            say(f"\nmemory by mapping, {row['code']} {row['turbines']}:{row['batch']} (MB):")
            say(_mapping(row["memory_map"]))
        for code, runs_ in idles.items():
            say(f"\nmemory by mapping, {code} idle (MB):")
            say(_mapping(runs_[0]["memory_map"]))
    return {"runs": rows, "idle": idles}


def _mapping(mapped: dict[str, float], top: int = 12) -> str:
    items = list(mapped.items())
    lines = [f"  {name:<40} {mb:7.1f}" for name, mb in items[:top]]
    rest = sum(mb for _, mb in items[top:])
    lines.append(f"  {'everything else':<40} {rest:7.1f}")
    lines.append(f"  {'total':<40} {sum(mapped.values()):7.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
