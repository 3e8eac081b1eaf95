"""``edged-cloud monitor`` on sketches real daemons wrote: two ``edged run`` processes
simulate the same farm (same seed), one of them with a voltage sensor bias drifting on
turbine 0; both are stopped (SIGTERM), which writes each open hour's partial sketch and
uploads it in the same shutdown to a Disk destination (read here without any restart).

The baseline is the healthy device's own first sketch: its first run's partial, made into
a manifest ``monitoring`` section; the report then reads the lake after that device ran a
second time (its hour continued: the newest record of the key covers both runs). Every run
lasts as long: the simulator starts each run at the same simulated second, so equal runs
see the same rows and the healthy PSI is ~0; runs of 10 s against 15 s differ by 0.4 on
wind_speed_rps (a smooth process seen for seconds), which is why the fleet demo raises its
--psi-limit and an hour's sketch is the unit the default 0.2 is meant for."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import yaml

from edged_cloud import cli
from tests.support.processes import EdgedProcess

FEATURES = ["roll", "pitch", "yaw", "wind_speed_rps", "rps", "voltage"]


def device_config(tmp_path: Path, name: str, drifts: str = "") -> Path:
    home = tmp_path / name
    home.mkdir()
    config = {
        "device": {"id": name},
        "log": {"level": "info", "format": "json", "stats_interval_s": 0},
        "state_dir": str(home / "state"),
        "shutdown": {"stage_timeout_s": 5},
        "sources": {"farm": {"type": "simulator", "turbines": 2, "rate_hz": 20, "seed": 3,
                             "history_s": 25, "drifts": drifts}},
        "pipelines": {"wt": {
            "inputs": ["farm"],
            "preprocessor": {"type": "windturbine"},
            "inference": {"type": "onnx", "model": "builtin:windturbine-v1"},
            "interval_s": 0.5,
            "capture": {
                "rate": {"every": 5},
                # A long interval: only the shutdown's last upload can carry the partial.
                "upload": {"interval_s": 600},
                "destination": {"type": "disk", "path": str(tmp_path / "lake")},
            },
        }},
    }
    path = home / "edged.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def lake_sketches(root: Path, device: str) -> list[dict]:
    return [record for path in sorted(root.rglob(f"device={device}/**/*.jsonl.gz"))
            for line in gzip.decompress(path.read_bytes()).splitlines()
            if (record := json.loads(line))["kind"] == "sketch"]


def spooled_sketches(tmp_path: Path, device: str) -> list[dict]:
    segments = tmp_path / device / "state" / "capture" / "wt" / "segments"
    return [record for path in sorted(segments.glob("*.jsonl"))
            for record in map(json.loads, path.read_bytes().splitlines())
            if record["kind"] == "sketch"]


async def serve(config: Path, decisions: int) -> None:
    """Run the daemon until ``decisions`` rounds x turbines were decided, then SIGTERM."""
    with EdgedProcess(config) as daemon:
        await daemon.wait_for("graph_started", 60)
        # 2 turbines x 2 rounds/s: wait by the clock (the daemon logs no decision count).
        await asyncio.sleep(decisions / 4)
        assert daemon.stop() == 0, daemon.lines[-10:]


async def test_a_stopped_daemons_partial_sketch_is_uploaded_without_a_restart(tmp_path):
    config = device_config(tmp_path, "dev-a")
    await serve(config, 20)
    [sketch] = lake_sketches(tmp_path / "lake", "dev-a")
    assert sketch["final"] is False and sketch["decisions"] > 0
    assert spooled_sketches(tmp_path, "dev-a") == []  # uploaded, not left for the next start


async def test_the_drifting_device_and_only_it_is_flagged_on_voltage(tmp_path, capsys):
    healthy = device_config(tmp_path, "dev-healthy")
    drifting = device_config(tmp_path, "dev-drifting", drifts="0:bias@0+1")
    lake = tmp_path / "lake"
    # The baseline: the healthy device's first sketch (its first run's partial).
    await serve(healthy, 60)
    [first] = lake_sketches(lake, "dev-healthy")
    counts = first["input_counts"]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"monitoring": {
        "input_edges": first["input_edges"], "error_edges": first["error_edges"],
        "expected_input": [[c / sum(row) for c in row] for row in counts]}}))
    # Both devices run (at once) on the same farm; the healthy one's hour is continued.
    await asyncio.gather(serve(healthy, 60), serve(drifting, 60))
    assert len(lake_sketches(lake, "dev-healthy")) == 2
    assert [s["final"] for s in lake_sketches(lake, "dev-drifting")] == [False]

    code = cli.main(["monitor", str(lake), "--baseline", str(manifest), "--json",
                     "--fail-on", "drift"])
    report = json.loads(capsys.readouterr().out)
    assert code == 3
    assert report["fleet"]["drifted"] == ["dev-drifting"]
    assert report["fleet"]["silent"] == []
    by_device = {d["device"]: d for d in report["devices"]}
    drift = by_device["dev-drifting"]["drift"]
    assert drift["feature"] == "voltage" and drift["baseline"] == "manifest"
    assert drift["psi"]["voltage"] > 1.0
    # Only voltage moved: the farm's weather is the same on both devices.
    assert all(drift["psi"][f] < 0.2 for f in FEATURES if f != "voltage"), drift["psi"]
    healthy_drift = by_device["dev-healthy"]["drift"]
    assert healthy_drift["psi_max"] < 0.2, healthy_drift
    # The healthy device's report covers both its runs (the newest record of the key).
    assert by_device["dev-healthy"]["decisions"] > first["decisions"]
