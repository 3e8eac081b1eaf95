"""Tensors through POSIX shared memory: segment_id N is the object /edged-N."""

from __future__ import annotations

import itertools
import os
from multiprocessing import shared_memory

import grpc
import numpy as np
import pytest
from agent_testkit import inline, load_windturbine, output_array, reference_predict, windows

from edged.agent.proto import agent_pb2 as pb
from edged.agent.tensors import SharedMemoryReader

_ids = itertools.count(1)


@pytest.fixture
def segment():
    """Creates segments named like a client would (edged-<id>); unlinks them after."""
    made: list[shared_memory.SharedMemory] = []

    def create(size: int, prefix: str = "edged-") -> tuple[int, shared_memory.SharedMemory]:
        segment_id = os.getpid() * 1000 + next(_ids)
        shm = shared_memory.SharedMemory(name=f"{prefix}{segment_id}", create=True, size=size)
        made.append(shm)
        return segment_id, shm

    yield create
    for shm in made:
        shm.close()
        shm.unlink()


def handle_tensor(segment_id: int, offset: int, size: int, meta: pb.TensorMetadata | None = None
                  ) -> pb.Tensor:
    return pb.Tensor(tensor_metadata=meta, shared_memory_handle=pb.SharedMemoryHandle(
        size=size, offset=offset, segment_id=segment_id))


def code_of(stub, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    return info.value.code(), info.value.details()


def test_segment_id_maps_to_the_documented_posix_name():
    assert SharedMemoryReader().posix_name(42) == "/edged-42"
    assert SharedMemoryReader("cam-").posix_name(2**64 - 1) == f"/cam-{2**64 - 1}"


def test_predict_from_shared_memory_at_an_offset(stub, segment):
    load_windturbine(stub)
    x = windows(300, seed=5)  # 720 kB: above the 256 KB the old documentation suggests
    segment_id, shm = segment(x.nbytes + 4096 + 100)
    shm.buf[4096:4096 + x.nbytes] = x.tobytes()
    for meta in (None, pb.TensorMetadata(name="input", data_type=pb.FLOAT32,
                                         shape=list(x.shape))):
        reply = stub.Predict(pb.PredictRequest(name="windturbine", tensors=[
            handle_tensor(segment_id, 4096, x.nbytes, meta)]), timeout=30)
        [out] = reply.tensors
        assert out.WhichOneof("data") == "byte_data"  # outputs always inline
        np.testing.assert_array_equal(output_array(out), reference_predict(x))


def test_handle_outside_its_segment(stub, segment):
    load_windturbine(stub)
    x = windows(2)
    segment_id, shm = segment(x.nbytes)
    shm.buf[:x.nbytes] = x.tobytes()
    # Sizes of whole windows: a size that is not one is refused before the segment is
    # opened (the shape is checked before any byte is read).
    # Size 0 with the whole shape: the size is inferred, and checked like any other.
    meta = pb.TensorMetadata(name="input", data_type=pb.FLOAT32, shape=list(x.shape))
    for offset, size, with_meta in [(4, x.nbytes, None), (0, 2 * x.nbytes, None),
                                    (x.nbytes + 1, 0, meta), (4, 0, meta),
                                    (2**64 - 1, x.nbytes, None)]:
        code, details = code_of(stub, pb.PredictRequest(name="windturbine", tensors=[
            handle_tensor(segment_id, offset, size, with_meta)]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "outside segment" in details
    reply = stub.Predict(pb.PredictRequest(name="windturbine", tensors=[
        handle_tensor(segment_id, 0, x.nbytes)]), timeout=30)
    np.testing.assert_array_equal(output_array(reply.tensors[0]), reference_predict(x))


def test_missing_segment(stub):
    load_windturbine(stub)
    code, details = code_of(stub, pb.PredictRequest(name="windturbine", tensors=[
        handle_tensor(987654321987, 0, 2400)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "/edged-987654321987" in details and "does not exist" in details
    x = windows(1)
    stub.Predict(pb.PredictRequest(name="windturbine", tensors=[inline(x)]), timeout=30)


def test_wrong_size_in_shared_memory(stub, segment):
    load_windturbine(stub)
    x = windows(2)
    segment_id, shm = segment(x.nbytes)
    shm.buf[:x.nbytes] = x.tobytes()
    code, details = code_of(stub, pb.PredictRequest(name="windturbine", tensors=[
        handle_tensor(segment_id, 0, x.nbytes - 4, pb.TensorMetadata(
            name="input", data_type=pb.FLOAT32, shape=[2, 6, 10, 10]))]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 4800" in details


def test_configured_prefix(start_agent, segment):
    stub = start_agent(shm_prefix="cam-").stub()
    load_windturbine(stub)
    x = windows(3)
    segment_id, shm = segment(x.nbytes, prefix="cam-")
    shm.buf[:x.nbytes] = x.tobytes()
    reply = stub.Predict(pb.PredictRequest(name="windturbine", tensors=[
        handle_tensor(segment_id, 0, x.nbytes)]), timeout=30)
    np.testing.assert_array_equal(output_array(reply.tensors[0]), reference_predict(x))


def test_reading_does_not_change_or_keep_the_segment(segment):
    segment_id, shm = segment(16)
    shm.buf[:16] = bytes(range(16))
    reader = SharedMemoryReader()
    data = reader.read(pb.SharedMemoryHandle(size=8, offset=4, segment_id=segment_id))
    assert data == bytes(range(4, 12))
    shm.buf[4] = 99  # the agent holds a copy, not a view
    assert data[0] == 4
