"""The command actuator running real programs (the test's own Python)."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
import structlog.testing

from edged.base.metrics import Counters
from edged.builtin.command_actuator import CommandActuator, CommandConfig
from edged.plugin.components import BuildContext
from edged.plugin.events import Event, ModelRef
from tests.support.payloads import assert_valid, tracked_events


def alarm() -> Event:
    return Event(kind="alarm", pipeline="turbines", turbine="turbine-03", time=1718000000.5,
                 groups=("rotation",), values={"rps": 0.9}, thresholds={"rps": 0.3},
                 model=ModelRef("windturbine-v1", 1),
                 detail={"consecutive": 2, "primary": "rotation"})


def make(argv: list[str], counters: Counters | None = None, **options) -> CommandActuator:
    config = CommandConfig(type="command", inputs=["turbines"], argv=argv, **options)
    return CommandActuator(config, BuildContext(name="relay", device_id="gw-7",
                                                state_dir=None, counters=counters or Counters()))


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_the_program_gets_the_alarm_json_on_stdin_with_env_and_cwd(tmp_path):
    out = tmp_path / "got.json"
    code = ("import os, sys, pathlib; pathlib.Path(sys.argv[1]).write_text("
            "sys.stdin.read() + os.environ['RELAY'] + '|' + os.getcwd())")
    async with make([*python(code), str(out)], env={"RELAY": "k2"}, cwd=tmp_path) as actuator:
        await actuator.handle(alarm())
    text, rest = out.read_text().rsplit("\n", 1)
    assert rest == f"k2|{tmp_path}"
    payload = json.loads(text)
    assert payload["event"] == "alarm"
    assert payload["device"] == "gw-7"
    assert payload["turbine"] == "turbine-03"
    assert payload["primary"] == "rotation"
    assert payload["time"] == "2024-06-10T06:13:20.500Z"


async def test_every_event_on_stdin_follows_the_published_schema(tmp_path):
    """docs/schema/alarm-v1.json, for events raised as the runtime raises them: one line
    of JSON per run of the program."""
    out = tmp_path / "got.jsonl"
    code = ("import sys; open(sys.argv[1], 'a').write(sys.stdin.read())")
    events = tracked_events()
    async with make([*python(code), str(out)]) as actuator:
        for event in events:
            await actuator.handle(event)
    lines = out.read_text().splitlines()
    assert len(lines) == len(events)
    for line, event in zip(lines, events, strict=True):
        payload = json.loads(line)
        assert_valid(payload)
        assert payload["event"] == event.kind


async def test_a_non_zero_exit_is_counted_and_its_output_logged():
    counters = Counters()
    code = "import sys; print('relay busy'); sys.stderr.write('E' * 5000 + 'tail'); sys.exit(3)"
    async with make(python(code), counters, output_limit=100) as actuator:
        with structlog.testing.capture_logs() as logs:
            await actuator.handle(alarm())
    assert counters.get("command_failures", actuator="relay", reason="exit") == 1
    [failed] = logs
    assert failed["event"] == "command_failed" and failed["log_level"] == "error"
    assert failed["status"] == 3
    assert failed["stdout"] == "relay busy"
    assert failed["stderr"] == "..." + "E" * 96 + "tail"  # the last output_limit bytes


async def test_success_is_not_counted_as_failure():
    counters = Counters()
    async with make(python("import sys; sys.stdin.read()"), counters) as actuator:
        await actuator.handle(alarm())
    assert counters.total("command_failures") == 0


async def test_a_program_that_ignores_stdin_is_fine():
    counters = Counters()
    async with make(["true"], counters) as actuator:
        for _ in range(3):
            await actuator.handle(alarm())
    assert counters.total("command_failures") == 0


async def test_timeout_kills_the_program_and_what_it_started(tmp_path):
    counters = Counters()
    pids = tmp_path / "pids"
    # The program starts a child that would outlive it and keep the output pipe open.
    code = ("import os, subprocess, sys, time, pathlib\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"pathlib.Path({str(pids)!r}).write_text(f'{{os.getpid()}} {{child.pid}}')\n"
            "time.sleep(60)\n")
    started = time.monotonic()
    async with make(python(code), counters, timeout_s=1.0) as actuator:
        await actuator.handle(alarm())
    assert time.monotonic() - started < 5
    assert counters.get("command_failures", actuator="relay", reason="timeout") == 1
    for pid in map(int, pids.read_text().split()):
        assert not alive(pid), pid


def alive(pid: int) -> bool:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # The child was re-parented to init; it may linger as a zombie for a moment.
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(") ", 1)[1].startswith("Z"):
                    return False
        except FileNotFoundError:
            return False
        time.sleep(0.05)
    return True


async def test_a_missing_program_fails_at_start():
    with pytest.raises(FileNotFoundError, match="no-such-relay-tool"):
        async with make(["no-such-relay-tool", "--on"]):
            pass
