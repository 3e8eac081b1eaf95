"""Issue 13, items 2 and 3: what hostile config files do to ``check-config`` and to a
running daemon's SIGHUP reload, for the tree at ``--tree``.

    .venv/bin/python benchmarks/abuse/config_abuse.py [--tree PATH] [--window 15]

Writes the hostile files of ``tests.support.hostile_configs`` (this checkout's): not
UTF-8, 100,000 levels of nesting, a 9-level alias bomb, a recursive alias, a 5,000-digit
integer, a 1 MB file of 500,000 nodes and a valid config followed by 50 MB of comments.
Then, with edged imported from ``--tree`` (default: the checkout this script lives in):

1. ``edged check-config FILE`` for each: exit code, wall time, peak RSS, whether it
   printed a traceback (killed after ``--window`` s: exit -9);
2. one ``edged run`` of a simulated 3-turbine farm (decisions every 0.1 s, a ``stats``
   log line from the event loop every 0.2 s), sent SIGHUP after the file is overwritten
   with each hostile file in turn (the good file put back after each): whether the
   daemon survived, what it logged (reload_refused and its reason, or config_reloaded),
   and the longest time without a stats line from the SIGHUP until ``--window`` s later
   or the outcome plus 2 s (the event loop held: no decisions, no /metrics, no watchdog).
   A daemon that died or is still held at the end of the window is started again.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(HERE))

from tests.support import LoggedProcess, hostile_configs, run_measured  # noqa: E402

GOOD = """\
device: {{id: abuse}}
state_dir: {state}
log: {{level: info, format: json, stats_interval_s: 0.2}}
sources:
  farm: {{type: simulator, turbines: 3, rate_hz: 20, seed: 3, history_s: 25}}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx, model: "builtin:windturbine-v1"}}
    interval_s: 0.1
"""


def check_config(tree: Path, path: Path, window: float) -> dict:
    done = run_measured(["edged", "check-config", str(path)], timeout=window, cwd=tree,
                        env={"PYTHONPATH": str(tree)})
    lines = done.stderr.strip().splitlines()
    return {"exit": done.returncode, "seconds": round(done.seconds, 2),
            "peak_rss_mb": round(done.peak_rss_mb), "traceback": "Traceback" in done.stderr,
            "said": (lines[-1] if "Traceback" in done.stderr else lines[0])[:160]
            if lines else ""}


def _stamp(line: dict) -> float:
    return datetime.fromisoformat(line["timestamp"]).timestamp()


class Daemon:
    def __init__(self, tree: Path, config: Path) -> None:
        self.tree, self.config = tree, config
        self.proc: LoggedProcess | None = None
        self.starts = 0

    async def ensure(self) -> LoggedProcess:
        if self.proc is None or self.proc.proc.poll() is not None:
            self.starts += 1
            self.proc = LoggedProcess(["edged", "run", "-c", str(self.config)],
                                      env={"PYTHONPATH": str(self.tree),
                                           "PYTHONUNBUFFERED": "1"}, cwd=self.tree)
            await self.proc.wait_for("graph_started", 60)
            await self.proc.wait_for("stats", 10)
        return self.proc

    def kill(self) -> None:
        if self.proc is not None and self.proc.proc.poll() is None:
            self.proc.kill()
        self.proc = None


async def sighup(daemon: Daemon, good: str, hostile: Path, window: float) -> dict:
    proc = await daemon.ensure()
    seen = len(proc.lines)
    shutil.copyfile(hostile, daemon.config)
    sent = time.time()
    proc.proc.send_signal(signal.SIGHUP)
    outcome, reason = "none within the window", None
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        new = proc.lines[seen:]
        done = [line for line in new if line.get("event") in ("reload_refused",
                                                                "config_reloaded")]
        if done:
            outcome, reason = done[0]["event"], done[0].get("reason")
            break
        if proc.proc.poll() is not None:
            outcome = f"exited {proc.proc.poll()}"
            break
        await asyncio.sleep(0.05)
    if proc.proc.poll() is None and outcome != "none within the window":
        await asyncio.sleep(2)  # decisions after the outcome
    end = time.time()
    stamps = [sent, *(_stamp(line) for line in proc.lines[seen:]
                      if line.get("event") == "stats"), end]
    alive = proc.proc.poll() is None
    daemon.config.write_text(good)
    if not alive or outcome == "none within the window":
        daemon.kill()
    return {"survived": alive, "outcome": outcome, "reason": reason,
            "longest_gap_s": round(max(b - a for a, b in zip(stamps, stamps[1:],
                                                               strict=False)), 2)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=HERE)
    parser.add_argument("--window", type=float, default=15.0,
                        help="seconds a check-config or a SIGHUP is given")
    args = parser.parse_args()
    tree = args.tree.resolve()
    with tempfile.TemporaryDirectory() as work:
        directory = Path(work)
        good = GOOD.format(state=directory / "state")
        files = hostile_configs(directory, good)
        result: dict = {"tree": str(tree), "window_s": args.window, "check_config": {},
                        "sighup": {}}
        for name, (path, _) in files.items():
            result["check_config"][name] = check_config(tree, path, args.window)
        config = directory / "edged.yaml"
        config.write_text(good)
        daemon = Daemon(tree, config)
        try:
            for name, (path, _) in files.items():
                result["sighup"][name] = await sighup(daemon, good, path, args.window)
        finally:
            daemon.kill()
        result["daemon_starts"] = daemon.starts
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
