"""The fleet-scale rollout simulation, small (benchmarks/fleet_rollout.py): a good model
reaches every simulated device, which report SUCCEEDED; a tampered one is REJECTED by the
first devices and the abort criteria (deploy's defaults: 10 % of at least 10) cancel it
for every device it had not reached."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_a_tampered_model_is_stopped_after_the_abort_minimum_and_a_good_one_reaches_all():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fleet_rollout.py"), "--devices", "50",
         "--things-per-client", "5", "--json"],
        check=False, capture_output=True, text=True, timeout=170, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    good, bad = figures["good"], figures["bad"]
    assert figures["mqtt_connections"] == 10
    assert good["states"] == {"SUCCEEDED": 50} and good["reached"] == 50, good
    assert not good["aborted"]
    assert sum(good["notified_per_minute"]) == 50
    assert good["real_time_s"] == pytest.approx(good["seconds"] * 60 / figures["minute_s"],
                                                abs=0.1)
    assert bad["aborted"] and "REJECTED" in bad["reason"], bad
    # The first minute notifies the base rate (10); the tenth REJECTED meets the criteria
    # before a second minute notifies more.
    assert 10 <= bad["reached"] < 50, bad
    assert bad["states"].get("REJECTED", 0) >= 10
    assert bad["states"].get("CANCELED", 0) == 50 - bad["reached"], bad
    assert "SUCCEEDED" not in bad["states"]
