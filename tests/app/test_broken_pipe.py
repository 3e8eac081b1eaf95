"""A command whose reader goes away (`edged plugins --json | head -1`) exits quietly with
128 + SIGPIPE, as a program that SIGPIPE killed does: no BrokenPipeError traceback."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EX_BROKEN_PIPE = 128 + signal.SIGPIPE


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "EDGED_BLOCK_PLUGINS"}


def run_into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """``edged ARGS`` with stdout a pipe whose read end is closed before the command
    starts: its first write to stdout fails, every time (no race with a reader)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "edged", *args], cwd=ROOT, env=env(),
                                stdout=write, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write)
    _, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, "", stderr)


@pytest.mark.parametrize("args", [
    ["plugins", "--json"],
    ["plugins"],
    ["check-config", "configs/demo.yaml"],
    ["demo", "--duration", "3", "--turbines", "2"],
], ids=" ".join)
def test_a_closed_stdout_ends_the_command_quietly(args):
    done = run_into_a_closed_pipe(*args)
    assert done.returncode == EX_BROKEN_PIPE, done.stderr
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert "Exception ignored" not in done.stderr


def test_plugins_json_into_head():
    # As a user types it: head takes one line and exits; edged may or may not have
    # written everything before that, but never says more than head shows.
    command = f"{shlex.quote(sys.executable)} -m edged plugins --json | head -1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout == "{\n"
    assert done.stderr == ""
    assert done.returncode in (0, EX_BROKEN_PIPE)


def test_an_open_stdout_is_untouched():
    done = subprocess.run([sys.executable, "-m", "edged", "plugins", "--json"], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("{") and done.stdout.rstrip().endswith("}")
