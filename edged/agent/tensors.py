"""Tensors on the wire <-> numpy arrays, inline or through POSIX shared memory.

**Shared memory.** A ``SharedMemoryHandle`` names a segment by a uint64 ``segment_id``.
edged maps it to the POSIX shared-memory object ``/<shm_prefix><segment_id>`` (default
prefix ``edged-``: segment 42 is ``/edged-42``, the file ``/dev/shm/edged-42`` on Linux),
which a C client creates with ``shm_open("/edged-42", O_CREAT | O_RDWR, 0660)`` and a
Python one with ``SharedMemory(name="edged-42", create=True, size=...)``. The agent opens
it read-only, checks that ``offset + size`` lies inside it, copies those bytes and closes
it again: the client owns the segment and may reuse it as soon as the call returns.

The segment is opened with ``shm_open`` + ``mmap`` rather than through
``multiprocessing.shared_memory.SharedMemory``: on Python < 3.13 attaching that way
registers the segment with the resource tracker, which *unlinks the client's segment*
when the agent exits.

**Sizes and types.** Bytes are the tensor's elements in row-major order and the machine's
byte order; their count must be exactly ``prod(shape) * itemsize`` of the declared
``data_type``. Outputs are always sent inline (``byte_data``).
"""

from __future__ import annotations

import _posixshmem
import errno
import math
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edged.agent.errors import InvalidArgument, PermissionDenied
from edged.agent.models import DATA_TYPES, DTYPE_OF, LoadedModel, TensorInfo
from edged.agent.proto import agent_pb2 as pb

_TYPE_NAMES = {v: k.upper() for k, v in DATA_TYPES.items()}
ENCODINGS: dict[int, str] = {v.number: v.name for v in pb.Encoding.DESCRIPTOR.values}


def type_name(data_type: int) -> str:
    return _TYPE_NAMES.get(data_type, str(data_type))


class SharedMemoryReader:
    """Reads the bytes a handle points at; see the module docstring for the naming."""

    def __init__(self, prefix: str = "edged-") -> None:
        self.prefix = prefix

    def posix_name(self, segment_id: int) -> str:
        return f"/{self.prefix}{segment_id}"

    def read(self, handle: pb.SharedMemoryHandle) -> bytes:
        name = self.posix_name(handle.segment_id)
        try:
            fd = _posixshmem.shm_open(name, os.O_RDONLY, mode=0)
        except FileNotFoundError:
            raise InvalidArgument(f"shared memory segment {handle.segment_id} ({name}) "
                                  "does not exist") from None
        except PermissionError:
            raise PermissionDenied(f"the agent may not read shared memory segment "
                                   f"{handle.segment_id} ({name}): give its group read "
                                   "access") from None
        except OSError as exc:
            raise InvalidArgument(f"cannot open shared memory segment {handle.segment_id} "
                                  f"({name}): {errno.errorcode.get(exc.errno, exc)}") from None
        try:
            length = os.fstat(fd).st_size
            end = handle.offset + handle.size
            if end > length:
                raise InvalidArgument(
                    f"shared memory handle offset {handle.offset} + size {handle.size} "
                    f"= {end} is outside segment {handle.segment_id} ({name}), which holds "
                    f"{length} bytes")
            if handle.size == 0:
                return b""
            with mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ) as view:
                return view[handle.offset:end]
        finally:
            os.close(fd)


#: Most dimensions a tensor may have (numpy's own bound is 64; models use a handful).
MAX_RANK = 32


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's checked name, numpy dtype and shape, before its bytes are read."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def batch(self) -> int:
        """The leading dimension: windows, images, rows."""
        return self.shape[0] if self.shape else 1


