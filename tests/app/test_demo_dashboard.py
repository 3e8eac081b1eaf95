"""`edged demo --dashboard [HOST:]PORT`: the demo serves its dashboard, prints the
address before anything else, runs until Ctrl-C unless given a duration, and judges its
run as always (a fault injected from the page is judged too)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from edged.app.demo import dashboard_listen

ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "edged", "demo", "--turbines", "3"]


def test_a_port_alone_is_on_this_machine_only():
    assert dashboard_listen("8088") == "127.0.0.1:8088"
    assert dashboard_listen("0.0.0.0:8088") == "0.0.0.0:8088"
    assert dashboard_listen("[::1]:8088") == "[::1]:8088"


def started(args: list[str]) -> tuple[subprocess.Popen, str]:
    demo = subprocess.Popen([*DEMO, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = demo.stdout.readline()
    match = re.fullmatch(r"dashboard: (http://127\.0\.0\.1:\d+/)  \(Ctrl-C ends the demo\)\n",
                         first)
    assert match, (first, demo.stderr.read() if demo.poll() is not None else "")
    return demo, match.group(1)


def get(url: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        url, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_demo_with_its_dashboard_runs_until_ctrl_c(tmp_path):
    demo, address = started(["--dashboard", "127.0.0.1:0"])
    try:
        state = get(address + "api/state")
        assert state["device"] == "demo-gateway"
        assert state["summary"]["turbines"] == 3
        assert state["simulators"] == {"farm": {"faults": ["vibration", "rotation", "voltage"],
                                                "drifts": ["bias", "bearing", "wind"]}}
        # A fault from the page, on a healthy turbine: the demo's summary judges it.
        status = get(address + "api/simulator/farm/turbine-0",
                     {"fault": "voltage", "on": True})
        assert status["faults"] == ["voltage"]
        assert demo.poll() is None  # no --duration: it runs on
    finally:
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=30)
    assert "turbine-0: voltage fault at" in out, out + err
    assert demo.returncode in (0, 4, 8, 12), err  # a verdict, whatever it is


def test_a_duration_still_ends_the_demo_with_its_verdict():
    demo, address = started(["--dashboard", "0", "--duration", "3"])
    out, err = demo.communicate(timeout=60)
    assert demo.returncode == 0, out + err
    assert "Summary" in out
