"""The capture store: CaptureData records written to a durable spool, flushed in batches
to a local folder (``Disk``) or to S3 (``Cloud``), with a status per capture id.

Unlike the old agent's in-memory ring buffer, :meth:`CaptureStore.submit` returns only
once the record is on disk (fsync'ed, unless ``fsync: false``): a crash or power cut after
that never loses it, the next start delivers it. Design and layouts: ``docs/capture.md``.

Life of a capture::

    submit() -> spool/records/<seq>.cap  (IN_PROGRESS; BufferFull when buffer_size pending)
    flusher  -> batch intent written     (batch_size pending for a model, or push_period)
             -> batch objects written to Disk / uploaded to S3, manifest last
             -> statuses logged (SUCCESS, or FAILURE after bounded retries)
             -> spool files deleted
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import Field, model_validator

from edged.capture.batch import build_batch, manifest_key
from edged.capture.destinations import (
    DeliveryError,
    Destination,
    DiskDestination,
    S3Destination,
    clean_prefix,
)
from edged.capture.records import AuxData, CaptureRecord, TensorData, check_record
from edged.capture.spool import BatchIntent, CorruptRecord, Spool, SpoolLocked, StatusLog
from edged.config import Strict
from edged.errors import EdgedError
from edged.log import RateLimit
from edged.metrics import Counters

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


class CaptureError(EdgedError):
    """The capture store cannot start, or cannot take a record."""


class BufferFull(CaptureError):
    """``buffer_size`` captures are pending; the agent answers RESOURCE_EXHAUSTED."""


class DuplicateCaptureId(CaptureError, ValueError):
    """A capture with this id is pending or has a status already."""


class CapturePolicy(Strict):
    """The capture keys an operator sets (the agent's ``capture:`` section)."""

    destination: Literal["Disk", "Cloud"] = Field(
        "Disk", description="Disk: batches as files under disk_path; Cloud: objects in "
        "s3_bucket.")
    disk_path: Path | None = Field(
        None, description="Root of the Disk layout, and of the default spool_dir.")
    folder_prefix: str = Field(
        "", description="Folder (Disk) or key prefix (Cloud) above the <model>/ folders.")
    buffer_size: int = Field(
        30, ge=1, le=1_000_000,
        description="Captures pending at most; submit() raises BufferFull beyond (the "
        "agent answers RESOURCE_EXHAUSTED).")
    batch_size: int = Field(
        10, ge=1, description="Write a model's batch once this many captures are pending.")
    push_period_s: float = Field(
        4.0, gt=0, description="...or once its oldest pending capture is this old.")
    base64_embed_limit: int = Field(
        3072, ge=0, le=3072,
        description="Tensors and auxiliary data up to this many bytes are embedded base64 "
        "in the manifest; larger ones become separate files.")
    s3_bucket: str | None = Field(None, description="The Cloud destination's bucket.")
    s3_endpoint_url: str | None = Field(
        None, description="An S3-compatible endpoint instead of AWS's (MinIO, moto, ...).")
    fsync: bool = Field(
        True, description="fsync spool and batch files; off: a power cut may lose the "
        "last captures (a process crash still loses none).")


class CaptureSettings(CapturePolicy):
    """Where and how captures are stored: the policy plus what the device supplies."""

    disk_path: Path = Field(
        description="Root of the Disk layout, and of the default spool_dir.")
    s3_region: str | None = Field(None, description="AWS region; default: boto3's chain.")
    device_name: str = Field(description="Written into every manifest line.")
    fleet_name: str | None = Field(None, description="Written into every manifest line.")
    spool_dir: Path = Field(
        description="Where pending captures live durably; default disk_path/.spool.")
    status_keep: int = Field(
        10_000, ge=1, description="Terminal statuses remembered (and persisted) at most; "
        "older ids answer NOT_FOUND.")
    upload_attempts: int = Field(
        5, ge=1, description="Attempts at a batch that fails for a reason waiting does "
        "not cure (denied, no such bucket, disk error) before its captures are FAILURE. "
        "An unreachable or throttling endpoint is retried for as long as it takes.")
    retry_backoff_s: float = Field(1.0, gt=0, description="First retry delay; doubles.")
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


@dataclass(eq=False)
class _Pending:
    seq: int
    capture_id: str
    model_name: str
    since: float  # monotonic time of submit(); -inf for captures replayed at start
    ready: bool = False  # on disk (submit() has returned or is about to)


class CaptureStore:
    """Durable capture buffer plus the flusher that writes batches to the destination.

    Use as ``async with CaptureStore(settings) as store:``. Entering locks the spool,
    loads the status log, replays what a crash left pending and starts the flusher task;
    leaving makes one attempt at everything pending (no retries), then stops. Whatever is
    still pending stays in the spool for the next start.

    Counters: ``captures_submitted``, ``captures_rejected{reason=buffer_full|duplicate|
    invalid|spool_error}``, ``captures_replayed``, ``captures_written``,
    ``batches_written{destination}``, ``batches_failed{destination}``,
    ``capture_failures`` (captures that ended FAILURE), ``upload_retries`` (failed batch
    attempts that are retried, either destination).
    """

    def __init__(self, settings: CaptureSettings, *, counters: Counters | None = None):
        self.settings = settings
        self.counters = counters if counters is not None else Counters()
        self._spool = Spool(settings.spool_dir, fsync=settings.fsync)
        self._status_log = StatusLog(settings.spool_dir / "status.jsonl",
                                     settings.status_keep, fsync=settings.fsync)
        prefix = clean_prefix(settings.folder_prefix)
        self._destination: Destination
        if settings.destination == "Cloud":
            self._destination = S3Destination(
                settings.s3_bucket or "", prefix, endpoint_url=settings.s3_endpoint_url,
                region=settings.s3_region)
        else:
            root = settings.disk_path / prefix if prefix else settings.disk_path
            self._destination = DiskDestination(root, fsync=settings.fsync)
        self._pending: dict[str, _Pending] = {}
        self._queues: dict[str, deque[_Pending]] = {}
        self._replayed: deque[tuple[BatchIntent, list[_Pending]]] = deque()
        self._done: OrderedDict[str, str] = OrderedDict()
        self._seq = 0
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
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
        if self._task is None or self._stop.is_set():
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
        entry = _Pending(self._seq, capture_id, record.model_name, time.monotonic())
        self._seq += 1
        # Reserved before the write, so concurrent submits count against the buffer.
        self._pending[capture_id] = entry
        self._queues.setdefault(entry.model_name, deque()).append(entry)
        loop = asyncio.get_running_loop()
        written = loop.run_in_executor(None, self._spool.write_record, entry.seq, record,
                                       time.time())
        # The callback, not this coroutine, settles the entry: a caller cancelled mid-write
        # leaves a record that is on disk and will be delivered.
        written.add_done_callback(partial(self._written, entry))
        try:
            await asyncio.shield(written)
        except OSError as exc:
            raise CaptureError(f"cannot write the capture spool: {exc}") from exc
        self.counters.inc("captures_submitted")

    def status(self, capture_id: str) -> CaptureStatus:
        """IN_PROGRESS while pending, SUCCESS once its batch is at the destination,
        FAILURE if it could not be written, NOT_FOUND for an unknown id (or one older
        than the last ``status_keep``). Survives restarts."""
        if capture_id in self._pending:
            return "IN_PROGRESS"
        return self._done.get(capture_id, "NOT_FOUND")  # type: ignore[return-value]

    @property
    def pending(self) -> int:
        """Captures submitted and not yet SUCCESS or FAILURE."""
        return len(self._pending)

    async def __aenter__(self) -> CaptureStore:
        if self._task is not None:
            raise CaptureError("the capture store is already running")
        await asyncio.to_thread(self._open)
        self._task = asyncio.create_task(self._flusher(), name="edged[capture].flusher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake.set()
        try:
            if self._task is not None:
                await self._task
        finally:
            await asyncio.to_thread(self._close)

    # -- start and stop ------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self._destination.open()
            self._spool.open()
        except (ImportError, DeliveryError, SpoolLocked, OSError) as exc:
            self._destination.close()
            raise CaptureError(str(exc)) from exc
        try:
            self._replay()
        except BaseException:
            self._close()
            raise

    def _close(self) -> None:
        self._destination.close()
        self._spool.close()

    def _replay(self) -> None:
        """Rebuild the pending state from the spool (a thread, before the flusher runs)."""
        self._done = self._status_log.load()
        intents = self._spool.intents()
        seqs = self._spool.record_seqs()
        self._seq = max(seqs, default=-1) + 1
        found: dict[int, _Pending] = {}
        corrupt: set[int] = set()
        for seq in seqs:
            try:
                record = self._spool.read_record(seq).record
            except CorruptRecord as exc:
                target = self._spool.quarantine(seq)
                corrupt.add(seq)
                self.counters.inc("capture_failures")
                log.error("capture_spool_corrupt", error=str(exc), moved_to=str(target))
                continue
            except FileNotFoundError:
                continue
            if record.capture_id in self._pending:
                self._spool.delete_records([seq])  # cannot happen short of a hand-made file
                continue
            entry = _Pending(seq, record.capture_id, record.model_name, -math.inf, ready=True)
            found[seq] = entry
            self._pending[entry.capture_id] = entry
        claimed: set[int] = set()
        for intent in intents:
            if any(seq not in found and seq not in corrupt for seq in intent.seqs):
                # Its records were being deleted: the batch was delivered and its statuses
                # logged. Finish the clean-up.
                self._spool.delete_records(intent.seqs)
                for seq in intent.seqs:
                    if seq in found:
                        self._pending.pop(found[seq].capture_id, None)
                self._spool.delete_intent(intent)
                claimed.update(intent.seqs)
                continue
            entries = [found[seq] for seq in intent.seqs if seq in found]
            claimed.update(intent.seqs)
            if entries:
                self._replayed.append((intent, entries))
            else:
                self._spool.delete_intent(intent)
        for seq in sorted(found):
            if seq not in claimed:
                entry = found[seq]
                self._queues.setdefault(entry.model_name, deque()).append(entry)
        self.counters.inc("captures_replayed", len(self._pending))
        log.info("capture_store_started", destination=self._destination.name,
                 spool=str(self.settings.spool_dir), replayed=len(self._pending),
                 replayed_batches=len(self._replayed), statuses=len(self._done))

    def _written(self, entry: _Pending, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is None:
            entry.ready = True
            self._wake.set()
            return
        self.counters.inc("captures_rejected", reason="spool_error")
        error = None if future.cancelled() else future.exception()
        log.error("capture_spool_write_failed", capture_id=entry.capture_id, error=str(error))
        self._pending.pop(entry.capture_id, None)
        queue = self._queues.get(entry.model_name)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(entry)
            if not queue:
                del self._queues[entry.model_name]

    # -- the flusher ---------------------------------------------------------------------

    async def _flusher(self) -> None:
        backoff = self.settings.retry_backoff_s
        while True:
            try:
                if not await self._flush_once():
                    return
                backoff = self.settings.retry_backoff_s
            except Exception:
                # A bug or an unexpected error must not stall every later capture.
                log.exception("capture_flusher_error")
                if await self._sleep(backoff):
                    return
                backoff = min(backoff * 2, self.settings.retry_max_backoff_s)

    async def _flush_once(self) -> bool:
        """Deliver one due batch, or wait until one may be due; False to stop."""
        stopping = self._stop.is_set()
        if self._replayed:
            intent, entries = self._replayed[0]
            delivered = await self._deliver(intent, entries, once=stopping)
            if delivered:
                self._replayed.popleft()
            return delivered
        self._wake.clear()
        picked = self._take_due(force=stopping)
        if picked is None:
            if stopping:
                return False
            timeout = self._next_deadline()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            return True
        model_name, entries = picked
        intent = BatchIntent(str(uuid.uuid4()), model_name, time.time(),
                             tuple(e.seq for e in entries))
        delivered = await self._deliver(intent, entries, once=stopping)
        if not delivered:
            # Stopped while retrying: the intent stays in the spool and the next start
            # delivers this very batch first. Keep the entries ahead of later ones.
            self._replayed.append((intent, entries))
        return delivered

    def _take_due(self, *, force: bool) -> tuple[str, list[_Pending]] | None:
        """The due batch whose oldest capture is oldest, taken off its queue."""
        now = time.monotonic()
        size = self.settings.batch_size
        best: tuple[int, str, int] | None = None
        for model_name, queue in self._queues.items():
            ready = 0
            for entry in queue:
                if not entry.ready or ready == size:
                    break
                ready += 1
            if not ready:
                continue
            due = ready == size or force or now - queue[0].since >= self.settings.push_period_s
            if due and (best is None or queue[0].seq < best[0]):
                best = (queue[0].seq, model_name, ready)
        if best is None:
            return None
        _, model_name, count = best
        queue = self._queues[model_name]
        entries = [queue.popleft() for _ in range(count)]
        if not queue:
            del self._queues[model_name]
        return model_name, entries

    def _next_deadline(self) -> float | None:
        heads = [q[0].since for q in self._queues.values() if q and q[0].ready]
        if not heads:
            return None  # a submit wakes the flusher
        return max(0.0, min(heads) + self.settings.push_period_s - time.monotonic())

    async def _sleep(self, delay: float) -> bool:
        """Sleep ``delay`` seconds, jittered; True if the store was stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay * random.uniform(0.5, 1.0))
        return self._stop.is_set()

    async def _deliver(self, intent: BatchIntent, entries: list[_Pending], *,
                       once: bool) -> bool:
        """Write one batch, retrying as the settings say; record the outcome. False if
        the store stopped before the batch was settled either way."""
        destination = self._destination.name
        attempts = 0
        delay = self.settings.retry_backoff_s
        while True:
            try:
                corrupt = await asyncio.to_thread(self._write_batch, intent)
                break
            except DeliveryError as exc:
                error = exc
            except OSError as exc:
                error = DeliveryError(f"capture spool: {exc}", transient=False)
            except Exception as exc:
                # A bug must settle the batch (as FAILURE, in the end), not strand it.
                log.exception("capture_batch_error", batch=intent.batch_id)
                error = DeliveryError(f"unexpected: {exc!r}", transient=False)
            if not error.transient:
                attempts += 1
                if attempts >= self.settings.upload_attempts:
                    await self._settle(intent, entries, "FAILURE", set())
                    self.counters.inc("batches_failed", destination=destination)
                    log.error("capture_batch_failed", batch=intent.batch_id,
                              model=intent.model_name, captures=len(entries),
                              attempts=attempts, error=str(error))
                    return True
            if once or self._stop.is_set():
                return False
            self.counters.inc("upload_retries")
            suppressed = self._rate_limit.allow(f"retry:{error.transient}")
            if suppressed is not None:
                log.warning("capture_batch_retry", batch=intent.batch_id,
                            destination=destination, transient=error.transient,
                            retry_in_s=round(delay, 2), pending=len(self._pending),
                            error=str(error), suppressed=suppressed)
            if await self._sleep(delay):
                return False
            delay = min(delay * 2, self.settings.retry_max_backoff_s)
        await self._settle(intent, entries, "SUCCESS", corrupt)
        self.counters.inc("batches_written", destination=destination)
        log.debug("capture_batch_written", batch=intent.batch_id, model=intent.model_name,
                  captures=len(entries) - len(corrupt), key=manifest_key(intent))
        return True

    def _write_batch(self, intent: BatchIntent) -> set[int]:
        """(Thread.) Pin the batch down, read its records, write it; the seqs of records
        found corrupt, which are left out."""
        self._spool.write_intent(intent)
        spooled, corrupt = [], set()
        for seq in intent.seqs:
            try:
                spooled.append(self._spool.read_record(seq))
            except CorruptRecord as exc:
                target = self._spool.quarantine(seq)
                corrupt.add(seq)
                log.error("capture_spool_corrupt", error=str(exc), moved_to=str(target))
        if spooled:
            self._destination.write(build_batch(
                intent, spooled, device_name=self.settings.device_name,
                fleet_name=self.settings.fleet_name,
                embed_limit=self.settings.base64_embed_limit))
        return corrupt

    async def _settle(self, intent: BatchIntent, entries: list[_Pending], outcome: str,
                      corrupt: set[int]) -> None:
        """Record the batch's outcome: statuses first (memory, then the log), then the
        spool files go. The destination already holds the batch, so a crash anywhere in
        here only makes the next start deliver the same batch again, to the same keys."""
        items = [(e.capture_id, "FAILURE" if e.seq in corrupt else outcome) for e in entries]
        for capture_id, status in items:
            self._pending.pop(capture_id, None)
            self._done.pop(capture_id, None)
            self._done[capture_id] = status
        while len(self._done) > self.settings.status_keep:
            self._done.popitem(last=False)
        failed = sum(1 for _, status in items if status == "FAILURE")
        self.counters.inc("captures_written", len(items) - failed)
        if failed:
            self.counters.inc("capture_failures", failed)
        try:
            await asyncio.to_thread(self._cleanup, intent, items)
        except OSError as exc:
            log.error("capture_spool_cleanup_failed", batch=intent.batch_id, error=str(exc))

    def _cleanup(self, intent: BatchIntent, items: list[tuple[str, str]]) -> None:
        self._status_log.append(items, self._done)
        self._spool.delete_records(intent.seqs)
        self._spool.delete_intent(intent)