@dataclass(frozen=True)
class RawTensor:
    """A tensor read off the wire, checked: name, numpy dtype, shape, its bytes."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    data: bytes

    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=self.dtype).reshape(self.shape)


def declared_bytes(tensor: pb.Tensor | pb.AuxilaryData, what: str) -> int:
    """How many bytes the tensor carries or points at, known before reading any."""
    kind = tensor.WhichOneof("data")
    if kind == "byte_data":
        return len(tensor.byte_data)
    if kind == "shared_memory_handle":
        return tensor.shared_memory_handle.size
    raise InvalidArgument(f"{what} has no data (neither byte_data nor shared_memory_handle)")


def _tensor_bytes(tensor: pb.Tensor | pb.AuxilaryData, what: str,
                  shm: SharedMemoryReader) -> bytes:
    declared_bytes(tensor, what)  # refuses a tensor without data
    if tensor.WhichOneof("data") == "byte_data":
        return tensor.byte_data
    return shm.read(tensor.shared_memory_handle)


def tensor_spec(tensor: pb.Tensor, default: TensorInfo | None, what: str) -> TensorSpec:
    """Check one tensor's metadata against the bytes it declares, reading none.
    ``default`` is the model's metadata for this position, used when the tensor carries
    none; with it, dynamic dimensions and the data type must agree."""
    if tensor.HasField("tensor_metadata"):
        meta = tensor.tensor_metadata
        name = meta.name or (default.name if default else "")
        what = f"{what} {name[:100]!r}"  # a client's name may be megabytes long
        if meta.data_type not in DTYPE_OF:
            raise InvalidArgument(f"{what}: unknown data type {meta.data_type} "
                                  f"(known: {', '.join(_TYPE_NAMES.values())})")
        dtype = DTYPE_OF[meta.data_type]
        if len(meta.shape) > MAX_RANK:
            raise InvalidArgument(f"{what}: shape has {len(meta.shape)} dimensions, "
                                  f"more than {MAX_RANK}")
        shape = tuple(meta.shape)
        if any(d < 0 for d in shape):
            raise InvalidArgument(f"{what}: shape {list(shape)} has a negative "
                                  "dimension; send the actual shape")
        nbytes = declared_bytes(tensor, what)
    else:
        if default is None:
            raise InvalidArgument(f"{what} has no tensor_metadata and the model does not "
                                  "say what it is")
        name, dtype = default.name, default.dtype
        what = f"{what} {name!r}"
        nbytes = declared_bytes(tensor, what)
        shape = _infer_shape(default, nbytes, what)
    spec = TensorSpec(name, dtype, shape)
    if nbytes != spec.nbytes:
        raise InvalidArgument(
            f"{what} has {nbytes} bytes; shape {list(shape)} of "
            f"{type_name(DATA_TYPES[dtype.name])} needs {spec.nbytes}")
    return spec


def read_tensor(tensor: pb.Tensor, default: TensorInfo | None, what: str,
                shm: SharedMemoryReader) -> RawTensor:
    """Check one tensor (:func:`tensor_spec`) and read its bytes."""
    spec = tensor_spec(tensor, default, what)
    data = _tensor_bytes(tensor, f"{what} {spec.name[:100]!r}", shm)
    return RawTensor(spec.name, spec.dtype, spec.shape, data)


def _infer_shape(info: TensorInfo, nbytes: int, what: str) -> tuple[int, ...]:
    dynamic = [i for i, d in enumerate(info.shape) if d < 0]
    if not dynamic:
        return info.shape
    if len(dynamic) > 1:
        raise InvalidArgument(f"{what}: the model's shape {list(info.shape)} "
                              "has several dynamic dimensions; send tensor_metadata with "
                              "the shape")
    known = math.prod(d for d in info.shape if d >= 0) * info.dtype.itemsize
    if known == 0 or nbytes % known:
        raise InvalidArgument(f"{what} has {nbytes} bytes, not a whole "
                              f"number of {list(info.shape)} {type_name(info.data_type)} "
                              "rows")
    shape = list(info.shape)
    shape[dynamic[0]] = nbytes // known
    return tuple(shape)


@dataclass(frozen=True)
class PredictPlan:
    """A Predict request checked against the model, its bytes not yet read."""

    inputs: tuple[tuple[TensorInfo, TensorSpec, pb.Tensor], ...]

    @property
    def nbytes(self) -> int:
        return sum(spec.nbytes for _, spec, _ in self.inputs)

    @property
    def batch(self) -> int:
        return max((spec.batch for _, spec, _ in self.inputs), default=0)

    def feeds(self, shm: SharedMemoryReader) -> dict[str, np.ndarray]:
        """The inputs as ONNX Runtime feeds (shared memory is read here)."""
        return {info.name: RawTensor(spec.name, spec.dtype, spec.shape, _tensor_bytes(
                    tensor, f"input tensor {info.name!r}", shm)).array()
                for info, spec, tensor in self.inputs}


def plan_predict(model: LoadedModel, tensors: Sequence[pb.Tensor]) -> PredictPlan:
    """A Predict request's tensors checked against the model's inputs, matched by
    metadata name, or by position without one. Reads no bytes."""
    if len(tensors) != len(model.inputs):
        raise InvalidArgument(f"model {model.name!r} takes {len(model.inputs)} input "
                              f"tensor(s) ({', '.join(i.name for i in model.inputs)}); "
                              f"the request has {len(tensors)}")
    by_name = {info.name: info for info in model.inputs}
    planned: dict[str, tuple[TensorInfo, TensorSpec, pb.Tensor]] = {}
    for index, tensor in enumerate(tensors):
        given = tensor.tensor_metadata.name if tensor.HasField("tensor_metadata") else ""
        if given and given not in by_name:
            raise InvalidArgument(f"model {model.name!r} has no input {given[:200]!r} "
                                  f"(inputs: {', '.join(by_name)})")
        info = by_name[given] if given else model.inputs[index]
        spec = tensor_spec(tensor, info, "input tensor")
        _check_against(model, info, spec)
        if info.name in planned:
            raise InvalidArgument(f"input {info.name!r} is sent twice")
        planned[info.name] = (info, spec, tensor)
    return PredictPlan(tuple(planned.values()))


def _check_against(model: LoadedModel, info: TensorInfo, spec: TensorSpec) -> None:
    if spec.dtype != info.dtype:
        raise InvalidArgument(
            f"input {info.name!r} of model {model.name!r} takes "
            f"{type_name(info.data_type)}, the request sends "
            f"{type_name(DATA_TYPES[spec.dtype.name])}")
    if len(spec.shape) != len(info.shape) or any(
            want >= 0 and got != want for got, want in zip(spec.shape, info.shape,
                                                            strict=True)):
        raise InvalidArgument(f"input {info.name!r} of model {model.name!r} takes shape "
                              f"{list(info.shape)} (-1: any), the request sends "
                              f"{list(spec.shape)}")


def output_tensors(model: LoadedModel, arrays: Sequence[np.ndarray]) -> list[pb.Tensor]:
    """Model outputs as inline tensors with full metadata."""
    tensors = []
    for info, output in zip(model.outputs, arrays, strict=True):
        array = np.ascontiguousarray(output)
        tensors.append(pb.Tensor(
            tensor_metadata=pb.TensorMetadata(name=info.name,
                                              data_type=DATA_TYPES[array.dtype.name],
                                              shape=list(array.shape)),
            byte_data=array.tobytes()))
    return tensors


def aux_bytes(aux: pb.AuxilaryData, shm: SharedMemoryReader) -> tuple[str, str, bytes]:
    """An auxiliary input/output as (name, encoding name, bytes)."""
    what = f"auxiliary data {aux.name[:100]!r}"
    if aux.encoding not in ENCODINGS:
        raise InvalidArgument(f"{what}: unknown encoding {aux.encoding} "
                              f"(known: {', '.join(ENCODINGS.values())})")
    return aux.name, ENCODINGS[aux.encoding], _tensor_bytes(aux, what, shm)
