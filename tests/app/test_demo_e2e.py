"""End to end: `edged demo --json` with configs/demo.yaml, as an operator runs it.

Both runs (the demo's five turbines, and eight) go in parallel: each spends its 24 s
mostly waiting for the simulated farm's clock, not on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DURATION = 24
# What configs/demo.yaml injects: turbine -> (kind, start, end), seconds after the start.
FAULTS = {
    "turbine-2": ("vibration", 4.0, 9.0),
    "turbine-3": ("rotation", 8.0, 13.0),
    "turbine-4": ("voltage", 12.0, 17.0),
}
DETECT_WITHIN_S = 3.0
ENDS_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def demo_results() -> dict[int, dict]:
    runs = {5: [], 8: ["--turbines", "8"]}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = {
        n: subprocess.Popen(
            [sys.executable, "-m", "edged", "demo", "-c", "configs/demo.yaml",
             "--duration", str(DURATION), "--json", *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for n, extra in runs.items()
    }
    results: dict[int, dict] = {}
    try:
        for n, proc in procs.items():
            out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, f"demo ({n} turbines) failed:\n{err[-3000:]}"
            lines = [line for line in out.splitlines() if line.strip()]
            assert len(lines) == 1, f"expected one JSON line on stdout, got:\n{out[-2000:]}"
            results[n] = json.loads(lines[0])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def check_farm(result: dict, turbines: int) -> None:
    ids = [t["id"] for t in result["turbines"]]
    assert ids == [f"turbine-{i}" for i in range(turbines)]
    for turbine in result["turbines"]:
        name = turbine["id"]
        if name not in FAULTS:
            assert turbine["injected"] == [], name
            assert turbine["detected"] == [], f"false detection on healthy {name}: {turbine}"
            continue

        kind, start, end = FAULTS[name]
        (fault,) = turbine["injected"]
        assert fault["kind"] == kind
        assert fault["start"] == pytest.approx(start, abs=0.05)
        assert fault["end"] == pytest.approx(end, abs=0.05)

        wrong = [d for d in turbine["detected"] if d["group"] != kind]
        assert wrong == [], f"{name}: diagnosed {wrong}, but the fault was {kind}"
        assert turbine["detected"], f"{name}: {kind} fault not detected"
        first = min(d["first"] for d in turbine["detected"])
        last = max(d["last"] for d in turbine["detected"])
        assert start <= first <= start + DETECT_WITHIN_S, (
            f"{name}: {kind} detected at {first} s, fault started at {start} s")
        assert last <= end + ENDS_WITHIN_S, (
            f"{name}: still detected at {last} s, fault ended at {end} s")
        # For the last fault, end + 10 s is past the demo's end: the detection must
        # have stopped while the demo still ran (decisions come every 0.5 s).
        assert last <= DURATION - 1.0, f"{name}: still detected at the end ({last} s)"
        # The reference rule flags the group itself too (not just other groups).
        assert any(f["group"] == kind for f in turbine["flagged"])


def test_demo_detects_every_fault_in_its_own_group_and_nothing_else(demo_results):
    check_farm(demo_results[5], 5)


def test_demo_with_more_turbines(demo_results):
    check_farm(demo_results[8], 8)
