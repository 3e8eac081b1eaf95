"""Tensors on the wire <-> numpy arrays, inline or through POSIX shared memory.

**Shared memory.** A ``SharedMemoryHandle`` names a segment by a uint64 ``segment_id``.
edged maps it to the POSIX shared-memory object ``/<shm_prefix><segment_id>`` (default
prefix ``edged-``: segment 42 is ``/edged-42``, the file ``/dev/shm/edged-42`` on Linux),
which a C client creates with ``shm_open("/edged-42", O_CREAT | O_RDWR, 0660)`` and a
Python one with ``SharedMemory(name="edged-42", create=True, size=...)``. The agent opens
it read-only, checks that ``offset + size`` lies inside it (a size of 0: the tensor's
shape says it), copies those bytes and closes it again: the client owns the segment and
may reuse it as soon as the call returns.

The segment is opened with ``shm_open`` + ``mmap`` rather than through
``multiprocessing.shared_memory.SharedMemory``: on Python < 3.13 attaching that way
registers the segment with the resource tracker, which *unlinks the client's segment*
when the agent exits.

**Sizes and types.** Bytes are the tensor's elements in row-major order and the machine's
byte order; their count must be exactly ``prod(shape) * itemsize`` of the declared
``data_type``. Outputs are always sent inline (``byte_data``).

**What old clients leave out.** They copy a model's shape from DescribeModel, where a
dynamic dimension is -1, and often leave a shared-memory handle's ``size`` 0: one -1 is
inferred from the byte count, a size of 0 from the shape; not both at once.
"""

from __future__ import annotations

import _posixshmem
import errno
import math
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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

    def read(self, handle: pb.SharedMemoryHandle, size: int | None = None) -> bytes:
        """``size`` bytes at the handle's offset (default: the handle's own size)."""
        size = handle.size if size is None else size
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
            end = handle.offset + size
            if end > length:
                raise InvalidArgument(
                    f"shared memory handle offset {handle.offset} + size {size} "
                    f"= {end} is outside segment {handle.segment_id} ({name}), which holds "
                    f"{length} bytes")
            if size == 0:
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
    #: The dimension the request sent as -1, inferred from the byte count.
    inferred: int | None = None

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


def declared_bytes(tensor: pb.Tensor | pb.AuxilaryData, what: str) -> int | None:
    """How many bytes the tensor carries or points at, known before reading any; None
    for a shared-memory handle whose ``size`` is left 0, as old clients do (the size
    then follows from the shape: :func:`tensor_spec`)."""
    kind = tensor.WhichOneof("data")
    if kind == "byte_data":
        return len(tensor.byte_data)
    if kind == "shared_memory_handle":
        return tensor.shared_memory_handle.size or None
    raise InvalidArgument(f"{what} has no data (neither byte_data nor shared_memory_handle)")


def _tensor_bytes(tensor: pb.Tensor | pb.AuxilaryData, what: str,
                  shm: SharedMemoryReader, nbytes: int) -> bytes:
    """The ``nbytes`` the tensor holds: inline, or read from its shared-memory handle
    (whose ``size`` may be 0: ``nbytes`` is then what the shape says)."""
    declared_bytes(tensor, what)  # refuses a tensor without data
    if tensor.WhichOneof("data") == "byte_data":
        return tensor.byte_data
    return shm.read(tensor.shared_memory_handle, nbytes)


#: The one negative dimension a request may send: "infer this one from the byte count",
#: as ListModels and DescribeModel report a dynamic dimension.
INFERRED = -1


