"""Hourly sketches through a running daemon graph: simulator -> windturbine + onnx ->
capture (sketches on by default) -> the real spool -> a Disk destination.

The expectations are computed here, independently: the input histograms from the raw
rows each decision was made from (captured with ``include_rows``, every decision), run
through the windturbine preprocessor and ``np.histogram``."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime

import numpy as np
import yaml
from test_pipeline_capture_graph import config_text

from edged.capture.segments import partition
from edged.capture.sketches import DEFAULT_INPUT_EDGES, psi
from edged.model.package import builtin_root, read_manifest
from edged.testing import eventually, running_graph
from edged.windturbine.features import (
    WindTurbineParams,
    WindTurbinePreprocessor,
    raw_features,
)


def lake(tmp_path) -> list[tuple[str, dict]]:
    """Every record with its partition: those uploaded, and those still in the spool
    (a stop makes no last upload: they go at the next start)."""
    root = tmp_path / "out"
    found = [(str(path.relative_to(root).parent), json.loads(line))
             for path in sorted(root.rglob("*.jsonl.gz"))
             for line in gzip.decompress(path.read_bytes()).splitlines()]
    for path in sorted((tmp_path / "state" / "capture" / "wt" / "segments").glob("*.jsonl")):
        found += [(partition(record, "dev-7"), record)
                  for record in map(json.loads, path.read_bytes().splitlines())]
    return found


def write_config(tmp_path, **spool) -> object:
    config = yaml.safe_load(config_text(tmp_path))
    config["sources"]["farm"].pop("faults")  # a healthy farm
    capture = config["pipelines"]["wt"]["capture"]
    capture["rate"] = {"every": 1}
    capture.pop("anomalies")
    capture["spool"] = {"fsync": "batch", **spool}
    path = tmp_path / "edged.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sketches(records) -> list[tuple[str, dict]]:
    return [(where, r) for where, r in records if r["kind"] == "sketch"]


async def run_until(path, decisions: int) -> int:
    async with running_graph(path) as graph:
        await eventually(lambda: graph.counters.get("decisions", pipeline="wt") >= decisions)
    return graph.counters.get("decisions", pipeline="wt")


async def test_the_health_report_carries_the_open_hours_totals(tmp_path):
    config = yaml.safe_load(write_config(tmp_path).read_text())
    config["metrics"] = {"listen": "127.0.0.1:0"}  # a health report, without a cloud
    path = tmp_path / "edged.yaml"
    path.write_text(yaml.safe_dump(config))
    async with running_graph(path) as graph:
        await eventually(lambda: graph.counters.get("decisions", pipeline="wt") >= 10)
        report = graph.health.report()
        decided = graph.counters.get("decisions", pipeline="wt")
    sketch = report["sketch"]["wt"]
    assert 10 <= sketch["decisions"] <= decided
    assert sketch["model_version"] == 1 and sketch["period_start"] % 3600 == 0
    assert 0 <= sketch["anomalous"] <= sketch["decisions"]
    # windturbine-v1's manifest has no monitoring section: nothing to compare with.
    assert sketch["psi_max"] is None


async def test_a_partial_hour_is_spooled_on_shutdown_and_continued_after_a_restart(tmp_path):
    path = write_config(tmp_path)
    first = await run_until(path, 20)
    found = sketches(lake(tmp_path))
    assert len(found) == 1
    where, sketch = found[0]
    assert sketch["final"] is False and sketch["decisions"] == first
    # The partition is the hour the sketch covers, not the time it was written.
    start = datetime.fromtimestamp(sketch["period_start"], UTC)
    assert where == (f"device=dev-7/model=windturbine/version=1/"
                     f"date={start:%Y-%m-%d}/hour={start:%H}")
    assert sketch["period_end"] - sketch["period_start"] == 3600
    assert sketch["key"] == f"wt:1:{sketch['period_start']:.0f}"
    assert sketch["turbines"] == 3 and sketch["features"][0] == "roll"
    assert sketch["input_edges"] == list(DEFAULT_INPUT_EDGES)
    # Every decision histograms its newest `step` (10) rows of each feature, and its
    # score against the threshold of each feature once.
    assert [sum(c) for c in sketch["input_counts"]] == [10 * first] * 6
    assert [sum(c) for c in sketch["error_counts"]] == [first] * 6
    assert sum(sketch["groups"].values()) >= sketch["anomalous"] >= 0

    second = await run_until(path, 20)
    found = sketches(lake(tmp_path))
    assert len(found) == 2
    latest = max((r for _, r in found), key=lambda r: r["time"])
    if latest["key"] == sketch["key"]:  # the same hour: continued, not restarted
        assert latest["decisions"] == first + second
        assert latest["id"] != sketch["id"]
    else:  # the hour turned between the runs
        assert latest["decisions"] == second


async def test_the_input_histograms_match_the_preprocessor_on_the_same_rows(tmp_path):
    path = write_config(tmp_path, include_rows=True)
    decided = await run_until(path, 30)
    records = lake(tmp_path)
    decisions = [r for _, r in records if r["kind"] == "decision"]
    [(_, sketch)] = sketches(records)
    assert sketch["decisions"] == decided == len(decisions)

    manifest = read_manifest(builtin_root() / "windturbine-v1").model_dump()
    params = WindTurbineParams.from_manifest(manifest["preprocessing"])
    pre = WindTurbinePreprocessor(params)
    rows = np.stack([np.array(r["raw_rows"], dtype=np.float64) for r in decisions])
    x = pre.windows(raw_features(rows))  # (decisions * W, 6, s, s)
    last = x.reshape(len(decisions), -1, 6, params.window)[:, -1, :, -params.step:]
    edges = np.array([-np.inf, *DEFAULT_INPUT_EDGES, np.inf])
    expected = np.array([np.histogram(last[:, f].ravel(), bins=edges)[0] for f in range(6)])
    # np.histogram's bins are [a, b) but its last is closed: nothing lands on +inf here.
    got = np.array(sketch["input_counts"])
    assert got.sum() == expected.sum() == len(decisions) * 6 * params.step
    assert np.nanmax(psi(got, expected)) < 0.1
    # The error histogram: each decision's score / threshold, binned the same way.
    ratios = np.array([r["values"] for r in decisions]) / np.array(sketch["thresholds"])
    error_edges = np.array([-np.inf, *sketch["error_edges"], np.inf])
    expected_errors = [np.histogram(ratios[:, f], bins=error_edges)[0].tolist()
                       for f in range(6)]
    assert sketch["error_counts"] == expected_errors


async def test_off_when_the_config_says_so(tmp_path):
    config = yaml.safe_load(write_config(tmp_path).read_text())
    config["pipelines"]["wt"]["capture"]["sketches"] = {"enabled": False}
    path = tmp_path / "edged.yaml"
    path.write_text(yaml.safe_dump(config))
    await run_until(path, 5)
    assert sketches(lake(tmp_path)) == []
    assert any(r["kind"] == "decision" for _, r in lake(tmp_path))
