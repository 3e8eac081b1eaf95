"""The agent's config: an existing device's agent JSON as it is, or edged YAML."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from edged.agent.config import IGNORED_KEYS, load_agent_config, parse_agent_config
from edged.agent.main import run
from edged.base.errors import ConfigError

# What a device set up for the old agent has (AWS's sample, every documented key).
AWS_SAMPLE = {
    "sagemaker_edge_core_device_name": "turbine-gw-01",
    "sagemaker_edge_core_device_fleet_name": "wind-farm",
    "sagemaker_edge_core_region": "eu-west-1",
    "sagemaker_edge_core_root_certs_path": "/agent_demo/certificates",
    "sagemaker_edge_provider_aws_ca_cert_file": "/agent_demo/iot-credentials/AmazonRootCA1.pem",
    "sagemaker_edge_provider_aws_cert_file": "/agent_demo/iot-credentials/device.pem.crt",
    "sagemaker_edge_provider_aws_cert_pk_file": "/agent_demo/iot-credentials/private.pem.key",
    "sagemaker_edge_provider_aws_iot_cred_endpoint": "https://example.credentials.iot.aws",
    "sagemaker_edge_provider_provider": "Aws",
    "sagemaker_edge_provider_provider_path": "/agent_demo/lib/libprovider_aws.so",
    "sagemaker_edge_provider_s3_bucket_name": "capture-bucket",
    "sagemaker_edge_core_capture_data_destination": "Cloud",
    "sagemaker_edge_core_capture_data_disk_path": "/var/lib/agent/capture",
    "sagemaker_edge_core_folder_prefix": "demo_capture",
    "sagemaker_edge_core_capture_data_buffer_size": 30,
    "sagemaker_edge_core_capture_data_batch_size": 10,
    "sagemaker_edge_core_capture_data_push_period_seconds": 4,
    "sagemaker_edge_core_capture_data_base64_embed_limit": 2048,
    "sagemaker_edge_core_capture_data_periodic_upload": "false",
    "sagemaker_edge_core_capture_data_periodic_upload_period_seconds": 60,
    "sagemaker_edge_log_verbose": False,
    "sagemaker_edge_telemetry_libsystemd_path": "/usr/lib/libsystemd.so",
}


def write(tmp_path: Path, data: dict | str, name: str = "agent.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return path


def problems(tmp_path: Path, data: dict | str, name: str = "agent.json") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_agent_config(write(tmp_path, data, name))
    return info.value.problems


def test_the_aws_sample_is_accepted_as_it_is(tmp_path):
    loaded = load_agent_config(write(tmp_path, AWS_SAMPLE))
    config = loaded.config
    assert loaded.format == "json"
    assert config.device_name == "turbine-gw-01"
    assert config.fleet_name == "wind-farm"
    assert config.region == "eu-west-1"
    capture = config.capture
    assert capture.destination == "Cloud"
    assert capture.s3_bucket == "capture-bucket"
    assert capture.disk_path == Path("/var/lib/agent/capture")
    assert capture.folder_prefix == "demo_capture"
    assert (capture.buffer_size, capture.batch_size, capture.push_period_s) == (30, 10, 4.0)
    settings = config.capture_settings()
    assert settings.s3_region == "eu-west-1"
    assert settings.device_name == "turbine-gw-01"
    # Every key edged does not use is listed, with a note, for the agent to log once.
    ignored = dict(loaded.ignored)
    assert set(ignored) == set(IGNORED_KEYS)
    assert "SHA-256" in ignored["sagemaker_edge_core_root_certs_path"]
    assert "notify" in ignored["sagemaker_edge_telemetry_libsystemd_path"]
    assert loaded.log.level == "info"


def test_verbose_logging_and_edged_extensions(tmp_path):
    data = {"sagemaker_edge_core_device_name": "d", "sagemaker_edge_log_verbose": True,
            "edged_model_roots": ["models", "/opt/models"], "edged_predict_threads": 3,
            "edged_max_request_bytes": 1 << 20, "edged_shm_prefix": "cam-",
            "sagemaker_edge_core_capture_data_disk_path": "capture"}
    work = tmp_path / "work"
    loaded = load_agent_config(write(tmp_path, data), cwd=work)
    assert loaded.log.level == "debug"
    config = loaded.config
    # Relative paths are relative to the working directory, as the old agent's were.
    assert config.model_roots == [work / "models", Path("/opt/models")]
    assert config.capture.disk_path == work / "capture"
    assert loaded.relative_to == work
    assert (config.predict_threads, config.max_request_bytes, config.shm_prefix) == (
        3, 1 << 20, "cam-")


def test_unknown_keys(tmp_path):
    data = {"sagemaker_edge_core_device_name": "d",
            "sagemaker_edge_core_some_future_key": 1}
    assert ("sagemaker_edge_core_some_future_key", "unknown to edged: ignored") in \
        load_agent_config(write(tmp_path, data)).ignored
    [problem] = problems(tmp_path, {**data, "capture_dir": "/x"})
    assert problem == (f"Invalid config for 'capture_dir' at {tmp_path / 'agent.json'}, "
                       "line 4: unknown key 'capture_dir' (the agent JSON holds "
                       "sagemaker_edge_* and edged_* keys; see docs/agent.md)")


def test_json_errors_name_the_key_and_line(tmp_path):
    data = dict(AWS_SAMPLE)
    data["sagemaker_edge_core_capture_data_buffer_size"] = 0
    data["sagemaker_edge_core_capture_data_destination"] = "Tape"
    found = problems(tmp_path, data)
    path = tmp_path / "agent.json"
    lines = json.dumps(data, indent=2).splitlines()

    def line(key: str) -> int:
        return next(i for i, text in enumerate(lines, 1) if f'"{key}"' in text)

    for key, message in [
        ("sagemaker_edge_core_capture_data_buffer_size", "greater than or equal to 1"),
        ("sagemaker_edge_core_capture_data_destination", "'Disk' or 'Cloud'"),
    ]:
        assert any(p.startswith(f"Invalid config for '{key}' at {path}, line {line(key)}: ")
                   and message in p for p in found), (key, found)


def test_json_cross_checks(tmp_path):
    base = {"sagemaker_edge_core_device_name": "d"}
    [problem] = problems(tmp_path, {**base, "sagemaker_edge_core_capture_data_buffer_size": 4,
                                    "sagemaker_edge_core_capture_data_batch_size": 5})
    assert "'sagemaker_edge_core_capture_data_batch_size'" in problem
    assert "must not exceed buffer_size (4)" in problem
    [problem] = problems(tmp_path, {**base,
                                    "sagemaker_edge_core_capture_data_destination": "Cloud"})
    assert "'sagemaker_edge_provider_s3_bucket_name'" in problem
    assert "needs an S3 bucket" in problem
    found = problems(tmp_path, {**base, "sagemaker_edge_provider_provider": "None",
                                "sagemaker_edge_provider_s3_bucket_name": "b",
                                "sagemaker_edge_core_capture_data_destination": "Cloud"})
    assert any("'Cloud' needs sagemaker_edge_provider_provider 'Aws'" in p for p in found)
    [problem] = problems(tmp_path, {**base, "sagemaker_edge_provider_provider": "Azure"})
    assert "must be 'Aws' or 'None'" in problem
    [problem] = problems(tmp_path, {**base, "sagemaker_edge_core_folder_prefix": "a/../b"})
    assert "'sagemaker_edge_core_folder_prefix'" in problem and "'..'" in problem


@pytest.mark.parametrize("text, says", [
    ('{"sagemaker_edge_core_device_name": "a", "sagemaker_edge_core_device_name": "b"}',
     "appears twice"),
    ('{"a":' * 2000 + "1" + "}" * 2000, "nested deeper"),
])
def test_hostile_json_is_a_config_error(tmp_path, text, says):
    # Before: the repeated key silently took the last value; the nesting raised
    # RecursionError out of the loader (a traceback, not exit 78).
    [problem] = problems(tmp_path, text)
    assert problem.startswith(f"Invalid JSON at {tmp_path / 'agent.json'}: ") and says in problem


def test_a_config_file_over_the_size_bound_is_a_config_error(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text('{"sagemaker_edge_core_device_name": "' + "x" * (2 << 20) + '"}')
    with pytest.raises(ConfigError, match="over the limit"):
        load_agent_config(path)


def test_broken_json(tmp_path):
    [problem] = problems(tmp_path, '{\n  "sagemaker_edge_core_device_name": "d",\n}\n')
    assert problem.startswith(f"Invalid JSON at {tmp_path / 'agent.json'}: ")
    assert "at line 3" in problem
    [problem] = problems(tmp_path, "[1, 2]", "agent.yaml")  # YAML, not a mapping
    assert "mapping with an 'agent' section" in problem


YAML = """\
device:
  id: gw-7