def tensor_spec(tensor: pb.Tensor, default: TensorInfo | None, what: str) -> TensorSpec:
    """Check one tensor's metadata against the bytes it declares, reading none.

    ``default`` is the model's metadata for this position, used when the tensor carries
    none. A shape may hold one ``-1`` (a client echoing the shape DescribeModel reports),
    inferred from the byte count; a shared-memory handle may leave ``size`` 0, inferred
    from the shape. What cannot be inferred is refused, naming the tensor, the shape and
    why."""
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
        _check_negatives(shape, what)
    else:
        if default is None:
            raise InvalidArgument(f"{what} has no tensor_metadata and the model does not "
                                  "say what it is")
        name, dtype, shape = default.name, default.dtype, default.shape
        what = f"{what} {name!r}"
        if shape.count(INFERRED) > 1:
            raise InvalidArgument(f"{what}: the model's shape {list(shape)} has several "
                                  "dynamic dimensions; send tensor_metadata with the shape")
    nbytes = declared_bytes(tensor, what)
    inferred = shape.index(INFERRED) if INFERRED in shape else None
    if inferred is not None:
        if nbytes is None:
            raise InvalidArgument(
                f"{what}: shape {list(shape)} has a -1 and its shared_memory_handle has "
                "size 0, so neither says how many bytes it holds; set the handle's size "
                "or send the whole shape")
        shape = _infer(shape, dtype, nbytes, what)
    spec = TensorSpec(name, dtype, shape, inferred)
    if nbytes is not None and nbytes != spec.nbytes:
        raise InvalidArgument(
            f"{what} has {nbytes} bytes; shape {list(shape)} of "
            f"{type_name(DATA_TYPES[dtype.name])} needs {spec.nbytes}")
    return spec


def _check_negatives(shape: tuple[int, ...], what: str) -> None:
    for index, dim in enumerate(shape):
        if dim < 0 and dim != INFERRED:
            raise InvalidArgument(
                f"{what}: shape {list(shape)} has {dim} at dimension {index}; the only "
                "negative dimension allowed is one -1, inferred from the byte count")
    if shape.count(INFERRED) > 1:
        raise InvalidArgument(
            f"{what}: shape {list(shape)} has {shape.count(INFERRED)} dimensions of -1; "
            "only one can be inferred from the byte count: send the others")


