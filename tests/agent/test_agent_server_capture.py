"""CaptureData and GetCaptureDataStatus through the server, onto the real capture store
(Disk destination; Cloud with its endpoint down). The store itself is tested in
tests/capture/."""

from __future__ import annotations

import base64
import os
import time
import uuid
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import pytest
from agent_testkit import MemoryCapture, inline, load_windturbine, windows

from edged.agent.proto import agent_pb2 as pb
from edged.capture.segments import read_object
from tests.support import S3Server, free_port


def wait_status(stub, capture_id: str, want: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        status = stub.GetCaptureDataStatus(pb.GetCaptureDataStatusRequest(
            capture_id=capture_id), timeout=30).status
        if status == want or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def uploaded(root: Path) -> list[dict]:
    return [record for path in sorted(root.rglob("*.jsonl.gz"))
            for record in read_object(path.relative_to(root).as_posix(), path.read_bytes())]


def code_of(stub, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        stub.CaptureData(request, timeout=30)
    return info.value.code(), info.value.details()


def test_capture_inline_and_shared_memory_reaches_disk(start_agent, tmp_path):
    agent = start_agent(sink=None,  # the real store, from the config
                        capture={"batch_size": 1, "push_period_s": 0.2,
                                 "folder_prefix": "captures"})
    stub = agent.stub()
    load_windturbine(stub)
    x = windows(1, seed=2)
    y = windows(40, seed=3)  # 96 kB: a separate file, and sent through shared memory
    segment_id = os.getpid() * 1000 + 999
    shm = shared_memory.SharedMemory(name=f"edged-{segment_id}", create=True, size=y.nbytes)
    try:
        shm.buf[:y.nbytes] = y.tobytes()
        capture_id = str(uuid.uuid4())
        stub.CaptureData(pb.CaptureDataRequest(
            model_name="windturbine", capture_id=capture_id,
            inference_timestamp=pb.Timestamp(seconds=1_700_000_000, nanos=5),
            input_tensors=[inline(x)],  # no metadata: the loaded model's input
            output_tensors=[pb.Tensor(
                tensor_metadata=pb.TensorMetadata(name="output", data_type=pb.FLOAT32,
                                                  shape=list(y.shape)),
                shared_memory_handle=pb.SharedMemoryHandle(size=y.nbytes, offset=0,
                                                           segment_id=segment_id))],
            inputs=[pb.AuxilaryData(name="turbine", encoding=pb.JSON,
                                    byte_data=b'{"id": "turbine-3"}')],
            outputs=[pb.AuxilaryData(name="verdict", encoding=pb.CSV, byte_data=b"ok,1\n")],
        ), timeout=30)
    finally:
        shm.close()
        shm.unlink()  # the agent copied the bytes before CaptureData returned
    assert wait_status(stub, capture_id, pb.SUCCESS) == pb.SUCCESS

    [line] = uploaded(tmp_path / "capture" / "captures")
    assert (line["kind"], line["capture_id"]) == ("agent", capture_id)
    # The loaded model's manifest gives the version partition.
    assert (line["model_name"], line["model_version"]) == ("windturbine", 1)
    assert line["partition"] == {"device": "test-device", "model": "windturbine",
                                 "version": "1", "date": "2023-11-14", "hour": "22"}
    assert line["device_id"] == "test-device"
    assert line["inference_timestamp"] == {"seconds": 1_700_000_000, "nanos": 5}
    [inp] = line["input_tensors"]
    assert (inp["name"], inp["dtype"], inp["shape"]) == ("input", "float32", [1, 6, 10, 10])
    assert base64.b64decode(inp["data"]) == x.tobytes()
    [out] = line["output_tensors"]
    assert out["shape"] == [40, 6, 10, 10]
    assert base64.b64decode(out["data"]) == y.tobytes()  # 96 kB, inline too
    assert base64.b64decode(line["inputs"][0]["data"]) == b'{"id": "turbine-3"}'
    assert line["outputs"][0]["encoding"] == "CSV"
    assert base64.b64decode(line["outputs"][0]["data"]) == b"ok,1\n"


def test_capture_statuses_and_errors(start_agent, monkeypatch):
    # Cloud with its endpoint down: captures stay pending (retried for as long as it
    # takes), so the buffer fills.
    for name, value in S3Server.CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    agent = start_agent(sink=None, capture={
        "batch_size": 2, "buffer_size": 2, "push_period_s": 3600, "destination": "Cloud",
        "s3_bucket": "captures", "s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    stub = agent.stub()
    load_windturbine(stub)
    x = windows(1)

    def request(capture_id: str, model: str = "windturbine", **extra) -> pb.CaptureDataRequest:
        return pb.CaptureDataRequest(model_name=model, capture_id=capture_id,
                                     input_tensors=[inline(x)], **extra)

    assert stub.GetCaptureDataStatus(pb.GetCaptureDataStatusRequest(
        capture_id="never-seen"), timeout=30).status == pb.NOT_FOUND
    first = str(uuid.uuid4())
    stub.CaptureData(request(first), timeout=30)
    assert stub.GetCaptureDataStatus(pb.GetCaptureDataStatusRequest(
        capture_id=first), timeout=30).status == pb.IN_PROGRESS

    code, details = code_of(stub, request(first))
    assert code == grpc.StatusCode.ALREADY_EXISTS, details
    for bad, expect in [(request(""), "capture_id is empty"),
                        (request(str(uuid.uuid4()), model="not_a_name"), "model name"),
                        (request(str(uuid.uuid4()), model=""), "model_name is empty"),
                        (pb.CaptureDataRequest(model_name="other", capture_id="c1",
                                               input_tensors=[inline(x)]),
                         "no tensor_metadata"),
                        (request(str(uuid.uuid4()), inputs=[pb.AuxilaryData(
                            name="a", encoding=9, byte_data=b"x")]), "unknown encoding 9"),
                        (request(str(uuid.uuid4()), output_tensors=[pb.Tensor(
                            tensor_metadata=pb.TensorMetadata(name="output", data_type=77,
                                                              shape=[1]),
                            byte_data=b"x")]), "unknown data type 77")]:
        code, details = code_of(stub, bad)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (expect, details)
        assert expect in details

    # A second model's capture fills the buffer (2); the upload cannot reach S3.
    meta = pb.TensorMetadata(name="v", data_type=pb.UINT8, shape=[3])
    stub.CaptureData(pb.CaptureDataRequest(model_name="other", capture_id="c2", input_tensors=[
        pb.Tensor(tensor_metadata=meta, byte_data=b"abc")]), timeout=30)
    code, details = code_of(stub, request(str(uuid.uuid4())))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "buffer" in details
    # Everything else still works.
    stub.Predict(pb.PredictRequest(name="windturbine", tensors=[inline(x)]), timeout=30)
    assert stub.GetCaptureDataStatus(pb.GetCaptureDataStatusRequest(
        capture_id="c2"), timeout=30).status == pb.IN_PROGRESS


def test_buffer_full_maps_to_resource_exhausted(start_agent):
    sink = MemoryCapture(buffer_size=1)
    stub = start_agent(sink=sink).stub()
    meta = pb.TensorMetadata(name="v", data_type=pb.INT32, shape=[2])
    tensor = pb.Tensor(tensor_metadata=meta, byte_data=np.arange(2, dtype=np.int32).tobytes())
    stub.CaptureData(pb.CaptureDataRequest(model_name="m", capture_id="a",
                                           input_tensors=[tensor]), timeout=30)
    with pytest.raises(grpc.RpcError) as info:
        stub.CaptureData(pb.CaptureDataRequest(model_name="m", capture_id="b",
                                               input_tensors=[tensor]), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert sink.records["a"].input_tensors[0].shape == [2]


def test_the_old_embed_limit_is_accepted_and_ignored(tmp_path):
    """Tensors are always inline now: the old agent's embed limit means nothing, and a
    file that sets it still loads, the key listed as ignored (and so logged)."""
    from edged.agent.config import parse_agent_config

    key = "sagemaker_edge_core_capture_data_base64_embed_limit"
    loaded = parse_agent_config(
        f'{{"sagemaker_edge_core_device_name": "d", "{key}": 4096}}',
        str(tmp_path / "agent.json"))
    assert "always inline" in dict(loaded.ignored)[key]
    loaded = parse_agent_config(
        "agent:\n  capture:\n    base64_embed_limit: 3072\n    batch_size: 5\n",
        str(tmp_path / "agent.yaml"))
    assert loaded.config.capture.batch_size == 5
    assert "always inline" in dict(loaded.ignored)["agent.capture.base64_embed_limit"]
