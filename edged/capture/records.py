"""What one CaptureData capture holds, the checks it passes before it is spooled, and
its JSON line (the ``agent`` record kind of docs/capture.md)."""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

AGENT_SCHEMA = 1

#: Bytes per element of each data type the Edge Agent API knows.
DTYPE_SIZES = {"uint8": 1, "int16": 2, "int32": 4, "int64": 8, "float16": 2, "float32": 4,
               "float64": 8}
ENCODINGS = ("CSV", "JSON", "NONE", "BASE64")
MODEL_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
MAX_CAPTURE_ID = 256


@dataclass(frozen=True)
class TensorData:
    """One captured tensor: its metadata and its raw bytes (row-major, native order)."""

    name: str
    dtype: str  # "uint8", "int16", "int32", "int64", "float16", "float32", "float64"
    shape: list[int]
    data: bytes


@dataclass(frozen=True)
class AuxData:
    """Auxiliary input or output: opaque bytes and what they hold."""

    name: str
    encoding: str  # "CSV" | "JSON" | "NONE" | "BASE64"
    data: bytes


@dataclass(frozen=True)
class CaptureRecord:
    """One CaptureData request, with tensor bytes already read (inline or shared memory)."""

    model_name: str
    capture_id: str
    inference_timestamp: tuple[int, int]  # (seconds, nanos) since the epoch
    input_tensors: list[TensorData] = field(default_factory=list)
    output_tensors: list[TensorData] = field(default_factory=list)
    inputs: list[AuxData] = field(default_factory=list)
    outputs: list[AuxData] = field(default_factory=list)
    #: The model's version when the agent knows one (its manifest); None otherwise.
    model_version: int | None = None


def check_record(record: CaptureRecord) -> None:
    """Raise ``ValueError`` naming the first thing that cannot be stored as given."""
    if not MODEL_NAME.fullmatch(record.model_name or ""):
        raise ValueError(f"model name {record.model_name!r} does not match "
                         f"{MODEL_NAME.pattern}")
    capture_id = record.capture_id
    if not capture_id or len(capture_id) > MAX_CAPTURE_ID or not capture_id.isprintable():
        raise ValueError(f"capture id must be 1 to {MAX_CAPTURE_ID} printable characters")
    seconds, nanos = record.inference_timestamp
    if not (isinstance(seconds, int) and isinstance(nanos, int) and 0 <= nanos < 10**9):
        raise ValueError(f"inference timestamp {record.inference_timestamp!r} is not "
                         "(seconds, nanos) with 0 <= nanos < 1e9")
    for kind in ("input_tensors", "output_tensors"):
        for tensor in getattr(record, kind):
            size = DTYPE_SIZES.get(tensor.dtype)
            if size is None:
                raise ValueError(f"{kind} {tensor.name!r}: unknown data type {tensor.dtype!r}")
            if any(not isinstance(d, int) or d < 0 for d in tensor.shape):
                raise ValueError(f"{kind} {tensor.name!r}: bad shape {tensor.shape!r}")
            expected = math.prod(tensor.shape) * size
            if len(tensor.data) != expected:
                raise ValueError(f"{kind} {tensor.name!r}: {len(tensor.data)} bytes, shape "
                                 f"{tensor.shape} of {tensor.dtype} needs {expected}")
    for kind in ("inputs", "outputs"):
        for aux in getattr(record, kind):
            if aux.encoding not in ENCODINGS:
                raise ValueError(f"{kind} {aux.name!r}: unknown encoding {aux.encoding!r}")


def _iso(seconds: float, nanos: int | None = None) -> str:
    when = datetime.fromtimestamp(int(seconds) if nanos is not None else seconds, UTC)
    if nanos is None:
        return when.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return f"{when:%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


def encode_agent_record(record: CaptureRecord, received_at: float, *, device: str,
                        fleet: str | None) -> bytes:
    """One capture as a JSON line: tensors and auxiliary data inline, base64 of their
    raw bytes. ``time`` (what the partition's date and hour come from) is the inference
    time, or the time it was received when the client sent no inference timestamp."""
    seconds, nanos = record.inference_timestamp
    tensors = [[{"name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                 "data": base64.b64encode(t.data).decode("ascii")} for t in items]
               for items in (record.input_tensors, record.output_tensors)]
    aux = [[{"name": a.name, "encoding": a.encoding,
             "data": base64.b64encode(a.data).decode("ascii")} for a in items]
           for items in (record.inputs, record.outputs)]
    line = {
        "schema": AGENT_SCHEMA,
        "kind": "agent",
        "id": record.capture_id,
        "capture_id": record.capture_id,
        # Not "device" nor "model": the partition columns (see decision_records).
        "device_id": device,
        "fleet_name": fleet,
        "model_name": record.model_name,
        "model_version": record.model_version,
        "time": seconds + nanos / 1e9 if seconds > 0 else received_at,
        "inference_timestamp": {"seconds": seconds, "nanos": nanos},
        "inference_time": _iso(seconds, nanos),
        "received_time": _iso(received_at),
        "input_tensors": tensors[0],
        "output_tensors": tensors[1],
        "inputs": aux[0],
        "outputs": aux[1],
    }
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"