def _infer(shape: tuple[int, ...], dtype: np.dtype, nbytes: int,
           what: str) -> tuple[int, ...]:
    """``shape`` with its one -1 replaced by what ``nbytes`` makes it."""
    index = shape.index(INFERRED)
    block = math.prod(d for d in shape if d != INFERRED) * dtype.itemsize
    type_ = type_name(DATA_TYPES[dtype.name])
    if block == 0:
        raise InvalidArgument(f"{what}: shape {list(shape)} of {type_}: the other "
                              "dimensions hold no elements, so the -1 cannot be inferred")
    if nbytes % block:
        raise InvalidArgument(
            f"{what}: shape {list(shape)} of {type_}: {nbytes} bytes is not a multiple of "
            f"{block} (the other dimensions' elements x {dtype.itemsize} bytes), so the -1 "
            "cannot be inferred")
    return (*shape[:index], nbytes // block, *shape[index + 1:])


def read_spec(tensor: pb.Tensor, spec: TensorSpec, what: str,
              shm: SharedMemoryReader) -> RawTensor:
    """The bytes of a tensor already checked (:func:`tensor_spec`)."""
    data = _tensor_bytes(tensor, f"{what} {spec.name[:100]!r}", shm, spec.nbytes)
    return RawTensor(spec.name, spec.dtype, spec.shape, data)


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
        return {info.name: read_spec(tensor, spec, "input tensor", shm).array()
                for info, spec, tensor in self.inputs}


def plan_predict(model: LoadedModel, tensors: Sequence[pb.Tensor]) -> PredictPlan:
    """A Predict request's tensors checked against the model's inputs, matched by
    metadata name, or by position without one. Reads no bytes."""
    if len(tensors) != len(model.inputs):
        raise InvalidArgument(f"model {model.name!r} takes {len(model.inputs)} input "
                              f"tensor(s) ({', '.join(i.name for i in model.inputs)}); "
                              f"the request has {len(tensors)}")
    return PredictPlan(tuple(match_tensors(model, "input", tensors)))


def match_tensors(model: LoadedModel, role: Literal["input", "output"],
                  tensors: Sequence[pb.Tensor], *, reason: str | None = None
                  ) -> list[tuple[TensorInfo, TensorSpec, pb.Tensor]]:
    """Each tensor checked against the model's input (or output) it is: the one its
    metadata names, or the one at its position without a name. A name the model does not
    have, a data type, rank or fixed dimension that differs, or one tensor sent twice is
    refused (counted under ``reason``). Reads no bytes."""
    infos = model.inputs if role == "input" else model.outputs
    names = ", ".join(info.name for info in infos) or "none"
    by_name = {info.name: info for info in infos}
    planned: dict[str, tuple[TensorInfo, TensorSpec, pb.Tensor]] = {}
    for index, tensor in enumerate(tensors):
        given = tensor.tensor_metadata.name if tensor.HasField("tensor_metadata") else ""
        if given and given not in by_name:
            raise InvalidArgument(f"model {model.name!r} has no {role} {given[:200]!r} "
                                  f"({role}s: {names})", reason=reason)
        if not given and index >= len(infos):
            raise InvalidArgument(f"model {model.name!r} has {len(infos)} {role}(s) "
                                  f"({names}); the request sends more {role} tensors",
                                  reason=reason)
        info = by_name[given] if given else infos[index]
        spec = tensor_spec(tensor, info, f"{role} tensor")
        _check_against(model, role, info, spec, reason)
        if info.name in planned:
            raise InvalidArgument(f"{role} {info.name!r} is sent twice", reason=reason)
        planned[info.name] = (info, spec, tensor)
    return list(planned.values())


def _check_against(model: LoadedModel, role: str, info: TensorInfo, spec: TensorSpec,
                   reason: str | None) -> None:
    if spec.dtype != info.dtype:
        raise InvalidArgument(
            f"{role} {info.name!r} of model {model.name!r} takes "
            f"{type_name(info.data_type)}, the request sends "
            f"{type_name(DATA_TYPES[spec.dtype.name])}", reason=reason)
    if len(spec.shape) != len(info.shape) or any(
            want >= 0 and got != want for got, want in zip(spec.shape, info.shape,
                                                            strict=True)):
        why = ""
        if spec.inferred is not None:
            why = (f" (dimension {spec.inferred} sent as -1 and inferred from the byte "
                   "count)")
            if len(spec.shape) == len(info.shape) and info.shape[spec.inferred] >= 0:
                why = (f" (its -1 at dimension {spec.inferred} comes to "
                       f"{spec.shape[spec.inferred]} from the byte count; the model's is "
                       f"fixed at {info.shape[spec.inferred]})")
        raise InvalidArgument(f"{role} {info.name!r} of model {model.name!r} takes shape "
                              f"{list(info.shape)} (-1: any), the request sends "
                              f"{list(spec.shape)}{why}", reason=reason)


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


def aux_size(aux: pb.AuxilaryData) -> int:
    """An auxiliary input/output's byte count, checked before any is read: it has no
    shape, so a shared-memory handle must say its size."""
    what = f"auxiliary data {aux.name[:100]!r}"
    if aux.encoding not in ENCODINGS:
        raise InvalidArgument(f"{what}: unknown encoding {aux.encoding} "
                              f"(known: {', '.join(ENCODINGS.values())})")
    nbytes = declared_bytes(aux, what)
    if nbytes is None:
        raise InvalidArgument(f"{what}: its shared_memory_handle has size 0 and auxiliary "
                              "data has no shape to infer one from; set the size")
    return nbytes


def aux_bytes(aux: pb.AuxilaryData, shm: SharedMemoryReader) -> tuple[str, str, bytes]:
    """An auxiliary input/output as (name, encoding name, bytes)."""
    nbytes = aux_size(aux)
    data = _tensor_bytes(aux, f"auxiliary data {aux.name[:100]!r}", shm, nbytes)
    return aux.name, ENCODINGS[aux.encoding], data
