"""The real command: ``python -m edged agent -a SOCKET -c agent.json`` in a subprocess,
with a stand-in for systemd's notify socket, driven by plain grpcio stubs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import pytest
from agent_testkit import BUILTIN_MODEL, ROOT, output_array, reference_predict, windows

from edged.agent.config import IGNORED_KEYS
from edged.agent.proto import agent_pb2 as pb
from edged.agent.proto import agent_pb2_grpc


class NotifySocket:
    """What systemd listens on: a datagram socket collecting sd_notify messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.seen: list[str] = []

    def wait_for(self, field: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while not any(field in message.split("\n") for message in self.seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {field} within {timeout} s: {log.read_text()}")
            if proc.poll() is not None and not self._drain():
                raise AssertionError(f"the agent exited ({proc.returncode}): "
                                     f"{log.read_text()}")
            self._drain()

    def _drain(self) -> bool:
        try:
            self.seen.append(self.sock.recv(4096).decode())
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def agent_env(notify: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    if notify is not None:
        env.update(NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="2000000")
    return env


def test_the_real_command_end_to_end(tmp_path, short_dir):
    models = tmp_path / "models"
    shutil.copytree(BUILTIN_MODEL, models / "windturbine-v1")
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({
        "sagemaker_edge_core_device_name": "gw-1",
        "sagemaker_edge_core_device_fleet_name": "farm",
        "sagemaker_edge_core_region": "eu-west-1",
        "sagemaker_edge_core_root_certs_path": "/agent_demo/certificates",
        "sagemaker_edge_provider_provider": "Aws",
        "sagemaker_edge_provider_provider_path": "/agent_demo/lib/libprovider_aws.so",
        "sagemaker_edge_core_capture_data_destination": "Disk",
        "sagemaker_edge_core_capture_data_disk_path": str(tmp_path / "capture"),
        "sagemaker_edge_core_capture_data_buffer_size": 10,
        "sagemaker_edge_core_capture_data_batch_size": 1,
        "sagemaker_edge_core_capture_data_push_period_seconds": 1,
        "sagemaker_edge_telemetry_libsystemd_path": "/usr/lib/libsystemd.so.0",
        "edged_model_roots": [str(models)],
    }, indent=2))
    sock = short_dir / "agent.sock"
    # A socket file left behind by a crashed agent: removed at start.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()
    notify = NotifySocket(short_dir / "notify")
    log = tmp_path / "agent.log"
    segment_id = os.getpid() * 1000 + 555
    x = windows(120, seed=9)
    shm = shared_memory.SharedMemory(name=f"edged-{segment_id}", create=True, size=x.nbytes)
    shm.buf[:x.nbytes] = x.tobytes()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edged", "--log-format", "json",
                                 "agent", "-a", str(sock), "-c", str(config)], cwd=ROOT,
                                env=agent_env(notify.path), stdout=out, stderr=out)
    try:
        notify.wait_for("READY=1", 60, proc, log)
        assert (sock.lstat().st_mode & 0o777) == 0o660
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            stub = agent_pb2_grpc.AgentStub(channel)
            model = stub.LoadModel(pb.LoadModelRequest(url="windturbine-v1", name="turbine"),
                                   timeout=30).model
            assert [m.name for m in stub.ListModels(pb.ListModelsRequest(),
                                                    timeout=30).models] == ["turbine"]
            assert stub.DescribeModel(pb.DescribeModelRequest(name="turbine"),
                                      timeout=30).model == model
            reply = stub.Predict(pb.PredictRequest(name="turbine", tensors=[pb.Tensor(
                shared_memory_handle=pb.SharedMemoryHandle(size=x.nbytes, offset=0,
                                                           segment_id=segment_id))]),
                timeout=30)
            y = output_array(reply.tensors[0])
            np.testing.assert_array_equal(y, reference_predict(x))
            capture_id = str(uuid.uuid4())
            stub.CaptureData(pb.CaptureDataRequest(
                model_name="turbine", capture_id=capture_id,
                inference_timestamp=pb.Timestamp(seconds=int(time.time())),
                input_tensors=[pb.Tensor(shared_memory_handle=pb.SharedMemoryHandle(
                    size=x.nbytes, offset=0, segment_id=segment_id))],
                output_tensors=[reply.tensors[0]]), timeout=30)
            deadline = time.monotonic() + 20
            status = pb.IN_PROGRESS
            while status != pb.SUCCESS and time.monotonic() < deadline:
                time.sleep(0.1)
                status = stub.GetCaptureDataStatus(pb.GetCaptureDataStatusRequest(
                    capture_id=capture_id), timeout=30).status
            assert status == pb.SUCCESS
            stub.UnLoadModel(pb.UnLoadModelRequest(name="turbine"), timeout=30)
        notify.wait_for("WATCHDOG=1", 10, proc, log)
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", 30, proc, log)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()
        # The agent read the client's segment, and its exit did not unlink it.
        try:
            reopened = shared_memory.SharedMemory(name=f"edged-{segment_id}")
            reopened.close()
            still_there = True
        except FileNotFoundError:
            still_there = False
        shm.close()
        if still_there:
            shm.unlink()
    assert still_there, "the agent's exit removed the client's shared-memory segment"
    assert not sock.exists()
    events = [json.loads(line) for line in log.read_text().splitlines()
              if line.startswith("{")]
    ignored = {e["key"] for e in events if e["event"] == "config_key_ignored"}
    assert ignored == {"sagemaker_edge_core_root_certs_path",
                       "sagemaker_edge_provider_provider_path",
                       "sagemaker_edge_telemetry_libsystemd_path"}
    assert all(e["note"] == IGNORED_KEYS[e["key"]] for e in events
               if e["event"] == "config_key_ignored")
    names = [e["event"] for e in events]
    for event in ("stale_socket_removed", "agent_ready", "model_loaded", "agent_stopping",
                  "agent_stopped"):
        assert event in names, (event, names)
    assert "Traceback" not in log.read_text()
    assert len(list((tmp_path / "capture").rglob("*.jsonl.gz"))) == 1


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", "agent", *args], cwd=ROOT,
                          env=agent_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_bad_config_exits_78_with_located_errors(tmp_path, short_dir):
    config = tmp_path / "agent.json"
    config.write_text('{\n  "sagemaker_edge_core_capture_data_buffer_size": -3\n}\n')
    result = run_cli("-a", str(short_dir / "a.sock"), "-c", str(config))
    assert result.returncode == 78, result.stderr
    assert (f"Invalid config for 'sagemaker_edge_core_capture_data_buffer_size' at {config}, "
            "line 2: Input should be greater than or equal to 1 (got -3)") in result.stderr
    assert not (short_dir / "a.sock").exists()


def test_a_socket_in_use_is_refused(tmp_path, short_dir):
    config = tmp_path / "agent.yaml"
    config.write_text(f"agent:\n  device_name: d\n  model_roots: [{tmp_path}]\n"
                      f"  capture: {{disk_path: {tmp_path / 'capture'}}}\n")
    sock = short_dir / "busy.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    listener.listen()
    try:
        result = run_cli("-a", str(sock), "-c", str(config))
    finally:
        listener.close()
    assert result.returncode == 1, result.stderr
    assert "another process is serving on" in result.stderr
    assert sock.exists()  # not taken from under its owner


@pytest.mark.parametrize("content", ["a regular file"])
def test_a_non_socket_path_is_not_removed(tmp_path, short_dir, content):
    config = tmp_path / "agent.yaml"
    config.write_text(f"agent:\n  device_name: d\n  model_roots: [{tmp_path}]\n"
                      f"  capture: {{disk_path: {tmp_path / 'capture'}}}\n")
    path = short_dir / "file.sock"
    path.write_text(content)
    result = run_cli("-a", str(path), "-c", str(config))
    assert result.returncode == 1
    assert "is not a socket" in result.stderr
    assert path.read_text() == content
