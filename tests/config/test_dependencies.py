"""A configured feature whose Python package cannot be imported is a config error at
``check-config``, ``run`` and reload, naming the key and what to install; shown by hiding
a package from a real ``edged`` process (a sitecustomize that makes its import fail, as
it fails on a device without it)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from edged.config import parse_config
from edged.config.dependencies import missing_dependencies
from edged.plugin.manager import make_plugin_manager
from tests.support import LoggedProcess
from tests.support.model_cli import EX_CONFIG, edged_cli

HIDER = """\
import importlib.abc, os, sys

HIDDEN = set(os.environ["EDGED_TEST_HIDE"].split(","))


class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Hide())
"""

FARM = """\
sources:
  farm: {type: simulator}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {type: windturbine}
    inference: {type: onnx}
"""

S3_CAPTURE = FARM + """\
    capture:
      rate: {every: 100}
      destination: {type: s3, bucket: captures}
"""

METRICS = FARM + """\
metrics: {listen: "127.0.0.1:0"}
"""


def hiding(tmp_path: Path, *modules: str) -> dict[str, str]:
    """The environment of an edged process that cannot import ``modules``."""
    site = tmp_path / "hide"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDER)
    return {"PYTHONPATH": str(site), "EDGED_TEST_HIDE": ",".join(modules)}


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edged.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n" + text)
    return path


def test_s3_capture_without_boto3_fails_the_check_and_the_run(tmp_path):
    config = config_file(tmp_path, S3_CAPTURE)
    assert edged_cli("check-config", str(config)).returncode == 0  # boto3 is here

    env = hiding(tmp_path, "boto3", "botocore")
    done = edged_cli("check-config", str(config), env=env)
    assert done.returncode == EX_CONFIG, done.stderr
    expected = (f"Invalid config for 'pipelines.turbines.capture.destination.type' at "
                f"{config}, line 11: S3 capture needs the Python package boto3, which "
                "cannot be imported (ModuleNotFoundError: No module named 'boto3'): "
                f"install it with `{sys.executable} -m pip install 'edged[s3]'`")
    assert done.stderr.splitlines()[0] == expected, done.stderr

    done = edged_cli("run", "-c", str(config), env=env)
    assert done.returncode == EX_CONFIG, done.stderr
    assert expected in done.stderr and "nothing was started" in done.stderr


def test_every_missing_package_is_named_at_once(tmp_path):
    config = config_file(tmp_path, METRICS)
    done = edged_cli("check-config", str(config),
                     env=hiding(tmp_path, "onnxruntime", "prometheus_client"))
    assert done.returncode == EX_CONFIG
    problems = done.stderr.splitlines()[:2]
    assert problems[0].startswith("Invalid config for 'pipelines.turbines.inference.type' "
                                  f"at {config}, line 8: ONNX inference needs the Python "
                                  "package onnxruntime"), problems
    assert problems[0].endswith("-m pip install onnxruntime` (no wheel for 32-bit ARM: see "
                                "docs/install.md)"), problems
    assert problems[1].startswith(f"Invalid config for 'metrics' at {config}, line 9: the "
                                  "/metrics endpoint needs the Python package "
                                  "prometheus-client"), problems


def test_nothing_is_asked_of_a_feature_not_configured(tmp_path):
    config = config_file(tmp_path, FARM)
    done = edged_cli("check-config", str(config),
                     env=hiding(tmp_path, "boto3", "prometheus_client", "grpc"))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("text, needed", [
    (FARM, ["onnxruntime"]),
    (S3_CAPTURE, ["onnxruntime", "boto3"]),
    (METRICS, ["onnxruntime", "prometheus_client"]),
    (FARM.replace("{type: onnx}", "{type: edge_agent, socket: /run/a.sock, model_name: m, "
                  "model_url: m}"), ["grpc"]),
])
def test_what_each_feature_needs(text, needed):
    from edged.config.dependencies import needs

    config = parse_config(text, "edged.yaml", make_plugin_manager()[1])
    assert [n.module for _, _, n in needs(config)] == needed
    assert missing_dependencies(config) == []  # all of them are installed here


async def test_a_reload_asking_for_a_missing_package_is_refused(tmp_path):
    config = config_file(tmp_path, FARM)
    with LoggedProcess(["edged", "--log-format", "json", "run", "-c", str(config)],
                       env=hiding(tmp_path, "boto3", "botocore")) as daemon:
        await daemon.wait_for("graph_started", 60)
        config.write_text(f"state_dir: {tmp_path / 'state'}\n" + S3_CAPTURE)
        daemon.proc.send_signal(signal.SIGHUP)
        refused = await daemon.wait_for("reload_refused", 60)
        assert refused["reason"] == "invalid"
        assert "S3 capture needs the Python package boto3" in refused["problems"][0]
        assert daemon.stop() == 0
    assert not daemon.events("config_reloaded")


def test_the_agents_cloud_capture_without_boto3_is_a_config_error(tmp_path):
    """`edged agent` with the old JSON config's Cloud destination and no boto3: exit 78
    naming the key and the install, before it binds its socket (not a failed start)."""
    import json

    from tests.agent.test_agent_config import AWS_SAMPLE

    config = tmp_path / "agent.json"
    config.write_text(json.dumps({**AWS_SAMPLE, "sagemaker_edge_core_capture_data_disk_path":
                                  str(tmp_path / "capture")}))
    socket_path = tmp_path / "agent.sock"
    done = edged_cli("agent", "-a", str(socket_path), "-c", str(config),
                     env=hiding(tmp_path, "boto3", "botocore"), timeout=60)
    assert done.returncode == EX_CONFIG, done.stderr
    assert "sagemaker_edge_core_capture_data_destination" in done.stderr
    assert ("Cloud (S3) capture needs the Python package boto3, which cannot be imported"
            in done.stderr)
    assert "'edged[s3]'" in done.stderr
    assert not socket_path.exists()
