"""`edged demo` judges its own run: exit 0 when every fault that started in time was
detected in its own group and nothing else was, 4 when a fault was missed, 8 for a
detection no fault explains (12 for both); a fault scheduled after the end is "not
started". On a terminal the view redraws in place; elsewhere it is plain lines.

The runs go in parallel, each a real `edged demo` with a short --duration and few
--turbines; a missed fault and a false alarm come from the reference model with its
thresholds scaled up (blind) or down (jumpy), a real model that decides otherwise.
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edged.app.demo import EX_NOT_DETECTED, EX_UNEXPECTED, JUDGE_AFTER_S, verdict

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "edged" / "model" / "builtin" / "windturbine-v1"
ESC = "\x1b["


def scaled_model_config(tmp: Path, name: str, factor: float) -> Path:
    """configs/demo.yaml serving the reference model with its thresholds times
    ``factor``; the model file and golden pairs are the reference's own."""
    model = tmp / name
    shutil.copytree(MODEL, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["preprocessing"]["thresholds"] = [
        t * factor for t in manifest["preprocessing"]["thresholds"]]
    (model / "manifest.json").write_text(json.dumps(manifest))
    config = tmp / f"{name}.yaml"
    config.write_text((ROOT / "configs" / "demo.yaml").read_text().replace(
        "model: builtin:windturbine-v1", f"model: {model}"))
    return config


def in_a_pty(args: list[str]) -> tuple[subprocess.Popen, dict]:
    """Starts ``args`` with stdout on a pseudo-terminal; what it writes is collected
    into the returned dict's "out" by a thread, until the terminal closes."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=slave, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    os.close(slave)
    seen = {"out": b""}

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other end closed
                break
            if not chunk:
                break
            seen["out"] += chunk
        os.close(master)

    seen["reader"] = threading.Thread(target=read, daemon=True)
    seen["reader"].start()
    return proc, seen


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("demo")
    blind = scaled_model_config(tmp, "blind", 1e6)
    jumpy = scaled_model_config(tmp, "jumpy", 1e-3)
    demo = [sys.executable, "-m", "edged", "demo"]
    plain = {
        # turbine 2's fault at 4 s is judged; turbine 3's at 8 s never starts; turbine 4
        # is not there.
        "ok": [*demo, "--turbines", "4", "--duration", "7.5"],
        "missed": [*demo, "-c", str(blind), "--turbines", "3", "--duration", "9"],
        "false_alarm": [*demo, "-c", str(jumpy), "--turbines", "2", "--duration", "4"],
        "false_alarm_json": [*demo, "-c", str(jumpy), "--turbines", "2", "--duration", "4",
                             "--json"],
    }
    procs = {name: subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, args in plain.items()}
    tty, seen = in_a_pty([*demo, "--turbines", "3", "--duration", "5"])
    results = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            results[name] = subprocess.CompletedProcess(plain[name], proc.returncode, out, err)
        _, err = tty.communicate(timeout=120)
        seen["reader"].join(timeout=30)
        results["tty"] = subprocess.CompletedProcess(
            [], tty.returncode, seen["out"].decode().replace("\r\n", "\n"), err)
    finally:
        for proc in [*procs.values(), tty]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def summary_of(stdout: str) -> list[str]:
    return stdout.split("\nSummary (seconds since the demo started):\n", 1)[1].splitlines()


def test_a_good_run_exits_0_and_says_so(runs):
    done = runs["ok"]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = summary_of(done.stdout)
    assert lines[0].startswith("  turbine-2: vibration fault at 4.0 s detected after ")
    assert lines[-1] == "OK: every fault detected in its own group, nothing else (exit 0)"


def test_a_fault_after_the_end_is_not_started(runs):
    lines = summary_of(runs["ok"].stdout)
    # The end is read off the clock when the demo stops: 7.5 s, or a little later.
    assert any(re.fullmatch(r"  turbine-3: rotation fault at 8\.0 s not started: the demo "
                            r"ended at 7\.[5-9] s", line) for line in lines), lines
    assert not any("NOT detected" in line for line in lines)
    assert "  turbine-4: voltage fault left out: --turbines 4 has no turbine 4" in lines


def test_a_missed_fault_exits_4(runs):
    done = runs["missed"]
    assert done.returncode == EX_NOT_DETECTED == 4, done.stdout[-2000:] + done.stderr[-2000:]
    lines = summary_of(done.stdout)
    assert "  turbine-2: vibration fault at 4.0 s NOT detected" in lines
    assert lines[-1] == "FAILED: 1 fault(s) not detected (exit 4)"


def test_a_healthy_turbine_detecting_exits_8(runs):
    done = runs["false_alarm"]
    assert done.returncode == EX_UNEXPECTED == 8, done.stdout[-2000:] + done.stderr[-2000:]
    lines = summary_of(done.stdout)
    for turbine in ("turbine-0", "turbine-1"):
        assert any(line.startswith(f"  {turbine}: UNEXPECTED ") for line in lines), lines
    assert "  healthy turbines without any detection: 0 of 2" in lines
    assert lines[-1].startswith("FAILED: ") and lines[-1].endswith(
        "unexpected detection(s) (exit 8)")


def test_json_keeps_its_one_line_and_the_exit_status(runs):
    done = runs["false_alarm_json"]
    assert done.returncode == EX_UNEXPECTED, done.stderr[-2000:]
    (line,) = [line for line in done.stdout.splitlines() if line.strip()]
    result = json.loads(line)
    assert [t["id"] for t in result["turbines"]] == ["turbine-0", "turbine-1"]
    assert all(t["detected"] and not t["injected"] for t in result["turbines"])


def test_plain_frames_off_a_terminal(runs):
    out = runs["ok"].stdout
    assert ESC not in out
    frames = out.split("--- edged demo, t = ")[1:]
    assert len(frames) >= 3
    header = frames[0].splitlines()[1].split()
    assert header == ["turbine", "state", "vibration", "rotation", "voltage", "diagnosis",
                      "model", "injected", "action"]


def test_the_diagnosis_apart_from_the_flags(runs):
    # Once the vibration fault is found, turbine-2's row shows all three flags (the
    # reference rule flags every group) and vibration alone as the diagnosis.
    last = runs["ok"].stdout.split("--- edged demo, t = ")[-1]
    (row,) = [line.split() for line in last.splitlines() if line.startswith("turbine-2 ")]
    assert row[1:6] == ["ANOMALY", "ANOMALY", "ANOMALY", "ANOMALY", "vibration"]
    (healthy,) = [line.split() for line in last.splitlines() if line.startswith("turbine-0 ")]
    assert healthy[1:6] == ["ok", "ok", "ok", "ok", "-"]


def test_a_terminal_gets_the_view_redrawn_in_place(runs):
    done = runs["tty"]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    view, summary = done.stdout.split("\nSummary (seconds since the demo started):\n", 1)
    frames = view.split(f"{ESC}H")
    assert frames[0] == ""  # the first frame starts at the top too
    assert len(frames) >= 3  # 2 s apart over 5 s, and the last at the end
    for frame in frames[1:]:
        lines = frame.split("\n")
        assert lines[0].startswith("--- edged demo, t = ") and lines[0].endswith(f"{ESC}K")
        assert all(line.endswith(f"{ESC}K") for line in lines[:-1])
        assert lines[-1] == f"{ESC}J"  # the rest of the screen cleared
    assert ESC not in summary
    assert summary.splitlines()[-1].startswith("OK: ")


# -- the verdict itself, on made-up results ---------------------------------------------


def fault(kind: str, start: float, end: float) -> dict:
    return {"kind": kind, "start": start, "end": end}


def found(group: str, first: float, last: float) -> dict:
    return {"group": group, "first": first, "last": last}


def test_both_failures_add_up_to_12():
    result = {"turbines": [
        {"id": "turbine-0", "injected": [], "detected": [found("voltage", 3.0, 4.0)]},
        {"id": "turbine-1", "injected": [fault("rotation", 2.0, 8.0)], "detected": []},
    ]}
    check = verdict(result, tail_s=25.0, ended=20.0)
    assert (check.not_detected, check.unexpected, check.status) == (1, 1, 12)
    assert check.lines == ["turbine-0: UNEXPECTED voltage detection at 3.0 s",
                           "turbine-1: rotation fault at 2.0 s NOT detected"]
    assert check.outcome() == ("FAILED: 1 fault(s) not detected and 1 unexpected "
                               "detection(s) (exit 12)")


def test_a_fault_too_recent_to_judge_is_not_a_failure():
    result = {"turbines": [{"id": "turbine-2", "injected": [fault("vibration", 9.0, 10.0)],
                            "detected": []}]}
    check = verdict(result, tail_s=25.0, ended=10.0)
    assert check.status == 0
    assert check.lines == [f"turbine-2: vibration fault at 9.0 s not detected yet: it started "
                           f"1.0 s before the end (not judged under {JUDGE_AFTER_S:g} s)"]


def test_a_detection_in_the_wrong_group_is_unexpected():
    result = {"turbines": [{"id": "turbine-2", "injected": [fault("vibration", 4.0, 9.0)],
                            "detected": [found("vibration", 5.0, 9.0),
                                         found("voltage", 6.0, 7.0)]}]}
    check = verdict(result, tail_s=25.0, ended=20.0, not_started=[("turbine-3", "rotation",
                                                                    30.0)])
    assert check.status == EX_UNEXPECTED
    assert check.lines == ["turbine-2: vibration fault at 4.0 s detected after 1.0 s",
                           "turbine-2: UNEXPECTED voltage detection at 6.0 s",
                           "turbine-3: rotation fault at 30.0 s not started: the demo ended "
                           "at 20.0 s"]
