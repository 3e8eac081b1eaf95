"""The capture store: CaptureData records written to a durable spool, flushed in batches
to a local folder (``Disk``) or to S3 (``Cloud``), with a status per capture id.

API stub: the agent server codes against this; the implementation follows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from edged.config import Strict
from edged.errors import EdgedError
from edged.metrics import Counters

CaptureStatus = Literal["IN_PROGRESS", "SUCCESS", "FAILURE", "NOT_FOUND"]


class CaptureError(EdgedError):
    """The capture store cannot start or cannot take a record."""


class BufferFull(CaptureError):
    """``buffer_size`` captures are pending; the agent answers RESOURCE_EXHAUSTED."""


class DuplicateCaptureId(CaptureError, ValueError):
    """A capture with this id is pending or known (ALREADY_EXISTS / INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class TensorData:
    """One captured tensor: its metadata and its raw bytes (row-major)."""

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


class CaptureSettings(Strict):
    """Where and how captures are stored (the agent maps its capture config keys here)."""

    destination: Literal["Disk", "Cloud"]
    disk_path: Path
    folder_prefix: str = ""
    buffer_size: int = Field(30, ge=1)
    batch_size: int = Field(10, ge=1)
    push_period_s: float = Field(4.0, gt=0)
    base64_embed_limit: int = Field(3072, ge=0, le=3072)
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    device_name: str
    fleet_name: str | None = None
    spool_dir: Path | None = None  # default: disk_path / ".spool"
    fsync: bool = True


class CaptureStore:
    """Durable capture buffer plus the flusher that writes batches to the destination.

    Use as ``async with CaptureStore(settings) as store:``; entering starts the flusher
    and replays captures a crash left pending, leaving stops it (pending captures stay
    in the spool and are flushed by the next start).
    """

    def __init__(self, settings: CaptureSettings, *, counters: Counters | None = None):
        self.settings = settings
        self.counters = counters if counters is not None else Counters()

    async def __aenter__(self) -> CaptureStore:
        raise NotImplementedError

    async def __aexit__(self, *exc: object) -> None:
        raise NotImplementedError

    async def submit(self, record: CaptureRecord) -> None:
        """Write ``record`` to the spool durably (fsync per settings) and return.

        Raises :class:`BufferFull` when ``buffer_size`` captures are pending,
        :class:`DuplicateCaptureId` (a ``ValueError``) for a known capture id and
        ``ValueError`` for a model name or capture id that cannot be stored.
        """
        raise NotImplementedError

    def status(self, capture_id: str) -> CaptureStatus:
        """IN_PROGRESS while pending, SUCCESS once its batch is at the destination,
        FAILURE if it could not be written, NOT_FOUND for an unknown (or long
        forgotten) id. Survives restarts."""
        raise NotImplementedError
