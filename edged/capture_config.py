"""The ``capture:`` key of a pipeline: what to sample, where to spool, where to upload.

Kept outside :mod:`edged.capture` (whose store imports :mod:`edged.config`) so that
:mod:`edged.config` can import it without a cycle. See docs/capture.md, "Pipeline capture".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    # Same as edged.config.Strict, which cannot be imported here (see above).
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateSpec(_Strict):
    every: int = Field(ge=1, description="Capture one decision in this many (1: all).")
    mode: Literal["counter", "random"] = Field(
        "counter", description="counter: every N-th decision of each turbine; random: "
        "each decision with probability 1/N.")
    seed: int | None = Field(None, description="Seed of the random mode (None: random).")


class ReservoirSpec(_Strict):
    size: int = Field(ge=1, le=100_000, description="Decisions kept per window.")
    window_s: float = Field(gt=0, description="Length of a window; the sample of a "
                            "window is captured when the next one begins.")
    seed: int | None = Field(None, description="Seed of the sampler (None: random).")


class AnomalySpec(_Strict):
    before: int = Field(0, ge=0, le=1000, description="Decisions of the same turbine "
                        "kept ahead of an anomaly and captured with it.")
    after: int = Field(0, ge=0, le=100_000, description="Decisions of the same turbine "
                       "captured after an anomaly.")


class CaptureSpoolSpec(_Strict):
    budget_mb: float = Field(256.0, gt=0, description="Disk the spool may use; beyond "
                             "it the oldest records without an anomaly are dropped first.")
    fsync: Literal["always", "batch", "never"] = Field(
        "batch", description="always: each record is its own fsync'ed file; batch: each "
        "write of the records queued at that moment is fsync'ed once; never: no fsync "
        "(a process crash loses nothing, a power cut may).")
    queue_size: int = Field(10_000, ge=1, description="Picked decisions waiting for the "
                            "writer; a full queue drops new ones, counted.")
    include_window: bool = Field(False, description="Add the model's input window "
                                 "(history x features) to each record.")
    include_rows: bool = Field(False, description="Add the raw source rows the window "
                               "was built from (history x inputs, before preprocessing) "
                               "and the input names to each record.")


class S3DestinationSpec(_Strict):
    type: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63, description="The S3 bucket.")
    prefix: str = Field("captures", description="Key prefix before device=<id>/...")
    endpoint_url: str | None = Field(None, description="An S3-compatible endpoint.")
    region: str | None = Field(None, description="AWS region (default: the SDK's).")


class DiskDestinationSpec(_Strict):
    type: Literal["disk"]
    path: Path = Field(description="Directory the objects are written under.")


class UploadSpec(_Strict):
    interval_s: float = Field(30.0, gt=0, description="Upload what is spooled this often.")
    max_records: int = Field(10_000, ge=1, description="Records per upload at most.")
    retry_backoff_s: float = Field(1.0, gt=0, description="First retry delay; doubles.")
    max_backoff_s: float = Field(60.0, gt=0, description="Upper bound of the retry delay.")
    attempts: int = Field(5, ge=1, description="Attempts at an upload the destination "
                          "refuses for good (no such bucket, access denied) before its "
                          "records are set aside under the spool's failed/ folder. An "
                          "unreachable or throttling destination is retried for as long "
                          "as it takes.")


class PipelineCaptureSpec(_Strict):
    """Sampled capture of a pipeline's decisions into a durable spool, then uploaded."""

    rate: RateSpec | None = Field(None, description="Capture a fixed share.")
    reservoir: ReservoirSpec | None = Field(None, description="Capture K per window.")
    anomalies: AnomalySpec | None = Field(None, description="Capture every anomalous "
                                          "decision and its context.")
    spool: CaptureSpoolSpec = Field(default_factory=CaptureSpoolSpec)
    upload: UploadSpec = Field(default_factory=UploadSpec)
    destination: Annotated[S3DestinationSpec | DiskDestinationSpec,
                           Field(discriminator="type")]
