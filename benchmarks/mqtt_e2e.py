"""End to end through a real broker: ``edged simulate`` -> mosquitto -> ``edged run`` ->
alarm -> a subscriber, all on this machine.

    .venv/bin/python benchmarks/mqtt_e2e.py [--runs 100:1:0.5 1000:10:0.5 ...]

A run ``N:K:I``: N turbines at 20 Hz publish on ``turbines/<id>/raw`` (CSV, QoS 0; K rows
per message), the daemon decides every turbine every I seconds (0.5: twice a second) and
its ``mqtt`` actuator publishes alarms (QoS 1). Reported: readings/s
received, readings lost (published minus accepted, over the whole run), decisions/s, the
latency from the publish of the newest reading a decision used to the arrival of its alarm
at a subscriber (p50/p99), and the daemon's RSS and CPU. How latency is measured:
``turbine_bus.py``. Nothing is pinned here: ``lean.py`` pins the daemon to its own core.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.turbine_bus import Scenario, print_table  # noqa: E402

# (title, key, width, format) of each printed column
COLUMNS = [
    ("turbines", "turbines", 8, "d"), ("rows/msg", "batch", 8, "d"),
    ("every s", "interval", 7, "g"), ("readings/s", "readings_per_s", 10, ".0f"),
    ("lost", "lost", 6, "d"), ("decisions/s", "decisions_per_s", 11, ".0f"),
    ("p50 ms", "p50_ms", 7, ".1f"), ("p99 ms", "p99_ms", 7, ".1f"),
    ("p99 to decision", "decide_p99_ms", 15, ".1f"), ("alarms", "alarms", 6, "d"),
    ("RSS MB", "rss_mb", 7, ".1f"), ("peak MB", "peak_rss_mb", 7, ".1f"),
    ("CPU", "cpu", 5, ".0%"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", metavar="N:K:I",
                        default=["100:1:0.5", "500:1:0.5", "1000:1:0.5", "1000:10:0.5",
                                 "1000:1:1"],
                        help="turbines : rows per message : decision interval (s)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window")
    args = parser.parse_args()
    runs = [(int(n), int(k), float(i)) for n, k, i in (r.split(":") for r in args.runs)]
    print_table(COLUMNS, [])
    for turbines, batch, interval in runs:
        print_table(COLUMNS, [Scenario(turbines, batch, interval, args.seconds).run()],
                    header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
