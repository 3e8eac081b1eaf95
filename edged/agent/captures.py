"""CaptureData requests checked against the model they name, before a byte is read.

A CaptureData request names a model, and its ``input_tensors`` and ``output_tensors``
are that model's inputs and outputs: matched by metadata name, or by position without
one, as in Predict (the API relates them to the model in no other way). When that model
is loaded here, each tensor must be the model's: a name the model does not have, another
data type, another rank, a fixed dimension that differs, one tensor sent twice or more
tensors than the model has is refused with INVALID_ARGUMENT, counted under the reason
``capture_mismatch``. Storing it would put a record under the model's
``model=<name>/version=<v>/`` partition that the model's own readers cannot decode; what
is not the model's tensors belongs in the auxiliary ``inputs``/``outputs``. Fewer
tensors than the model has are stored (a client may capture only the outputs).

A model that is not loaded here cannot be checked: its tensors need metadata and are
stored as sent. Either way a shape may hold one ``-1`` and a shared-memory handle may
leave ``size`` 0 (:func:`edged.agent.tensors.tensor_spec`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from edged.agent.models import LoadedModel
from edged.agent.proto import agent_pb2 as pb
from edged.agent.tensors import (
    SharedMemoryReader,
    TensorSpec,
    aux_bytes,
    aux_size,
    match_tensors,
    read_spec,
    tensor_spec,
)
from edged.capture.store import AuxData, CaptureRecord, TensorData

#: The refusal's reason in ``agent_requests_refused`` and the ``request_refused`` log.
MISMATCH = "capture_mismatch"


@dataclass(frozen=True)
class CapturePlan:
    """A CaptureData request checked, its bytes not yet read."""

    request: pb.CaptureDataRequest
    inputs: tuple[tuple[TensorSpec, pb.Tensor], ...]
    outputs: tuple[tuple[TensorSpec, pb.Tensor], ...]
    aux_nbytes: int

    @property
    def nbytes(self) -> int:
        """What the record's tensors and auxiliary data hold: the memory estimate's base."""
        return sum(spec.nbytes for spec, _ in (*self.inputs, *self.outputs)) \
            + self.aux_nbytes

    def record(self, shm: SharedMemoryReader, model_version: int | None) -> CaptureRecord:
        """The record, every byte read (shared memory copied now: the client may reuse
        its segment as soon as the call returns)."""
        def tensors(items: tuple[tuple[TensorSpec, pb.Tensor], ...],
                    role: str) -> list[TensorData]:
            out = []
            for spec, tensor in items:
                raw = read_spec(tensor, spec, f"{role} tensor", shm)
                out.append(TensorData(raw.name, raw.dtype.name, list(raw.shape), raw.data))
            return out

        request = self.request
        ts = request.inference_timestamp
        return CaptureRecord(
            model_name=request.model_name,
            model_version=model_version,
            capture_id=request.capture_id,
            inference_timestamp=(ts.seconds, ts.nanos),
            input_tensors=tensors(self.inputs, "input"),
            output_tensors=tensors(self.outputs, "output"),
            inputs=[AuxData(*aux_bytes(item, shm)) for item in request.inputs],
            outputs=[AuxData(*aux_bytes(item, shm)) for item in request.outputs],
        )


def plan_capture(request: pb.CaptureDataRequest, model: LoadedModel | None) -> CapturePlan:
    """Check every tensor of ``request`` (against ``model`` when it is loaded) and the
    size of every auxiliary item; reads no bytes."""

    def specs(role: Literal["input", "output"],
              items: Sequence[pb.Tensor]) -> tuple[tuple[TensorSpec, pb.Tensor], ...]:
        if model is None:
            return tuple((tensor_spec(t, None, f"{role} tensor"), t) for t in items)
        return tuple((spec, tensor) for _, spec, tensor in match_tensors(
            model, role, items, reason=MISMATCH))

    return CapturePlan(
        request, specs("input", request.input_tensors), specs("output", request.output_tensors),
        sum(aux_size(item) for item in (*request.inputs, *request.outputs)))
