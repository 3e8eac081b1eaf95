"""`edged watch` against a real `edged run` process: a simulated farm with a fault, the
decisions and the alarm seen live from another process, across a reload; and the
decision log in the daemon's own log."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from edged.testing import eventually
from tests.support import EdgedProcess
from tests.support.farms import FAULTY, faulty_farm
from tests.support.payloads import assert_valid

ROOT = Path(__file__).resolve().parents[2]

HEAD = """\
log: {level: info, format: json, decisions: anomalies, stats_interval_s: 1}
"""


def config_text(state_dir: Path) -> str:
    return faulty_farm(state_dir, device="watch-gw", turbines=3, head=HEAD)


class Watch:
    """``edged watch ARGS`` as a child process, its stdout lines collected as they come."""

    def __init__(self, config: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edged", "watch", "-c", str(config), *args], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))

    def records(self) -> list[dict]:
        return [json.loads(line) for line in list(self.lines)]

    def stop(self) -> str:
        """Interrupt it (^C) and return its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=20)
        self._reader.join(timeout=5)
        return err


async def test_edged_watch_follows_a_running_daemon(tmp_path):
    config = tmp_path / "edged.yaml"
    config.write_text(config_text(tmp_path / "state"))
    with EdgedProcess(config, cwd=ROOT) as daemon:
        listening = await daemon.wait_for("watch_listening", 30)
        assert listening["socket"] == str(tmp_path / "state" / "watch.sock")
        as_json = Watch(config, "--json", "--decisions", "all")
        readable = Watch(config, "--turbine", FAULTY)
        try:
            def alarmed() -> bool:
                return any('"event":"alarm"' in line for line in as_json.lines) and any(
                    " ALARM " in line for line in readable.lines)

            await eventually(alarmed, 40)
            # A reload ends every watch; edged watch connects again by itself.
            seen = len(as_json.lines)
            daemon.proc.send_signal(signal.SIGHUP)
            await daemon.wait_for("config_reloaded", 30)
            await eventually(lambda: sum('"event":"hello"' in line
                                         for line in as_json.lines[seen:]) == 1, 20)
            await eventually(lambda: any('"event":"decision"' in line
                                         for line in as_json.lines[seen:]), 20)
        finally:
            json_err, readable_err = as_json.stop(), readable.stop()
        assert daemon.stop() == 0

    records = as_json.records()
    for record in records:
        assert_valid(record)  # hello, decision, alarm: each follows its published schema
    assert records[0] == {"schema": 1, "event": "hello", "device": "watch-gw",
                          "edged": records[0]["edged"], "decisions": "all",
                          "turbine": None}
    decisions = [r for r in records if r["event"] == "decision"]
    # Every decision, healthy ones included, of every turbine.
    assert {r["turbine"] for r in decisions if not r["anomalous"]} >= {"turbine-0",
                                                                       "turbine-2"}
    assert {r["turbine"] for r in decisions if r["anomalous"]} == {FAULTY}
    [alarm] = [r for r in records if r["event"] == "alarm"]
    assert (alarm["turbine"], alarm["primary"]) == (FAULTY, "vibration")
    # Its decisions came first, the last of them the one the alarm was raised on.
    before = [r for r in records[:records.index(alarm)]
              if r["event"] == "decision" and r["turbine"] == FAULTY and r["anomalous"]]
    assert len(before) >= 2 and before[-1]["rows"] == alarm["detail"]["rows"]
    # The very payload the log actuator logged.
    [logged] = daemon.events("turbine_alarm")
    assert logged["payload"] == alarm
    assert "connecting again" in json_err

    # The readable view: the faulty turbine only, anomalies and its alarm.
    assert readable.lines, readable_err
    assert all(f"turbines/{FAULTY}" in line for line in readable.lines), readable.lines
    assert any(" anomalous  vibration" in line for line in readable.lines)
    assert "watching watch-gw" in readable_err

    # The decision log: anomalous decisions only (the default), one line each.
    logged_decisions = daemon.events("decision")
    assert logged_decisions and {d["turbine"] for d in logged_decisions} == {FAULTY}
    assert all(d["anomalous"] and "roll=" in d["scores"] for d in logged_decisions)
    assert daemon.events("watch_started") and not daemon.events("watch_refused")


def test_without_a_daemon_edged_watch_says_where_it_looked(tmp_path):
    config = tmp_path / "edged.yaml"
    config.write_text(config_text(tmp_path / "state"))
    result = subprocess.run([sys.executable, "-m", "edged", "watch", "-c", str(config)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 1
    assert f"no daemon serves on {tmp_path / 'state' / 'watch.sock'}" in result.stderr


async def test_a_watch_of_every_decision_that_falls_behind_never_slows_detection(
        tmp_path):
    """A watcher that asks for every decision and never reads is dropped (counted);
    another watcher still sees the fault's alarm on time."""
    text = config_text(tmp_path / "state").replace(
        "turbines: 3", "turbines: 10").replace("interval_s: 0.5", "interval_s: 0.1")
    config = tmp_path / "edged.yaml"
    config.write_text(text + "watch: {queue: 50}\n")

    with EdgedProcess(config, cwd=ROOT) as daemon:
        await daemon.wait_for("watch_listening", 30)
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.connect(str(tmp_path / "state" / "watch.sock"))
        stuck.sendall(b'{"decisions": "all"}\n')
        watch = Watch(config, "--json", "--decisions", "none")
        try:
            await daemon.wait_for("watch_dropped", 60)
            await eventually(lambda: any('"event":"alarm"' in line for line in watch.lines),
                             40)
        finally:
            watch.stop()
            stuck.close()

        def dropped() -> int:
            stats = daemon.events("stats")
            return stats[-1]["counters"].get("watch_clients_dropped{reason=too_slow}", 0) \
                if stats else 0

        await eventually(lambda: dropped() == 1, 10)
        assert daemon.stop() == 0
    [alarm] = [r for r in watch.records() if r["event"] == "alarm"]
    assert alarm["turbine"] == FAULTY
