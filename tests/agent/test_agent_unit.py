"""systemd/edged-agent.service: the unit's contract, `systemd-analyze verify` and
`security`, and the agent serving inside the unit's seccomp filters (the launcher of
tests/test_systemd_unit.py, fed this unit's lines)."""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from agent_testkit import BUILTIN_MODEL, ROOT, inline, output_array, reference_predict, windows

from edged.agent.proto import agent_pb2 as pb
from edged.agent.proto import agent_pb2_grpc
from tests.support import unit_directive, unit_directives

UNIT = ROOT / "systemd" / "edged-agent.service"
INSTALLED_EDGED = "/opt/edged/bin/edged"
MAX_EXPOSURE = 2.5
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                   reason="systemd-analyze is not installed")


def directives(section: str = "Service") -> list[tuple[str, str]]:
    return unit_directives(UNIT, section)


def directive(key: str, section: str = "Service") -> str:
    return unit_directive(UNIT, key, section)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_unit_contract():
    assert directive("Type") == "notify"
    assert directive("NotifyAccess") == "main"
    assert directive("ExecStart") == (f"{INSTALLED_EDGED} agent -a /run/edged/agent.sock "
                                      "-c /etc/edged/agent.json")
    assert directive("RuntimeDirectory") == "edged"
    assert directive("RuntimeDirectoryMode") == "0750"
    assert directive("StateDirectory") == directive("ConfigurationDirectory") == "edged"
    assert directive("User") == directive("Group") == "edged"
    assert directive("Restart") == "on-failure"
    assert directive("KillMode") == "mixed"
    assert directive("WatchdogSec") == "30"
    assert directive("PrivateDevices") == "yes"  # the host's /dev/shm stays visible
    assert "AF_UNIX" in directive("RestrictAddressFamilies").split()
    assert directive("WantedBy", "Install") == "multi-user.target"
    # The socket the unit names is the one the docs tell clients to dial.
    assert "unix:///run/edged/agent.sock" in (ROOT / "docs" / "agent.md").read_text()


def test_stop_timeout_covers_the_grace_period():
    from edged.agent.server import AgentServer

    grace = AgentServer.__init__.__kwdefaults__["grace_s"]
    assert int(directive("TimeoutStopSec")) >= grace + 20


@needs_analyze
def test_verify_is_clean(tmp_path):
    edged = Path(sys.executable).parent / "edged"
    if not edged.exists():
        pytest.skip(f"no edged console script at {edged}")
    copy = tmp_path / "edged-agent.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED_EDGED, str(edged)))
    result = analyze("verify", str(copy))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_analyze
def test_security_exposure(tmp_path):
    result = analyze("security", "--offline=true", "--no-pager", str(UNIT))
    match = re.search(r"Overall exposure level for edged-agent\.service: (\d+\.\d+)",
                      result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
    assert f"exposure level {match.group(1)}" in (ROOT / "docs" / "agent.md").read_text()


# -- inside the unit's seccomp filters ---------------------------------------------------------

needs_seccomp = pytest.mark.skipif(
    ctypes.util.find_library("seccomp") is None or SYSTEMD_ANALYZE is None
    or not sys.platform.startswith("linux"),
    reason="needs Linux, libseccomp and systemd-analyze")


def _systemd_unit_tests():
    spec = importlib.util.spec_from_file_location("edged_tests_systemd_unit",
                                                  ROOT / "tests" / "test_systemd_unit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_seccomp
def test_agent_serves_inside_the_units_seccomp_filters(tmp_path, short_dir):
    helpers = _systemd_unit_tests()
    launcher = tmp_path / "launch.py"
    launcher.write_text(helpers.LAUNCHER)
    spec = helpers.unit_seccomp_spec(UNIT)
    models = tmp_path / "models"
    shutil.copytree(BUILTIN_MODEL, models / "windturbine-v1")
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({"agent": {
        "device_name": "d", "model_roots": [str(models)],
        "capture": {"disk_path": str(tmp_path / "capture"), "batch_size": 1,
                    "push_period_s": 0.5}}}))
    sock = short_dir / "agent.sock"
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(launcher), json.dumps(spec),
                                 sys.executable, "-m", "edged", "--log-format", "json",
                                 "agent", "-a", str(sock), "-c", str(config)],
                                cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            stub = agent_pb2_grpc.AgentStub(channel)
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                try:
                    stub.ListModels(pb.ListModelsRequest(), timeout=0.5, wait_for_ready=True)
                    break
                except grpc.RpcError:
                    continue
            stub.LoadModel(pb.LoadModelRequest(url="windturbine-v1", name="m"), timeout=60)
            x = windows(64)
            reply = stub.Predict(pb.PredictRequest(name="m", tensors=[inline(x)]), timeout=60)
            np.testing.assert_array_equal(output_array(reply.tensors[0]), reference_predict(x))
            capture_id = str(uuid.uuid4())
            stub.CaptureData(pb.CaptureDataRequest(model_name="m", capture_id=capture_id,
                                                   input_tensors=[inline(x)]), timeout=60)
            deadline = time.monotonic() + 20
            while stub.GetCaptureDataStatus(pb.GetCaptureDataStatusRequest(
                    capture_id=capture_id), timeout=60).status != pb.SUCCESS:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in log.read_text(), log.read_text()
