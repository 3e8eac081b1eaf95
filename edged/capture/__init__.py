"""Capture: durable storage of CaptureData records and their upload in batches.

The agent's CaptureData / GetCaptureDataStatus RPCs sit on :class:`CaptureStore`; see
``docs/capture.md`` for the spool, the batch layout and the status semantics.
"""

from edged.capture.store import (
    AuxData,
    BufferFull,
    CaptureError,
    CaptureRecord,
    CaptureSettings,
    CaptureStatus,
    CaptureStore,
    DuplicateCaptureId,
    TensorData,
)

__all__ = [
    "AuxData",
    "BufferFull",
    "CaptureError",
    "CaptureRecord",
    "CaptureSettings",
    "CaptureStatus",
    "CaptureStore",
    "DuplicateCaptureId",
    "TensorData",
]
