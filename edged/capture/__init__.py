"""Capture: records made durable in a spool and uploaded to Disk or S3, on one path.

:class:`~edged.capture.uplink.CaptureUplink` is that path (spool, budget, uploads,
retries); the agent's CaptureData / GetCaptureDataStatus RPCs sit on
:class:`CaptureStore` and pipelines on
:class:`~edged.capture.pipeline_capture.PipelineCapture`, both on an uplink. See
``docs/capture.md`` for the spool, the object layout, the record kinds and the statuses.
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
from edged.capture.uplink import Budget, CaptureUplink, UplinkSettings

__all__ = [
    "AuxData",
    "Budget",
    "BufferFull",
    "CaptureError",
    "CaptureRecord",
    "CaptureSettings",
    "CaptureStatus",
    "CaptureStore",
    "CaptureUplink",
    "DuplicateCaptureId",
    "TensorData",
    "UplinkSettings",
]
