"""How many minutes of a voltage sensor bias the hourly sketch needs before its PSI
passes the monitor's limit (0.2): the time from a drift's start to a flag, less the wait
for the record to reach the lake.

    .venv/bin/python benchmarks/drift_to_flag.py [--start-min 0] [--ramp-s 600]
        [--turbines 2] [--seed 3] [--json]

Method. The simulated farm (edged.windturbine.simulator.WindFarm, ``--seed``) runs one hour
with a ``bias`` drift on turbine 0 starting ``--start-min`` minutes into the hour and
growing to its full 32 V over ``--ramp-s``. A daemon that stops (or restarts) at minute m
writes the hour's partial sketch: the model inputs (the windturbine preprocessor's, the
newest ``step`` rows of each decision, so every row once at 2 decisions/s) of minutes
0..m, histogrammed over the default edges. That is what this computes, in-process and
for every m at once, without waiting an hour per point: tests/capture/test_sketches.py
checks that a daemon's sketch equals this computation on the same rows. Each partial is
compared (PSI, as ``edged-cloud monitor`` computes it) with two baselines:

- ``same_rows``: the same farm without the drift over the same minutes: the drift's own
  effect, nothing else (the floor any baseline can reach);
- ``previous_hour``: the same farm's healthy hour before: a baseline from other data, as
  a training set or the fleet's first day is; ``control`` is the healthy partial against
  it (the weather's noise, which no drift caused).

Drifts draw no random numbers, so the drifted and healthy farms differ only by the bias.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from edged.model.package import builtin_root, read_manifest
from edged.windturbine.features import WindTurbineParams, WindTurbinePreprocessor, raw_features
from edged.windturbine.layout import DATASET_COLUMNS, FEATURES, INPUTS
from edged.windturbine.simulator import WindFarm, parse_drifts
from edged_cloud.monitor import stats

RATE_HZ = 20
HOUR_S = 3600
#: The flush minutes shown (every minute is computed).
MINUTES = (1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 45, 60)
LIMIT = stats.DEFAULT_PSI_LIMIT


def inputs_per_minute(farm: WindFarm, pre: WindTurbinePreprocessor, params, rows: int,
                      first_minute: int, minutes: int) -> np.ndarray:
    """(minutes, features, bins): each minute's histogram of the model inputs a sketch
    counts, all turbines together, for minutes first_minute .. first_minute+minutes-1."""
    ticks = farm.ticks(rows)
    features = raw_features(ticks[:, :, [DATASET_COLUMNS.index(c) for c in INPUTS]])
    features = features.transpose(1, 0, 2)  # (turbines, rows, features)
    per_minute = RATE_HZ * 60
    out = []
    for minute in range(first_minute, first_minute + minutes):
        ends = range(minute * per_minute + params.step, (minute + 1) * per_minute + 1,
                     params.step)
        buffers = np.concatenate([features[:, end - params.buffer:end] for end in ends])
        rows_in = stats.newest_rows(pre.windows(buffers), params.step)
        out.append([stats.histogram(row, stats.DEFAULT_INPUT_EDGES) for row in rows_in])
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start-min", type=int, default=0,
                        help="the drift starts this many minutes into the hour")
    parser.add_argument("--ramp-s", type=float, default=600.0,
                        help="seconds the bias takes to grow to its full 32 V")
    parser.add_argument("--turbines", type=int, default=2)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    manifest = read_manifest(builtin_root() / "windturbine-v1").model_dump()
    params = WindTurbineParams.from_manifest(manifest["preprocessing"])
    pre = WindTurbinePreprocessor(params)
    # Simulated hours 0 (the previous one) and 1 (the drifting one); the buffer's rows
    # before each hour come from the hour before it, as on a running daemon.
    t0 = HOUR_S + 60 * args.start_min
    drifts = parse_drifts(f"0:bias@{t0}+{args.ramp_s:g}")
    rows = 2 * HOUR_S * RATE_HZ
    healthy = inputs_per_minute(WindFarm(args.turbines, RATE_HZ, args.seed), pre, params,
                                rows, 1, 119)
    drifted = inputs_per_minute(WindFarm(args.turbines, RATE_HZ, args.seed, drifts=drifts),
                                pre, params, rows, 60, 60)
    previous_hour = healthy[:59].sum(axis=0)  # minutes 1..59 of hour 0
    this_hour = healthy[59:]
    voltage = FEATURES.index("voltage")
    points = []
    for m in range(1, 61):  # a flush at the end of each minute of the hour
        partial = drifted[:m].sum(axis=0)
        same = this_hour[:m].sum(axis=0)
        drift_min = max(0, m - args.start_min)
        points.append({
            "flush_minute": m, "drift_minutes": drift_min,
            "psi_voltage_same_rows": round(float(stats.psi(same, partial)[voltage]), 4),
            "psi_voltage_previous_hour": round(float(
                stats.psi(previous_hour, partial)[voltage]), 4),
            "control_psi_voltage_previous_hour": round(float(
                stats.psi(previous_hour, same)[voltage]), 4),
            "control_psi_max_previous_hour": round(float(np.nanmax(
                stats.psi(previous_hour, same))), 4)})

    def first_over(key: str, control: str | None = None) -> int | None:
        """The first drift minute over the limit, from which on it stays over; with
        ``control``, only where the healthy partial is under it (else a flag says
        nothing about the drift)."""
        over = [p[key] > LIMIT and (control is None or p[control] <= LIMIT)
                for p in points]
        return next((p["drift_minutes"] for i, p in enumerate(points)
                     if p["drift_minutes"] > 0 and all(over[i:])), None)

    result = {"start_min": args.start_min, "ramp_s": args.ramp_s,
              "turbines": args.turbines, "drifting_turbines": 1, "seed": args.seed,
              "psi_limit": LIMIT,
              "drift_minutes_to_flag_same_rows": first_over("psi_voltage_same_rows"),
              "drift_minutes_to_flag_previous_hour": first_over("psi_voltage_previous_hour",
                                                          "control_psi_voltage_previous_hour"),
              "points": [p for p in points if p["flush_minute"] in MINUTES],
              "seconds": round(time.monotonic() - started, 1)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"bias on 1 of {args.turbines} turbines from minute {args.start_min} of the hour, "
          f"full 32 V after {args.ramp_s:g} s; PSI limit {LIMIT}")
    print(f"{'flush min':>9} {'drift min':>9} {'PSI same rows':>13} {'PSI prev hour':>13} "
          f"{'control V':>9} {'control max':>11}")
    for p in points:
        if p["flush_minute"] not in MINUTES:
            continue
        print(f"{p['flush_minute']:>9} {p['drift_minutes']:>9} "
              f"{p['psi_voltage_same_rows']:>13} {p['psi_voltage_previous_hour']:>13} "
              f"{p['control_psi_voltage_previous_hour']:>9} "
              f"{p['control_psi_max_previous_hour']:>11}")
    print(f"drift minutes to PSI > {LIMIT}: {result['drift_minutes_to_flag_same_rows']} "
          f"(same rows), {result['drift_minutes_to_flag_previous_hour']} (previous hour); "
          f"{result['seconds']} s")


if __name__ == "__main__":
    main()
