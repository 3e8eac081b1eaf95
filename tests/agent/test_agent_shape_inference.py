"""Issue 15, items 1 and 2: a shape with one -1 (as ListModels and DescribeModel report a
dynamic dimension) is inferred from the byte count, and a shared-memory handle without a
size from the shape; what cannot be inferred is refused naming the tensor, the shape and
why. Unit checks of the decoder, then the same through a real agent."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from agent_testkit import (
    code_of,
    inline,
    load_windturbine,
    output_array,
    reference_predict,
    windows,
)

from edged.agent.errors import InvalidArgument
from edged.agent.models import LoadedModel, TensorInfo
from edged.agent.proto import agent_pb2 as pb
from edged.agent.tensors import plan_predict, tensor_spec

INPUT = TensorInfo("input", np.dtype("float32"), (-1, 6, 10, 10))
MODEL = LoadedModel("windturbine", "windturbine-v1", Path("/nowhere"),
                    Path("/nowhere/model.onnx"), (INPUT,), (), None)
ECHO = [-1, 6, 10, 10]  # what DescribeModel reports for the wind-turbine model


def meta(shape: list[int], data_type: int = pb.FLOAT32, name: str = "input"
         ) -> pb.TensorMetadata:
    return pb.TensorMetadata(name=name, data_type=data_type, shape=shape)


def handle(size: int, segment_id: int = 7, offset: int = 0) -> dict:
    return {"shared_memory_handle": pb.SharedMemoryHandle(size=size, offset=offset,
                                                          segment_id=segment_id)}


def refusal(tensor: pb.Tensor, default: TensorInfo | None = INPUT) -> str:
    with pytest.raises(InvalidArgument) as info:
        plan_predict(MODEL, [tensor]) if default is INPUT else tensor_spec(
            tensor, default, "input tensor")
    return str(info.value)


@pytest.mark.parametrize("batch", [1, 3, 1024])
def test_one_minus_one_is_inferred_from_the_byte_count(batch):
    x = windows(batch)
    spec = tensor_spec(pb.Tensor(tensor_metadata=meta(ECHO), byte_data=x.tobytes()), INPUT,
                       "input tensor")
    assert (spec.shape, spec.inferred, spec.nbytes) == ((batch, 6, 10, 10), 0, x.nbytes)
    # Anywhere in the shape, and for a model that is not loaded (no default) too.
    spec = tensor_spec(pb.Tensor(tensor_metadata=meta([batch, 6, -1, 10]),
                                 byte_data=x.tobytes()), None, "input tensor")
    assert spec.shape == (batch, 6, 10, 10)


def test_what_cannot_be_inferred_is_refused_naming_tensor_shape_and_why():
    x = windows(2)
    cases = [
        (meta([-1, -1, 10, 10]), x.tobytes(),
         "input tensor 'input': shape [-1, -1, 10, 10] has 2 dimensions of -1; only one can "
         "be inferred from the byte count"),
        (meta([-2, 6, 10, 10]), x.tobytes(),
         "input tensor 'input': shape [-2, 6, 10, 10] has -2 at dimension 0; the only "
         "negative dimension allowed is one -1"),
        (meta(ECHO), x.tobytes()[:-4],
         "input tensor 'input': shape [-1, 6, 10, 10] of FLOAT32: 4796 bytes is not a "
         "multiple of 2400"),
        (meta([-1, 0, 10, 10]), b"",
         "input tensor 'input': shape [-1, 0, 10, 10] of FLOAT32: the other dimensions hold "
         "no elements, so the -1 cannot be inferred"),
        # A -1 where the model's dimension is fixed must come to it: 4800 bytes make the
        # second dimension 4, the model takes 6.
        (meta([3, -1, 10, 10]), x.tobytes(),
         "input 'input' of model 'windturbine' takes shape [-1, 6, 10, 10] (-1: any), the "
         "request sends [3, 4, 10, 10] (its -1 at dimension 1 comes to 4 from the byte "
         "count; the model's is fixed at 6)"),
    ]
    for metadata, data, expect in cases:
        assert expect in refusal(pb.Tensor(tensor_metadata=metadata, byte_data=data))
    # The same -1 where the bytes agree with the model is fine.
    [(_, spec, _)] = plan_predict(MODEL, [pb.Tensor(tensor_metadata=meta([2, -1, 10, 10]),
                                                    byte_data=x.tobytes())]).inputs
    assert spec.shape == (2, 6, 10, 10)


def test_shared_memory_size_is_inferred_from_the_shape():
    spec = tensor_spec(pb.Tensor(tensor_metadata=meta([5, 6, 10, 10]), **handle(0)), INPUT,
                       "input tensor")
    assert (spec.shape, spec.nbytes) == ((5, 6, 10, 10), 5 * 2400)
    # A model whose input is all fixed needs no metadata at all.
    fixed = TensorInfo("input", np.dtype("float32"), (2, 6, 10, 10))
    assert tensor_spec(pb.Tensor(**handle(0)), fixed, "input tensor").nbytes == 4800
    # A given size is still checked against the shape.
    assert "has 4796 bytes; shape [2, 6, 10, 10] of FLOAT32 needs 4800" in refusal(
        pb.Tensor(tensor_metadata=meta([2, 6, 10, 10]), **handle(4796)))


def test_a_minus_one_and_no_size_cannot_be_inferred():
    for tensor, default in [(pb.Tensor(tensor_metadata=meta(ECHO), **handle(0)), INPUT),
                            (pb.Tensor(**handle(0)), INPUT)]:
        message = refusal(tensor, default)
        assert "shape [-1, 6, 10, 10] has a -1 and its shared_memory_handle has size 0" in \
            message and "set the handle's size or send the whole shape" in message


# -- through a real agent ------------------------------------------------------------------


def test_any_batch_a_dynamic_model_takes_up_to_max_batch(stub, segment):
    load_windturbine(stub)
    described = stub.DescribeModel(pb.DescribeModelRequest(name="windturbine"),
                                   timeout=30).model.input_tensor_metadatas[0]
    assert list(described.shape) == ECHO
    for batch in (1, 7, 1024):
        x = windows(batch, seed=batch)
        reply = stub.Predict(pb.PredictRequest(name="windturbine", tensors=[pb.Tensor(
            tensor_metadata=described, byte_data=x.tobytes())]), timeout=60)
        np.testing.assert_array_equal(output_array(reply.tensors[0]), reference_predict(x))
    # Shared memory, the shape echoed and the size given; the size left out and the
    # shape whole.
    x = windows(300, seed=1)
    segment_id = segment(x)
    for metadata, size in [(described, x.nbytes), (meta(list(x.shape)), 0)]:
        reply = stub.Predict(pb.PredictRequest(name="windturbine", tensors=[pb.Tensor(
            tensor_metadata=metadata, **handle(size, segment_id))]), timeout=60)
        np.testing.assert_array_equal(output_array(reply.tensors[0]), reference_predict(x))
    code, details = code_of(stub.Predict, pb.PredictRequest(name="windturbine", tensors=[
        inline(windows(1025), "input", shape=ECHO)]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "batch 1025 is more than max_batch (1024)" in details


def test_refusals_through_the_agent_are_counted(agent, segment):
    stub = agent.stub()
    load_windturbine(stub)
    x = windows(2)
    segment_id = segment(x)
    for tensor, expect in [
        (inline(x, "input", shape=[-1, -1, 10, 10]), "2 dimensions of -1"),
        (pb.Tensor(tensor_metadata=meta(ECHO), **handle(0, segment_id)), "size 0"),
    ]:
        code, details = code_of(stub.Predict, pb.PredictRequest(name="windturbine",
                                                                tensors=[tensor]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and expect in details, details
    assert agent.server.counters.get("agent_requests_refused", rpc="Predict",
                                     code="INVALID_ARGUMENT", reason="invalid_argument") == 2
