"""The fleet report: per device and model version, from the lake's sketches and records.

Verdicts: ``drifted`` (a feature's PSI against the baseline over ``psi_limit``), ``silent``
(nothing heard for longer than ``silent_after_s``: the newest record in the lake, or
heartbeat when given), ``behind`` (not on the newest version the fleet runs), and a
rollout in progress (the fleet's devices on mixed versions in the last hour).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from edged_cloud.monitor import baseline as baselines
from edged_cloud.monitor import stats
from edged_cloud.monitor.lake import Lake

HOUR = 3600.0


@dataclass
class Options:
    now: float
    since_s: float = 7 * 86400
    silent_after_s: float = 2 * HOUR
    psi_limit: float = stats.DEFAULT_PSI_LIMIT
    ks_alpha: float = 0.01
    baselines: dict = field(default_factory=dict)  # version (int) or None -> Baseline
    heartbeats: str | None = None


@dataclass
class Series:
    """One device x version: sums over the period and the hourly decisions/anomalous."""
    features: list[str]
    input_edges: list[float]
    error_edges: list[float]
    thresholds: list[float]
    input_counts: np.ndarray
    error_counts: np.ndarray
    decisions: int = 0
    anomalous: int = 0
    hours: dict = field(default_factory=dict)   # period_start -> [decisions, anomalous]
    first_day: np.ndarray | None = None


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def gather(lake: Lake, since: float, since_date: str) -> dict:
    """(device, version) -> Series from the newest sketch of each key."""
    series: dict[tuple[str, int], Series] = {}
    rows = lake.shared("latest_sketches", since=since, since_date=since_date)
    for (device, _pipeline, _model, version, start, _time, _final, _turbines, decisions,
         anomalous, _stale, features, in_edges, in_counts, err_edges, err_counts,
         thresholds) in rows:
        key = (device, int(version))
        counts = np.asarray(in_counts, dtype=np.int64)
        errors = np.asarray(err_counts, dtype=np.int64)
        s = series.get(key)
        if s is None or counts.shape != s.input_counts.shape:
            if s is not None:  # edges changed within one version: keep the newer shape
                continue
            s = series[key] = Series(list(features), list(in_edges), list(err_edges),
                                     list(thresholds), np.zeros_like(counts),
                                     np.zeros_like(errors))
        s.input_counts += counts
        if errors.shape == s.error_counts.shape:
            s.error_counts += errors
        s.decisions += int(decisions or 0)
        s.anomalous += int(anomalous or 0)
        hour = s.hours.setdefault(float(start), [0, 0, np.zeros_like(counts)])
        hour[0] += int(decisions or 0)
        hour[1] += int(anomalous or 0)
        hour[2] += counts
    return series


def fleet_baselines(series: dict) -> dict:
    """Per version: the fleet's first FIRST_HOURS of sketches, summed."""
    first: dict[int, float] = {}
    for (_device, version), s in series.items():
        first[version] = min(first.get(version, math.inf), *s.hours)
    out: dict[int, baselines.Baseline] = {}
    for (_device, version), s in series.items():
        limit = first[version] + baselines.FIRST_HOURS * HOUR
        total = sum((h[2] for start, h in s.hours.items() if start < limit),
                    np.zeros_like(s.input_counts))
        if version in out and out[version].expected.shape == total.shape:
            out[version].expected += total
        elif version not in out:
            out[version] = baselines.Baseline(s.input_edges, total.astype(float),
                                              "fleet-first-24h")
    for b in out.values():
        b.expected = stats.proportions(b.expected)
    return out


def ks_by_device(lake: Lake, since: float, since_date: str, features: dict) -> dict:
    """(device, version) -> per feature (D, p) of its sampled windows against the other
    devices' of the same version."""
    samples: dict[tuple[str, int], list] = defaultdict(list)
    for device, version, window in lake.windows(since, since_date):
        arr = np.asarray(window, dtype=float)
        if arr.ndim == 2 and arr.size:
            samples[(device, int(version))].append(arr)
    stacked = {k: np.concatenate(v) for k, v in samples.items()}
    out = {}
    for (device, version), mine in stacked.items():
        others = [a for (d, v), a in stacked.items() if v == version and d != device
                  and a.shape[1] == mine.shape[1]]
        if not others:
            continue
        rest = np.concatenate(others)
        names = features.get((device, version)) or [str(i) for i in range(mine.shape[1])]
        out[(device, version)] = {
            names[f] if f < len(names) else str(f): stats.ks_2samp(mine[:, f], rest[:, f])
            for f in range(mine.shape[1])}
    return out


