"""What watching costs the decision path: the time the decision log (``log.decisions``)
and the watch feed spend in ``on_round``, per 1,000 decisions, one core.

    .venv/bin/python benchmarks/watch.py [--turbines 1000] [--rounds 2000]

Rounds of synthetic decisions (the reference's six features and three groups), healthy
or with 1 % of turbines anomalous, handed to each subscriber as a pipeline hands them
over. The logger is configured as the daemon does (JSON lines, to /dev/null), at info
(decisions logged) or at warning (below the decision log's level). The feed is measured
without a watcher, and with one watcher asking for anomalies or for every decision
(each decision encoded once; its queue drained between rounds, as the socket would).
Reported: microseconds per 1,000 decisions (median and p99 over the rounds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from edged.base.log import configure_logging  # noqa: E402
from edged.base.metrics import Counters  # noqa: E402
from edged.plugin.events import Decision, ModelRef, Round  # noqa: E402
from edged.watch.decision_log import DecisionLog  # noqa: E402
from edged.watch.feed import EventFeed  # noqa: E402

FEATURES = ("roll", "pitch", "yaw", "wind_speed_rps", "rps", "voltage")
THRESHOLDS = [1.08, 0.76, 1.0, 0.84, 0.83, 0.91]
MODEL = ModelRef("windturbine", 1)


def a_round(turbines: int, anomalous_every: int | None, at: float) -> Round:
    decisions = []
    for i in range(turbines):
        bad = anomalous_every is not None and i % anomalous_every == 0
        decisions.append(Decision(
            pipeline="turbines", turbine=f"turbine-{i}", time=at,
            values=tuple(t * (3.0 if bad else 0.4) for t in THRESHOLDS),
            anomalous=(bad,) * 6,
            groups={"vibration": bad, "rotation": bad, "voltage": bad}, model=MODEL,
            primary="vibration" if bad else None, rows=1000 + i))
    return Round(pipeline="turbines", decisions=decisions, features=FEATURES,
                 thresholds=THRESHOLDS, time=at, monotonic=at)


def timed(subscriber, turbines: int, rounds: int, anomalous_every: int | None,
          drain=lambda: None) -> tuple[float, float]:
    per_round = []
    for n in range(rounds):
        round_ = a_round(turbines, anomalous_every, 1000.0 + n * 0.5)
        started = time.perf_counter()
        subscriber.on_round(round_)
        per_round.append(time.perf_counter() - started)
        drain()
    scale = 1e6 * 1000 / turbines
    per_round.sort()
    return (statistics.median(per_round) * scale,
            per_round[int(len(per_round) * 0.99)] * scale)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turbines", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    results = {}
    with open("/dev/null", "w") as devnull, contextlib.redirect_stderr(devnull):
        for level in ("info", "warning"):
            configure_logging(level, "json")
            for mode in ("anomalies", "all"):
                for label, every in (("healthy", None), ("1 % anomalous", 100)):
                    results[f"decision log {mode}, log level {level}, {label}"] = timed(
                        DecisionLog(mode), args.turbines, args.rounds, every)
        feed = EventFeed("bench", Counters())
        for label, every in (("healthy", None), ("1 % anomalous", 100)):
            results[f"feed, nobody watching, {label}"] = timed(
                feed, args.turbines, args.rounds, every)
        for interest in ("anomalies", "all"):
            watcher = feed.subscribe(interest, limit=10 ** 7)
            for label, every in (("healthy", None), ("1 % anomalous", 100)):
                results[f"feed, one watcher ({interest}), {label}"] = timed(
                    feed, args.turbines, args.rounds, every, drain=watcher._lines.clear)
            watcher.close()
    print(f"{platform.python_version()} on {cpu_name()}, {args.turbines} turbines a round, "
          f"{args.rounds} rounds; microseconds per 1,000 decisions (median, p99):")
    width = max(map(len, results))
    for name, (median, p99) in results.items():
        print(f"  {name:<{width}}  {median:9.1f}  {p99:9.1f}")
    print(json.dumps({k: {"median_us": round(m, 1), "p99_us": round(p, 1)}
                      for k, (m, p) in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
