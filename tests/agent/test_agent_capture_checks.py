"""Issue 15, item 5: CaptureData tensors that claim to be a loaded model's (the request
names the model) are checked against its metadata: a name the model does not have, a
data type, rank or fixed dimension that differs, or more tensors than it has is refused
with INVALID_ARGUMENT naming the mismatch, counted as ``capture_mismatch``, and nothing
is stored. Shapes with one -1 and shared-memory handles without a size are inferred here
too (items 1 and 2)."""

from __future__ import annotations

import os
import uuid
from multiprocessing import shared_memory

import grpc
import numpy as np
import pytest
from agent_testkit import MemoryCapture, code_of, inline, load_windturbine, windows

from edged.agent.proto import agent_pb2 as pb


def mismatches(agent) -> int:
    return agent.server.counters.get("agent_requests_refused", rpc="CaptureData",
                                     code="INVALID_ARGUMENT", reason="capture_mismatch")


def capture(**tensors) -> pb.CaptureDataRequest:
    return pb.CaptureDataRequest(model_name="windturbine", capture_id=str(uuid.uuid4()),
                                 **tensors)


@pytest.fixture
def sink() -> MemoryCapture:
    return MemoryCapture(buffer_size=100)


def test_tensors_that_do_not_match_the_loaded_model_are_refused(start_agent, sink):
    agent = start_agent(sink=sink)
    stub = agent.stub()
    load_windturbine(stub)
    x = windows(2)
    cases = [
        (capture(input_tensors=[inline(x, "inp")]),
         "model 'windturbine' has no input 'inp' (inputs: input)"),
        (capture(output_tensors=[inline(x, "input")]),
         "model 'windturbine' has no output 'input' (outputs: output)"),
        (capture(input_tensors=[inline(x.astype(np.float64), "input",
                                       data_type=pb.FLOAT64)]),
         "input 'input' of model 'windturbine' takes FLOAT32, the request sends FLOAT64"),
        (capture(input_tensors=[inline(x.reshape(2, 6, 100), "input")]),
         "takes shape [-1, 6, 10, 10] (-1: any), the request sends [2, 6, 100]"),
        (capture(output_tensors=[inline(x.reshape(4, 3, 10, 10), "output")]),
         "output 'output' of model 'windturbine' takes shape [-1, 6, 10, 10] (-1: any), "
         "the request sends [4, 3, 10, 10]"),
        (capture(input_tensors=[inline(x), inline(x)]),
         "model 'windturbine' has 1 input(s) (input); the request sends more input tensors"),
        (capture(input_tensors=[inline(x, "input"), inline(x, "input")]),
         "input 'input' is sent twice"),
    ]
    for request, expect in cases:
        code, details = code_of(stub.CaptureData, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert expect in details
    assert mismatches(agent) == len(cases)
    assert sink.records == {}  # nothing stored


def test_tensors_that_match_are_stored_with_inferred_shapes(start_agent, sink):
    agent = start_agent(sink=sink)
    stub = agent.stub()
    load_windturbine(stub)
    echoed = stub.DescribeModel(pb.DescribeModelRequest(name="windturbine"),
                                timeout=30).model
    x, y = windows(3, seed=1), windows(3, seed=2)
    segment_id = os.getpid() * 1000 + 811
    shm = shared_memory.SharedMemory(name=f"edged-{segment_id}", create=True, size=y.nbytes)
    try:
        shm.buf[:y.nbytes] = y.tobytes()
        request = capture(
            # The shapes as DescribeModel reports them, -1 and all.
            input_tensors=[pb.Tensor(tensor_metadata=echoed.input_tensor_metadatas[0],
                                     byte_data=x.tobytes())],
            # Shared memory without a size: the whole shape says it.
            output_tensors=[pb.Tensor(
                tensor_metadata=pb.TensorMetadata(name="output", data_type=pb.FLOAT32,
                                                  shape=list(y.shape)),
                shared_memory_handle=pb.SharedMemoryHandle(segment_id=segment_id,
                                                           offset=0))])
        stub.CaptureData(request, timeout=30)
    finally:
        shm.close()
        shm.unlink()
    record = sink.records[request.capture_id]
    [inp], [out] = record.input_tensors, record.output_tensors
    assert (inp.name, inp.shape, inp.data) == ("input", [3, 6, 10, 10], x.tobytes())
    assert (out.name, out.shape, out.data) == ("output", [3, 6, 10, 10], y.tobytes())
    # Only the outputs, by position without metadata: stored too.
    only = capture(output_tensors=[inline(y)])
    stub.CaptureData(only, timeout=30)
    assert sink.records[only.capture_id].output_tensors[0].name == "output"
    assert mismatches(agent) == 0


def test_a_model_that_is_not_loaded_is_stored_as_sent(start_agent, sink):
    agent = start_agent(sink=sink)
    stub = agent.stub()
    request = pb.CaptureDataRequest(model_name="elsewhere", capture_id="c1", input_tensors=[
        inline(np.arange(12, dtype=np.int32), "anything", data_type=pb.INT32, shape=[-1, 4])])
    stub.CaptureData(request, timeout=30)
    assert sink.records["c1"].input_tensors[0].shape == [3, 4]
    assert mismatches(agent) == 0
