"""The agent's request decoders under Hypothesis: tensor metadata (names, data types,
shapes, byte counts), shared-memory handles (segment ids, offsets, sizes), Predict and
CaptureData requests, model urls. For any input: a value or the agent's own typed
rejection (AgentError, which the server answers with its status code), never another
exception, within bounded time."""

from __future__ import annotations

import contextlib
import os
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from edged.agent.captures import plan_capture
from edged.agent.config import AgentConfig
from edged.agent.errors import AgentError
from edged.agent.memory import MemoryBudget
from edged.agent.models import LoadedModel, ModelRegistry, TensorInfo
from edged.agent.proto import agent_pb2 as pb
from edged.agent.server import AgentServicer
from edged.agent.tensors import SharedMemoryReader, aux_bytes, plan_predict, tensor_spec
from edged.base.metrics import Counters

pytestmark = pytest.mark.fuzz

PREFIX = f"edged-fuzz-{os.getpid()}-"  # two runs at once must not share the segment
SEGMENT = 4242
INT32 = st.integers(-2**31, 2**31 - 1)
UINT64 = st.integers(0, 2**64 - 1)
# Sizes near the segment's, so that handles often land inside, across and past its end.
SIZES = st.one_of(st.integers(0, 5000), UINT64)

INFOS = (TensorInfo("input", np.dtype("float32"), (-1, 6, 10, 10)),
         TensorInfo("ids", np.dtype("int64"), (-1, -1)),
         TensorInfo("scalar", np.dtype("uint8"), ()))
MODELS = [LoadedModel("m", "m", Path("/nowhere"), Path("/nowhere/m.onnx"), inputs, outputs,
                      None)
          for inputs, outputs in ((INFOS[:1], ()), (INFOS, INFOS[:2]))]

handles = st.builds(pb.SharedMemoryHandle, segment_id=st.one_of(st.just(SEGMENT), UINT64),
                    offset=SIZES, size=SIZES)
metadata = st.builds(pb.TensorMetadata,
                     name=st.one_of(st.sampled_from([i.name for i in INFOS]), st.text(max_size=20)),
                     data_type=st.one_of(st.integers(-1, 8), INT32),
                     shape=st.lists(st.one_of(st.integers(-2, 12), INT32), max_size=40))
data = st.one_of(st.none(), st.binary(max_size=2400).map(lambda b: {"byte_data": b}),
                 st.just(2400).map(lambda n: {"byte_data": bytes(n)}),
                 handles.map(lambda h: {"shared_memory_handle": h}))


@st.composite
def tensors(draw) -> pb.Tensor:
    tensor = pb.Tensor(**(draw(data) or {}))
    meta = draw(st.one_of(st.none(), metadata))
    if meta is not None:
        tensor.tensor_metadata.CopyFrom(meta)
    return tensor


auxiliary = st.builds(lambda name, encoding, d: pb.AuxilaryData(name=name, encoding=encoding,
                                                                **(d or {})),
                      st.text(max_size=20), st.one_of(st.integers(-1, 4), INT32), data)


@pytest.fixture(scope="module")
def reader():
    """A real segment of 4,800 bytes the handles may point into."""
    segment = shared_memory.SharedMemory(name=f"{PREFIX}{SEGMENT}", create=True, size=4800)
    try:
        yield SharedMemoryReader(PREFIX)
    finally:
        segment.close()
        segment.unlink()


@contextlib.contextmanager
def typed_and_quick():
    # CPU time: a wall-clock bound flakes on a busy machine.
    started = time.process_time()
    with contextlib.suppress(AgentError):
        yield
    assert time.process_time() - started < 1.0


@given(tensors(), st.sampled_from((None, *INFOS)))
def test_tensor_metadata_is_a_spec_or_a_rejection(tensor, default):
    with typed_and_quick():
        spec = tensor_spec(tensor, default, "input tensor")
        assert len(spec.shape) <= 32 and min(spec.shape, default=0) >= 0
        assert spec.batch >= 0


@given(st.sampled_from(MODELS), st.lists(tensors(), max_size=4))
def test_predict_requests_are_planned_or_rejected(model, items):
    with typed_and_quick():
        plan = plan_predict(model, items)
        assert plan.nbytes >= 0 and plan.batch >= 0


@given(st.binary(max_size=600))
def test_any_bytes_on_the_wire(raw):
    try:
        request = pb.PredictRequest.FromString(raw)
    except DecodeError:
        return  # gRPC's own rejection, before the agent sees the call
    with typed_and_quick():
        plan_predict(MODELS[1], request.tensors)


@given(handles)
def test_shared_memory_handles_read_exactly_or_are_rejected(reader, handle):
    with typed_and_quick():
        assert len(reader.read(handle)) == handle.size


@given(st.sampled_from(MODELS), st.lists(tensors(), max_size=3))
def test_predict_feeds_from_a_plan(reader, model, items):
    with typed_and_quick():
        for name, array in plan_predict(model, items).feeds(reader).items():
            assert array.dtype == {i.name: i.dtype for i in INFOS}[name]


@pytest.fixture(scope="module")
def servicer(tmp_path_factory, reader):
    root = tmp_path_factory.mktemp("models")
    config = AgentConfig(device_name="d", model_roots=[root], shm_prefix=PREFIX)
    return AgentServicer(config, ModelRegistry([root]), None, None, Counters())


@given(st.lists(tensors(), max_size=3), st.lists(tensors(), max_size=2),
       st.lists(auxiliary, max_size=2), st.text(max_size=10), st.text(max_size=10),
       st.sampled_from((None, *MODELS)))
def test_capture_requests_are_records_or_rejections(reader, inputs, outputs, aux, name,
                                                    capture_id, model):
    request = pb.CaptureDataRequest(model_name=name, capture_id=capture_id,
                                    input_tensors=inputs, output_tensors=outputs,
                                    inputs=aux)
    with typed_and_quick():
        record = plan_capture(request, model).record(reader, None)
        assert len(record.input_tensors) == len(inputs)
        assert all(min(t.shape, default=0) >= 0 for t in record.output_tensors)


@given(auxiliary)
def test_auxiliary_data(reader, item):
    with typed_and_quick():
        aux_bytes(item, reader)


_URL_PARTS = st.sampled_from(["..", ".", "/", "//", "file://", "a", "models", "\0", "~",
                              "%2e%2e", "/etc", "link"])


@given(st.one_of(st.text(max_size=40), st.lists(_URL_PARTS, max_size=8).map("/".join)))
def test_model_urls_resolve_inside_a_root_or_are_rejected(servicer, url):
    registry = servicer.models
    with typed_and_quick():
        path = registry.resolve(url)
        assert any(path == root or path.is_relative_to(root) for root in registry.roots)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000)), max_size=50))
def test_the_budget_never_exceeds_its_limit(steps):
    budget = MemoryBudget(1000)
    held: list[int] = []
    for reserve, nbytes in steps:
        if reserve or not held:
            with contextlib.suppress(AgentError):
                budget.reserve(nbytes, "call")
                held.append(nbytes)
        else:
            budget.release(held.pop())
        assert 0 <= budget.in_use == sum(held) <= 1000