def build(lake: Lake, options: Options) -> dict:
    """The report object (the ``--json`` output)."""
    now = options.now
    since = now - options.since_s
    since_date = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d")
    series = gather(lake, since, since_date)
    fleet_base = fleet_baselines(series)
    last_seen = {d: t for d, t in lake.shared("last_seen", since=since, since_date=since_date)}
    heard = dict(last_seen)
    if options.heartbeats:
        for device, t in lake.heartbeats(options.heartbeats, since):
            heard[device] = max(t, heard.get(device, t))
    versions_rows = lake.shared("versions", since=since, since_date=since_date)
    current: dict[str, tuple[int, float]] = {}
    recent: dict[str, set] = defaultdict(set)
    for device, version, last_time, _records in versions_rows:
        if device not in current or last_time > current[device][1]:
            current[device] = (int(version), last_time)
        if last_time >= now - HOUR:
            recent[device].add(int(version))
    newest = max((v for v, _ in current.values()), default=None)
    ks = ks_by_device(lake, since, since_date,
                      {k: s.features for k, s in series.items()})

    devices, used = [], {}
    for device in sorted(set(heard) | {d for d, _ in series}):
        version = current.get(device, (None, 0))[0]
        if version is None:
            version = max((v for d, v in series if d == device), default=None)
        s = series.get((device, version))
        entry = {"device": device, "model_version": version,
                 "last_seen": _iso(heard.get(device)),
                 "last_record": _iso(last_seen.get(device)),
                 "silent": now - heard.get(device, -math.inf) > options.silent_after_s,
                 "behind": version is not None and newest is not None and version < newest,
                 "switching": len(recent.get(device, ())) > 1,
                 "decisions": s.decisions if s else 0,
                 "anomaly_rate": _finite(s.anomalous / s.decisions) if s and s.decisions
                 else None}
        base = (options.baselines.get(version) or options.baselines.get(None)
                or fleet_base.get(version))
        used[version] = base
        entry["drift"] = drift_of(s, base, options.psi_limit)
        if s is not None:
            over = s.error_counts[:, np.searchsorted(s.error_edges, 1.0) + 1:].sum(axis=1)
            total = s.error_counts.sum(axis=1)
            entry["errors_over_threshold"] = {
                f: _finite(o / t) if t else None
                for f, o, t in zip(s.features, over, total, strict=False)}
        tests = ks.get((device, version))
        if tests:
            worst = min(tests, key=lambda f: tests[f][1])
            entry["drift"]["ks"] = {"feature": worst, "d": _finite(tests[worst][0]),
                                    "p": _finite(tests[worst][1]),
                                    "differs": bool(tests[worst][1] < options.ks_alpha)}
        devices.append(entry)

    fleet_versions: dict[str, int] = defaultdict(int)
    for e in devices:
        if e["model_version"] is not None:
            fleet_versions[str(e["model_version"])] += 1
    live = {current[d][0] for d in current if current[d][1] >= now - HOUR}
    return {
        "fleet": {
            "devices": len(devices),
            "silent": [e["device"] for e in devices if e["silent"]],
            "drifted": [e["device"] for e in devices if e["drift"]["drifted"]],
            "behind": [e["device"] for e in devices if e["behind"]],
            "versions": dict(sorted(fleet_versions.items())),
            "newest_version": newest,
            "rollout_in_progress": len(live) > 1
            or any(e["switching"] for e in devices),
            "now": _iso(now), "since": _iso(since),
            "psi_limit": options.psi_limit, "silent_after_s": options.silent_after_s,
        },
        "devices": devices,
        "_series": series,  # for the HTML report; dropped from --json
        "_baselines": used,
    }


def drift_of(s: Series | None, base: baselines.Baseline | None, limit: float) -> dict:
    empty = {"psi_max": None, "feature": None, "drifted": False, "psi": {}, "baseline": None}
    if s is None or base is None:
        return empty
    if list(base.input_edges) != list(s.input_edges) \
            or base.expected.shape != s.input_counts.shape:
        return {**empty, "baseline": base.source, "error": "the sketches' bins differ from "
                "the baseline's"}
    values = stats.psi(base.expected, s.input_counts)
    psi = {f: _finite(v) for f, v in zip(s.features, values, strict=False)}
    known = {f: v for f, v in psi.items() if v is not None}
    if not known:
        return {**empty, "baseline": base.source}
    worst = max(known, key=known.get)
    return {"psi_max": known[worst], "feature": worst, "drifted": known[worst] > limit,
            "psi": psi, "baseline": base.source}


def table(report: dict) -> str:
    """The terminal table: one line per device, flagged ones first."""
    rows = sorted(report["devices"], key=lambda e: (not (e["silent"] or e["drift"]["drifted"]),
                                                    e["device"]))
    head = f"{'device':<20} {'ver':>4} {'last seen (UTC)':<20} {'anom %':>7} " \
           f"{'PSI max':>8} {'feature':<15} flags"
    lines = [head, "-" * len(head)]
    for e in rows:
        d = e["drift"]
        flags = [f for f, on in (("SILENT", e["silent"]), ("DRIFT", d["drifted"]),
                                 ("BEHIND", e["behind"]), ("SWITCHING", e["switching"])) if on]
        rate = "-" if e["anomaly_rate"] is None else f"{100 * e['anomaly_rate']:.2f}"
        psi = "-" if d["psi_max"] is None else f"{d['psi_max']:.3f}"
        seen = (e["last_seen"] or "never")[:19].replace("T", " ")
        lines.append(f"{e['device']:<20} {e['model_version'] or '-':>4} {seen:<20} "
                     f"{rate:>7} {psi:>8} {d['feature'] or '-':<15} {' '.join(flags)}")
    f = report["fleet"]
    lines.append("")
    lines.append(f"{f['devices']} devices; silent: {', '.join(f['silent']) or 'none'}; "
                 f"drifted: {', '.join(f['drifted']) or 'none'}; versions: "
                 + (", ".join(f"v{v}: {n}" for v, n in f["versions"].items()) or "none")
                 + ("; rollout in progress" if f["rollout_in_progress"] else ""))
    return "\n".join(lines)