log:
  level: debug
agent:
  model_roots: [models]
  predict_threads: 4
  max_loaded_models: 3
  capture:
    destination: Disk
    disk_path: /var/lib/edged/capture
    batch_size: 5
"""


def test_yaml(tmp_path):
    loaded = load_agent_config(write(tmp_path, YAML, "agent.yaml"))
    assert loaded.format == "yaml"
    assert loaded.log.level == "debug"
    config = loaded.config
    assert config.device_name == "gw-7"  # from device.id
    assert config.model_roots == [tmp_path / "models"]
    assert (config.predict_threads, config.max_loaded_models) == (4, 3)
    assert config.capture.batch_size == 5
    assert loaded.ignored == []


def test_yaml_errors_are_located(tmp_path):
    text = YAML.replace("predict_threads: 4", "predict_threads: 0").replace(
        "batch_size: 5", "batch_size: 5\n    frobnicate: true")
    found = problems(tmp_path, text, "agent.yaml")
    path = tmp_path / "agent.yaml"
    assert f"Invalid config for 'agent.predict_threads' at {path}, line 7: Input should be " \
           "greater than or equal to 1 (got 0)" in found
    assert f"Invalid config for 'agent.capture.frobnicate' at {path}, line 13: unknown key " \
           "'frobnicate'" in found
    [problem] = problems(tmp_path, "log: {level: info}\n", "agent.yaml")
    assert "required key 'agent' is missing" in problem
    [problem] = problems(tmp_path, "agent: {}\nsources: {}\n", "agent.yaml")
    assert "unknown key 'sources'" in problem


def test_json_paths_follow_the_working_directory_and_yaml_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    old = {"sagemaker_edge_core_device_name": "d",
           "sagemaker_edge_core_capture_data_disk_path": "./agent/capture",
           "sagemaker_edge_provider_aws_iot_cred_endpoint":
               "https://x.credentials.iot.eu-west-1.amazonaws.com/role-aliases/a/credentials",
           "sagemaker_edge_provider_aws_cert_file": "./agent/certificates/iot/cert.pem",
           "sagemaker_edge_provider_aws_cert_pk_file": "./agent/certificates/iot/key.pem",
           "sagemaker_edge_provider_aws_ca_cert_file": "/etc/ssl/AmazonRootCA1.pem"}
    work = tmp_path / "device"
    (tmp_path / "etc").mkdir()
    loaded = load_agent_config(write(tmp_path / "etc", old), cwd=work)
    config = loaded.config
    # Without edged_model_roots the working directory is the model root: a url like
    # agent/model/0/NAME/1.0 is found where the old agent found it.
    assert config.model_roots == [work]
    assert config.capture.disk_path == work / "agent/capture"
    assert config.credentials is not None
    assert config.credentials.cert_file == work / "agent/certificates/iot/cert.pem"
    assert config.credentials.ca_file == Path("/etc/ssl/AmazonRootCA1.pem")
    assert loaded.paths()["key_file"] == str(work / "agent/certificates/iot/key.pem")
    # Never the file system's root (a service started without WorkingDirectory=).
    rooted = load_agent_config(tmp_path / "etc" / "agent.json", cwd=Path("/")).config
    assert rooted.model_roots == [Path("/state/models")]
    # edged YAML: relative to the file, wherever the agent starts; so are the defaults.
    yaml = tmp_path / "conf" / "agent.yaml"
    yaml.parent.mkdir()
    yaml.write_text("agent:\n  device_name: d\n  capture: {disk_path: cap}\n")
    monkeypatch.chdir(tmp_path)
    loaded = load_agent_config(yaml)
    assert (loaded.config.model_roots, loaded.config.capture.disk_path) == (
        [yaml.parent / "state/models"], yaml.parent / "cap")
    assert loaded.relative_to == yaml.parent
    yaml.write_text("agent: {device_name: d}\n")
    assert load_agent_config(yaml).config.capture_settings().disk_path == \
        yaml.parent / "state/capture"


def test_default_roots_follow_the_state_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edged")
    config = parse_agent_config("agent: {device_name: d}\n", str(tmp_path / "a.yaml")).config
    assert config.model_roots == [Path("/var/lib/edged/models")]
    assert config.capture_settings().disk_path == Path("/var/lib/edged/capture")


def test_run_exits_78_on_a_bad_config(tmp_path, capsys):
    path = write(tmp_path, {"sagemaker_edge_core_capture_data_batch_size": "ten"})
    status = run(argparse.Namespace(config=str(path), address=str(tmp_path / "s.sock")))
    assert status == 78
    err = capsys.readouterr().err
    assert "'sagemaker_edge_core_capture_data_batch_size'" in err
    assert "1 error(s); the agent was not started." in err
    assert run(argparse.Namespace(config=str(tmp_path / "missing.json"),
                                  address="x")) == 78
