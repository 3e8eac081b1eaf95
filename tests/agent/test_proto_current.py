"""The committed generated modules match agent.proto, and the wire names match the API."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from edged.agent.proto import agent_pb2

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(metadata.version("grpcio-tools") != "1.81.1",
                    reason="gen_proto.py needs grpcio-tools 1.81.1 exactly")
def test_generated_files_are_current() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_and_method_names() -> None:
    service = agent_pb2.DESCRIPTOR.services_by_name["Agent"]
    assert service.full_name == "AWS.SageMaker.Edge.Agent"
    assert [m.name for m in service.methods] == [
        "Predict", "LoadModel", "UnLoadModel", "ListModels", "DescribeModel",
        "CaptureData", "GetCaptureDataStatus"]


def _fields(message: str) -> dict[str, tuple[int, str]]:
    desc = agent_pb2.DESCRIPTOR.message_types_by_name[message]
    return {f.name: (f.number, f.type) for f in desc.fields}


def test_field_numbers_match_the_reference() -> None:
    expected = {
        "TensorMetadata": {"name": 1, "data_type": 2, "shape": 3},
        "SharedMemoryHandle": {"size": 1, "offset": 2, "segment_id": 3},
        "Tensor": {"tensor_metadata": 1, "byte_data": 4, "shared_memory_handle": 5},
        "Model": {"url": 1, "name": 2, "input_tensor_metadatas": 3,
                  "output_tensor_metadatas": 4},
        "PredictRequest": {"name": 1, "tensors": 2},
        "PredictResponse": {"tensors": 1},
        "LoadModelRequest": {"url": 1, "name": 2},
        "LoadModelResponse": {"model": 1},
        "UnLoadModelRequest": {"name": 1},
        "UnLoadModelResponse": {},
        "ListModelsRequest": {},
        "ListModelsResponse": {"models": 1},
        "DescribeModelRequest": {"name": 1},
        "DescribeModelResponse": {"model": 1},
        "Timestamp": {"seconds": 1, "nanos": 2},
        "AuxilaryData": {"name": 1, "encoding": 2, "byte_data": 3, "shared_memory_handle": 4},
        "CaptureDataRequest": {"model_name": 1, "capture_id": 2, "inference_timestamp": 3,
                               "input_tensors": 4, "output_tensors": 5, "inputs": 6,
                               "outputs": 7},
        "CaptureDataResponse": {},
        "GetCaptureDataStatusRequest": {"capture_id": 1},
        "GetCaptureDataStatusResponse": {"status": 1},
    }
    for message, fields in expected.items():
        assert {k: v[0] for k, v in _fields(message).items()} == fields, message


def test_enums_match_the_reference() -> None:
    def values(name: str) -> dict[str, int]:
        return {v.name: v.number for v in agent_pb2.DESCRIPTOR.enum_types_by_name[name].values}

    assert values("DataType") == {"UINT8": 0, "INT16": 1, "INT32": 2, "INT64": 3,
                                  "FLOAT16": 4, "FLOAT32": 5, "FLOAT64": 6}
    assert values("Encoding") == {"CSV": 0, "JSON": 1, "NONE": 2, "BASE64": 3}
    assert values("CaptureDataStatus") == {"FAILURE": 0, "SUCCESS": 1, "IN_PROGRESS": 2,
                                           "NOT_FOUND": 3}
