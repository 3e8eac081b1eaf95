"""A rollout at fleet scale: a good model and then a tampered one rolled out to N simulated
devices through the local jobs service, with ``edged-cloud deploy``'s default rollout and
abort settings (see edged_cloud.fleet_demo.fleet_scale for what is real and what is light).

    .venv/bin/python benchmarks/fleet_rollout.py [--devices 1000] [--minute-s 1] [--json]

Reported: how many devices the tampered model reached before the abort criteria canceled
it, and the good model's rollout time in rollout minutes and in real time (the measured
time times 60 / --minute-s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--minute-s", type=float, default=1.0,
                        help="how long a minute of the rollout rules lasts (default 1: "
                             "60x faster than real)")
    parser.add_argument("--device-s", type=float, default=10.0,
                        help="a device's work per execution in real seconds (download, "
                             "verification, golden pairs, swap; default 10)")
    parser.add_argument("--things-per-client", type=int, default=1,
                        help="devices sharing one MQTT connection (default 1)")
    parser.add_argument("--max-rate", type=int, help="deploy's --max-rate (default none)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.minute_s <= 0 or args.device_s < 0 or \
            args.things_per_client < 1:
        parser.error("--devices and --things-per-client >= 1, --minute-s > 0, "
                     "--device-s >= 0")

    from edged_cloud.fleet_demo import fleet_scale
    from edged_cloud.rollout import RolloutSettings

    figures = asyncio.run(fleet_scale.simulate(
        args.devices, args.minute_s, args.device_s, args.things_per_client,
        RolloutSettings(maximum_per_minute=args.max_rate)))
    print(json.dumps(figures, indent=2) if args.json else fleet_scale.text(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
