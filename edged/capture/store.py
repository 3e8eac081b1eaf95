"""The agent's capture store: each CaptureData record becomes one JSON line (the
``agent`` record kind) on the capture path every capture takes
(:class:`edged.capture.uplink.CaptureUplink`), with a status per capture id.

:meth:`CaptureStore.submit` returns only once the record is on disk (fsync'ed, unless
``fsync: false``); concurrent submits share one write and one fsync. A crash or power cut
after that never loses it: the next start uploads it. Design and layouts:
``docs/capture.md``.

Life of a capture::

    submit() -> one segment line in <spool_dir>/segments/   (IN_PROGRESS; BufferFull
                                                              when buffer_size pending)
    uplink   -> uploaded in a batch (batch_size waiting, or every push_period_s) as
                gzip JSON lines under <prefix>/device=/model=/version=/date=/hour=/
             -> SUCCESS once acknowledged (FAILURE once set aside under failed/)
             -> statuses logged, then the spool forgets the records
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import orjson
import structlog
from pydantic import Field, model_validator

from edged.base.errors import EdgedError
from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.base.tasks import cancel_all
from edged.capture.destinations import (
    DeliveryError,
    Destination,
    DiskDestination,
    S3Destination,
    clean_prefix,
)
from edged.capture.records import (
    AuxData,
    CaptureRecord,
    TensorData,
    check_record,
    encode_agent_record,
)
from edged.capture.spool import SpoolLocked, StatusLog
from edged.capture.uplink import Budget, CaptureUplink, UplinkSettings
from edged.config.capture import reserve_bytes
from edged.plugin.config import Strict

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

log = structlog.get_logger("edged.capture")

CaptureStatus = Literal["IN_PROGRESS", "SUCCESS", "FAILURE", "NOT_FOUND"]
#: The counters' label for the agent's records (pipelines use ``pipeline=<name>``).
AGENT_LABELS = {"source": "agent"}


class CaptureError(EdgedError):
    """The capture store cannot start, or cannot take a record."""


class BufferFull(CaptureError):
    """``buffer_size`` captures are pending; the agent answers RESOURCE_EXHAUSTED."""


class DuplicateCaptureId(CaptureError, ValueError):
    """A capture with this id is pending or has a status already."""


class CapturePolicy(Strict):
    """The capture keys an operator sets (the agent's ``capture:`` section)."""

    destination: Literal["Disk", "Cloud"] = Field(
        "Disk", description="Disk: objects as files under disk_path; Cloud: objects in "
        "s3_bucket.")
    disk_path: Path | None = Field(
        None, description="Root of the Disk destination, and of the default spool_dir.")
    folder_prefix: str = Field(
        "", description="Folder (Disk) or key prefix (Cloud) above the device=<id>/ "
        "partitions.")
    buffer_size: int = Field(
        30, ge=1, le=1_000_000,
        description="Captures pending at most; submit() raises BufferFull beyond (the "
        "agent answers RESOURCE_EXHAUSTED).")
    batch_size: int = Field(
        10, ge=1, description="Upload once this many captures are waiting (at most this "
        "many an upload).")
    push_period_s: float = Field(
        4.0, gt=0, description="...and whatever is waiting this often.")
    s3_bucket: str | None = Field(None, description="The Cloud destination's bucket.")
    s3_endpoint_url: str | None = Field(
        None, description="An S3-compatible endpoint instead of AWS's (MinIO, moto, ...).")
    fsync: bool = Field(
        True, description="fsync the spool and Disk objects; off: a power cut may lose "
        "the last captures (a process crash still loses none).")
    min_free_mb: float | None = Field(
        None, ge=0, description="Free space the spool leaves on its filesystem; "
        "below it new captures are refused (captures_rejected{reason=disk_full}). 0: "
        "write until the disk is full. Default: 32 MiB, or 15% of a filesystem smaller "
        "than 213 MiB.")


class CaptureSettings(CapturePolicy):
    """Where and how captures are stored: the policy plus what the device supplies."""

    disk_path: Path = Field(
        description="Root of the Disk destination, and of the default spool_dir.")
    s3_region: str | None = Field(None, description="AWS region; default: boto3's chain.")
    device_name: str = Field(description="The device=<id> partition and each record's "
                             "device.")
    fleet_name: str | None = Field(None, description="Each record's fleet.")
    spool_dir: Path = Field(
        description="Where pending captures live durably; default disk_path/.spool.")
    status_keep: int = Field(
        10_000, ge=1, description="Terminal statuses remembered (and persisted) at most; "
        "older ids answer NOT_FOUND.")
    upload_attempts: int = Field(
        5, ge=1, description="Attempts at an upload that fails for a reason waiting does "
        "not cure (denied, no such bucket, disk error) before its captures are FAILURE "
        "and its records set aside under spool_dir/failed/. An unreachable or "
        "throttling endpoint is retried for as long as it takes.")
    retry_backoff_s: float = Field(1.0, gt=0, description="Bound of the first retry "
                                   "delay (full jitter); doubles.")
    retry_max_backoff_s: float = Field(30.0, gt=0, description="Largest retry delay.")

    @model_validator(mode="before")
    @classmethod
    def _default_spool_dir(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("spool_dir") is None \
                and data.get("disk_path") is not None:
            data = {**data, "spool_dir": Path(data["disk_path"]) / ".spool"}
        return data

    @model_validator(mode="after")
    def _check(self) -> CaptureSettings:
        if self.destination == "Cloud" and not self.s3_bucket:
            raise ValueError("the Cloud destination needs s3_bucket")
        clean_prefix(self.folder_prefix)
        return self


def build_destination(settings: CaptureSettings, credentials: Any = None) -> Destination:
    """``credentials``: an :class:`edged.capture.credentials.IotCredentialsProvider` for the
    Cloud destination, or None for the standard AWS credential chain."""
    prefix = clean_prefix(settings.folder_prefix)
    if settings.destination == "Cloud":
        return S3Destination(settings.s3_bucket or "", prefix,
                             endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                             credentials=credentials)
    root = settings.disk_path / prefix if prefix else settings.disk_path
    return DiskDestination(root, fsync=settings.fsync)


class CaptureStore:
    """CaptureData records on the capture uplink, with their statuses.

    Use as ``async with CaptureStore(settings) as store:``. Entering locks the spool,
    loads the status log, finds what a crash left pending and starts two tasks: the
    committer (``edged[capture].commit``, one write and fsync for every submit waiting)
    and the uploader (``edged[capture].upload``). Leaving makes one attempt at everything
    pending (no retries), then stops; what is still pending stays in the spool.

    Counters: ``captures_submitted``, ``captures_rejected{reason=buffer_full|duplicate|
    invalid|spool_error}``, ``captures_replayed``, ``captures_written`` (SUCCESS),
    ``capture_failures`` (FAILURE), ``batches_written{destination}``,
    ``batches_failed{destination}``, and the uplink's ``capture_*{source=agent}``.
    """

    def __init__(self, settings: CaptureSettings, *, counters: Counters | None = None,
                 budget: Budget | None = None,
                 destination: Destination | None = None, credentials: Any = None) -> None:
        self.settings = settings
        self.counters = counters if counters is not None else Counters()
        self.destination = destination or build_destination(settings, credentials)
        self.uplink = CaptureUplink(
            settings.spool_dir, self.destination,
            UplinkSettings(interval_s=settings.push_period_s,
                           max_records=settings.batch_size,
                           retry_backoff_s=settings.retry_backoff_s,
                           max_backoff_s=settings.retry_max_backoff_s,
                           upload_attempts=settings.upload_attempts,
                           fsync="batch" if settings.fsync else "never",
                           min_free_bytes=reserve_bytes(settings.min_free_mb),
                           drop_oldest=False),
            device=settings.device_name, counters=self.counters, labels=AGENT_LABELS,
            budget=budget, on_settled=self._settled)
        self._status_log = StatusLog(settings.spool_dir / "status.jsonl",
                                     settings.status_keep, fsync=settings.fsync)
        self._pending: set[str] = set()
        self._done: OrderedDict[str, str] = OrderedDict()
        self._queue: list[tuple[bytes, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._rate_limit = RateLimit(interval=30.0)

    # -- the API -------------------------------------------------------------------------

    async def submit(self, record: CaptureRecord) -> None:
        """Write ``record`` to the spool durably (fsync per settings) and return.

        Raises :class:`BufferFull` when ``buffer_size`` captures are pending,
        :class:`DuplicateCaptureId` (a ``ValueError``) for a capture id that is pending
        or still has a status, ``ValueError`` for a record that cannot be stored (model
        name, capture id, dtype, shape vs byte count, encoding) and :class:`CaptureError`
        when the store is not running or the spool cannot be written.
        """
        if not self._running:
            raise CaptureError("the capture store is not running")
        try:
            check_record(record)
        except ValueError:
            self.counters.inc("captures_rejected", reason="invalid")
            raise
        capture_id = record.capture_id
        if capture_id in self._pending or capture_id in self._done:
            self.counters.inc("captures_rejected", reason="duplicate")
            raise DuplicateCaptureId(f"capture id {capture_id!r} is already known")
        if len(self._pending) >= self.settings.buffer_size:
            self.counters.inc("captures_rejected", reason="buffer_full")
            raise BufferFull(f"{len(self._pending)} captures pending "
                             f"(buffer_size {self.settings.buffer_size})")
        # Reserved before the write, so concurrent submits count against the buffer.
        self._pending.add(capture_id)
        try:
            line = await asyncio.to_thread(
                encode_agent_record, record, time.time(),
                device=self.settings.device_name, fleet=self.settings.fleet_name)
        except BaseException:
            self._pending.discard(capture_id)
            raise
        if not self._running:
            # Stopped while encoding: the last commit may have run already.
            self._pending.discard(capture_id)
            raise CaptureError("the capture store is stopping")
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((line, written))
        self._wake.set()
        # The committer, not this coroutine, settles the record: a caller cancelled
        # mid-write leaves a record that is on disk and will be uploaded.
        await asyncio.shield(written)
        self.counters.inc("captures_submitted")

    def status(self, capture_id: str) -> CaptureStatus:
        """IN_PROGRESS while pending, SUCCESS once the destination acknowledged it,
        FAILURE if it could not be uploaded, NOT_FOUND for an unknown id (or one older
        than the last ``status_keep``). Survives restarts."""
        if capture_id in self._pending:
            return "IN_PROGRESS"
        return self._done.get(capture_id, "NOT_FOUND")  # type: ignore[return-value]

    @property
    def pending(self) -> int:
        """Captures submitted and not yet SUCCESS or FAILURE."""
        return len(self._pending)

    async def __aenter__(self) -> CaptureStore:
        if self._running:
            raise CaptureError("the capture store is already running")
        try:
            await self.uplink.__aenter__()
        except (ImportError, DeliveryError, SpoolLocked, OSError) as exc:
            raise CaptureError(str(exc)) from exc
        try:
            await asyncio.to_thread(self._load)
        except BaseException:
            await self.uplink.__aexit__(None, None, None)
            raise
        self._running = True
        self._tasks = [
            asyncio.create_task(self._commit_loop(), name="edged[capture].commit"),
            asyncio.create_task(self.uplink.upload_loop(), name="edged[capture].upload"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._running = False
        try:
            await cancel_all(self._tasks)
            for task in self._tasks:  # a loop that failed says so here
                if not task.cancelled():
                    task.result()
            await self._commit()  # what was submitted while the committer stopped
            await self.uplink.flush()
        finally:
            await self.uplink.__aexit__(*exc)

    # -- start ---------------------------------------------------------------------------

    def _load(self) -> None:
        """(Thread.) The statuses, and the ids a previous run left pending."""
        self._done = self._status_log.load()
        for line in self.uplink.spooled_lines():
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                capture_id = orjson.loads(line).get("id")  # bounded depth: a ValueError
                # One with a status was acknowledged and only the clean-up was cut
                # short: it is uploaded again (same keys) but is no longer pending.
                if isinstance(capture_id, str) and capture_id not in self._done:
                    self._pending.add(capture_id)
        self.counters.inc("captures_replayed", len(self._pending))
        log.info("capture_store_started", destination=self.destination.name,
                 spool=str(self.settings.spool_dir), replayed=len(self._pending),
                 statuses=len(self._done))

    # -- the committer -------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._commit()

    async def _commit(self) -> None:
        """Write every queued record in one segment (one fsync), then let their
        submitters return."""
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            segments = await self.uplink.write([(False, line) for line, _ in batch])
        except asyncio.CancelledError:
            self._resolve(batch, None)  # the write completed before the cancellation
            raise
        except Exception as exc:
            self._reject(batch, "spool_error", f"cannot write the capture spool: {exc}")
            return
        if not segments:  # one segment or none: the spool refused the lot (counted there)
            reason = self.uplink.refusing or "spool_error"
            self._reject(batch, reason, f"the capture spool refuses captures ({reason})")
            return
        self._resolve(batch, None)

    def _reject(self, batch: list[tuple[bytes, asyncio.Future[None]]], reason: str,
                message: str) -> None:
        self.counters.inc("captures_rejected", len(batch), reason=reason)
        self._rate_limit.warning(log, "capture_spool_write_failed", captures=len(batch),
                                 reason=reason, error=message)
        for line, _ in batch:
            with contextlib.suppress(ValueError, AttributeError):
                self._pending.discard(orjson.loads(line)["id"])
        self._resolve(batch, CaptureError(message))

    @staticmethod
    def _resolve(batch: list[tuple[bytes, asyncio.Future[None]]],
                 error: Exception | None) -> None:
        for _, future in batch:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

    # -- statuses ------------------------------------------------------------------------

    async def _settled(self, ids: list[str], outcome: str) -> None:
        """The uplink's word on an upload: statuses first (memory, then the log). The
        destination already holds the records (or they are set aside), so a crash in
        here only makes the next start upload the same keys again."""
        for capture_id in ids:
            self._pending.discard(capture_id)
            self._done.pop(capture_id, None)
            self._done[capture_id] = outcome
        while len(self._done) > self.settings.status_keep:
            self._done.popitem(last=False)
        destination = self.destination.name
        if outcome == "SUCCESS":
            self.counters.inc("captures_written", len(ids))
            self.counters.inc("batches_written", destination=destination)
        else:
            self.counters.inc("capture_failures", len(ids))
            self.counters.inc("batches_failed", destination=destination)
        items = [(capture_id, outcome) for capture_id in ids]
        try:
            # A copy: the loop goes on changing the statuses while the thread writes them.
            await asyncio.to_thread(self._status_log.append, items, self._done.copy())
        except OSError as exc:
            log.error("capture_status_log_failed", error=str(exc))
