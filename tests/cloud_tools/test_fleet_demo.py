"""``edged-cloud fleet-demo`` for real, as a user runs it: moto's server, mosquitto and two
``edged run`` daemons; a model trained, signed, rolled out and served; captures in S3; a
tampered release REJECTED and its rollout aborted. And what a user gets wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "edged_cloud.cli", "fleet-demo"]


def fleet_demo(*argv: str, timeout: float = 280) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *argv], check=False, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.timeout(300)
def test_the_whole_loop_holds_on_two_real_daemons(tmp_path):
    workdir = tmp_path / "demo"
    result = fleet_demo("--json", "--devices", "2", "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)  # the log went to stderr
    assert figures["held"] is True
    assert {c["name"] for c in figures["checks"]} >= {
        "trained", "optimized", "rollout", "devices serve v2", "bad rollout aborted",
        "captures", "monitor"}
    assert all(c["ok"] for c in figures["checks"]), figures["checks"]
    assert "the story held" in result.stderr

    trained, optimized = figures["trained"], figures["optimized"]
    assert trained["version"] == 2 and trained["onnx_vs_torch_max_abs"] >= 0
    assert 0.995 <= optimized["agreement"] <= 1 and optimized["speedup"] > 0

    things = {d["thing"] for d in figures["devices"]}
    assert len(things) == 2
    assert figures["rollout"]["devices"] == 2
    assert figures["rollout"]["states"] == {"SUCCEEDED": 2}
    assert [d["model_version"] for d in figures["devices"]] == [2, 2]
    # What each daemon itself recorded it serves.
    for thing in things:
        serving = json.loads((workdir / "devices" / thing / "state" / "serving.json")
                             .read_text())
        assert serving["pipelines"]["turbines"]["version"] == 2
        # Stopped when the demo ended.
        assert not alive(serving["pid"]), f"{thing}'s edged run still runs"

    bad = figures["bad_rollout"]
    assert bad["aborted"] is True and bad["status"] == "CANCELED", bad
    assert bad["reached"] == 1, bad  # one device a minute: the first refusal aborts it
    assert bad["states"] == {"REJECTED": 1, "CANCELED": 1}, bad
    assert bad["rejected_because"] == ["hash_mismatch"], bad

    # One device drifts, the other goes silent: the monitor's report flags exactly so.
    scenario, monitor = figures["scenario"], figures["monitor"]
    assert set(scenario.values()) == things and scenario["drifting"] != scenario["silent"]
    assert monitor["fleet"]["drifted"] == [scenario["drifting"]]
    assert monitor["fleet"]["silent"] == [scenario["silent"]]
    by_name = {d["device"]: d for d in monitor["devices"]}
    assert by_name[scenario["drifting"]]["drift"]["feature"] == "voltage"  # the bias
    assert by_name[scenario["drifting"]]["decisions"] > 0
    assert (workdir / "monitor.html").is_file()

    captures = figures["captures"]
    assert captures["objects"] > 0 and captures["records"] >= captures["objects"]
    assert set(captures["devices"]) == things


def test_a_workdir_in_use_is_refused_before_anything_starts(tmp_path):
    (tmp_path / "left-over").write_text("x")
    result = fleet_demo("--workdir", str(tmp_path), timeout=60)
    assert result.returncode != 0
    assert f"{tmp_path} is not empty" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [["--devices", "0"], ["--epochs", "0"]])
def test_impossible_counts_are_named(tmp_path, argv):
    result = fleet_demo(*argv, "--workdir", str(tmp_path / "demo"), timeout=60)
    assert result.returncode != 0
    assert argv[0] in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "demo").exists() or not any((tmp_path / "demo").iterdir())


def test_the_cli_lists_the_demo():
    result = subprocess.run([sys.executable, "-m", "edged_cloud.cli", "fleet-demo", "--help"],
                            check=True, capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ})
    assert "--devices" in result.stdout and "--json" in result.stdout
