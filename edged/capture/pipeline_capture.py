"""Sampled capture of a pipeline's decisions: subscriber -> bounded queue -> writer ->
segment spool -> uploader -> S3 or disk. See docs/capture.md, "Pipeline capture".

The decision path only runs the sampling policies and ``put_nowait``: it never waits
for the disk or the network. A full queue drops the new picks, counted as
``capture_dropped{pipeline,reason=queue_full}``; a full spool drops the oldest records
without an anomaly (``reason=budget``), then the oldest with one (``reason=budget_anomaly``).
A record counts as captured (``capture_records``) once its segment is on disk; it leaves
the spool only after the destination acknowledged its upload (``capture_uploaded``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from edged.capture.decision_records import Item, clock_synced, encode_record, manifest_hash
from edged.capture.destinations import Destination, DiskDestination, S3Destination
from edged.capture.policy import AnomalyPolicy, Pick, RatePolicy, ReservoirPolicy, Sampler
from edged.capture.segments import Segment, SegmentSpool, Upload, build_objects
from edged.capture_config import PipelineCaptureSpec
from edged.events import Decision, Event
from edged.log import RateLimit
from edged.metrics import Counters

log = structlog.get_logger("edged.capture.pipeline")


def build_sampler(spec: PipelineCaptureSpec) -> Sampler:
    return Sampler(
        rate=RatePolicy(spec.rate.every, mode=spec.rate.mode, seed=spec.rate.seed)
        if spec.rate else None,
        reservoir=ReservoirPolicy(spec.reservoir.size, spec.reservoir.window_s,
                                  seed=spec.reservoir.seed) if spec.reservoir else None,
        anomalies=AnomalyPolicy(spec.anomalies.before, spec.anomalies.after)
        if spec.anomalies else None,
    )


def build_destination(spec: PipelineCaptureSpec, fsync: bool) -> Destination:
    dest = spec.destination
    if dest.type == "s3":
        return S3Destination(dest.bucket, dest.prefix.strip("/"),
                             endpoint_url=dest.endpoint_url, region=dest.region)
    return DiskDestination(Path(dest.path), fsync=fsync)


class PipelineCapture:
    """One pipeline's capture: a subscriber (add it to ``pipeline.subscribers``), a
    writer and an uploader loop, and the spool they share. An async context manager:
    entering opens the spool (replaying what a previous run left) and the destination."""

    def __init__(self, pipeline: str, spec: PipelineCaptureSpec, *, device: str,
                 root: Path, counters: Counters, source: Any = None,
                 destination: Destination | None = None,
                 clock: Callable[[], bool | None] = clock_synced) -> None:
        self.pipeline = pipeline
        self.spec = spec
        self.device = device
        self.counters = counters
        self.sampler = build_sampler(spec)
        self._source = source  # the Pipeline: its round window and backend manifest
        fsync = spec.spool.fsync != "never"
        self.spool = SegmentSpool(root, fsync=fsync)
        self.destination = destination or build_destination(spec, fsync)
        self._clock = clock
        self._budget = int(spec.spool.budget_mb * 1024 * 1024)
        self.queue: asyncio.Queue[Item] = asyncio.Queue(spec.spool.queue_size)
        self._segments: dict[str, Segment] = {}  # oldest first
        self._claimed: set[str] = set()
        self._bytes = 0
        self._waiting = 0  # records in segments no upload claimed
        self._seq = 0
        self._replay: list[Upload] = []
        self._upload_now = asyncio.Event()
        self._models: dict[tuple[str, int], str | None] = {}
        self._last_round: tuple[Sequence[str], Sequence[float]] = ((), ())
        self._rate_limit = RateLimit()

    # -- life cycle ----------------------------------------------------------------------

    async def __aenter__(self) -> PipelineCapture:
        segments, self._replay = await asyncio.to_thread(self.spool.open)
        try:
            await asyncio.to_thread(self.destination.open)
        except BaseException:
            self.spool.close()
            raise
        for segment in segments:
            self._add(segment)
        self._seq = segments[-1].seq + 1 if segments else 0
        for upload in self._replay:
            self._claim(upload.segments)
        if segments:
            log.info("capture_replay", pipeline=self.pipeline, segments=len(segments),
                     records=sum(s.count for s in segments), uploads=len(self._replay))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.destination.close)
        self.spool.close()

    # -- figures -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records in the spool not yet acknowledged by the destination (an upload in
        flight included); picks still queued for the writer are not counted."""
        return sum(segment.count for segment in self._segments.values())

    @property
    def pending_bytes(self) -> int:
        """Bytes of the spool's segments not yet acknowledged by the destination."""
        return self._bytes

    def dropped(self) -> int:
        """Records this pipeline's capture dropped (``capture_dropped``, every reason)."""
        prefix = f"capture_dropped{{pipeline={self.pipeline},"  # labels are sorted
        return sum(value for key, value in self.counters.snapshot().items()
                   if key.startswith(prefix))

    # -- the decision path ---------------------------------------------------------------

    def on_decisions(self, decisions: Sequence[Decision], features: Sequence[str],
                     thresholds: Sequence[float]) -> None:
        source, spool = self._source, self.spec.spool
        # Read by the pipeline beside its decisions' wall-clock time, so that a jump of
        # their difference is a step of the wall clock, not the time the round took.
        now = getattr(source, "round_monotonic", None)
        if now is None:
            now = time.monotonic()
        window = getattr(source, "round_window", None) if spool.include_window else None
        raw = getattr(source, "round_raw", None) if spool.include_rows else None
        inputs = source.preprocessor.inputs if raw is not None else ()
        picks = self.sampler.select(decisions, now, window, raw, inputs)
        self._last_round = (features, thresholds)
        if picks:
            wall = decisions[0].time  # the pipeline's wall clock, one for both
            self._enqueue(picks, (features, thresholds, self._model_info(), now, wall))

    def on_event(self, event: Event) -> None:
        pass

    def request(self, turbine: str, duration_s: float) -> None:
        """Capture every decision of ``turbine`` (``*``: all) for ``duration_s``."""
        self.sampler.on_demand.request(turbine, time.monotonic() + duration_s)
        log.info("capture_on_demand", pipeline=self.pipeline, turbine=turbine,
                 duration_s=duration_s)

    def _enqueue(self, picks: list[Pick], meta: tuple) -> None:
        put, dropped = self.queue.put_nowait, 0
        for pick in picks:
            try:
                put((pick, meta))
            except asyncio.QueueFull:
                dropped += 1
        if dropped:
            self.counters.inc("capture_dropped", dropped, pipeline=self.pipeline,
                              reason="queue_full")

    def _model_info(self) -> dict[tuple[str, int], str | None]:
        backend = getattr(self._source, "backend", None)
        model = getattr(backend, "model", None)
        if model is not None and (model.name, model.version) not in self._models:
            self._models[(model.name, model.version)] = manifest_hash(
                getattr(backend, "manifest", None))
        return self._models

    # -- the writer ----------------------------------------------------------------------

    async def write_loop(self) -> None:
        """Write queued picks to the spool; on cancellation, write what is queued (and
        the reservoir's open window) before ending."""
        try:
            while True:
                items = [await self.queue.get()]
                if self.spec.spool.fsync != "always":
                    items += self._take_queued()
                await self.write(items)
        except asyncio.CancelledError:
            rest = self._take_queued()
            meta = (*self._last_round, self._model_info(), time.monotonic(), time.time())
            rest += [(pick, meta) for pick in self.sampler.drain()]
            if rest:
                await self.write(rest)
            raise

    def _take_queued(self) -> list[Item]:
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items

    async def write(self, items: list[Item]) -> None:
        """Append ``items`` to the spool (anomalous and other records in separate
        segments), then hold the spool to its budget."""
        if not items:
            return
        per_record = self.spec.spool.fsync == "always"
        first = self._seq
        self._seq += len(items) if per_record else 2
        work = asyncio.ensure_future(asyncio.to_thread(self._write_segments, items, first,
                                                       per_record))
        try:
            segments = await asyncio.shield(work)
        except asyncio.CancelledError:
            segments = await work  # the thread writes regardless: keep the books right
            self._written(segments)
            raise
        self._written(segments)
        await self._enforce_budget()

    def _write_segments(self, items: list[Item], seq: int, per_record: bool) -> list[Segment]:
        synced = self._clock()
        encoded = [(pick.decision.is_anomalous,
                    encode_record(pick, meta, self.pipeline, self.device, synced))
                   for pick, meta in items]
        if per_record:
            return [self.spool.write_segment(seq + i, anomalous, [line])
                    for i, (anomalous, line) in enumerate(encoded)]
        segments = []
        for offset, flag in enumerate((True, False)):
            lines = [line for anomalous, line in encoded if anomalous is flag]
            if lines:
                segments.append(self.spool.write_segment(seq + offset, flag, lines))
        return segments

    def _written(self, segments: list[Segment]) -> None:
        for segment in segments:
            self._add(segment)
            self.counters.inc("capture_records", segment.count, pipeline=self.pipeline)
        if self._waiting >= self.spec.upload.max_records:
            self._upload_now.set()

    def _add(self, segment: Segment) -> None:
        self._segments[segment.name] = segment
        self._bytes += segment.size
        self._waiting += segment.count

    def _claim(self, names: Sequence[str]) -> None:
        for name in names:
            if name in self._segments and name not in self._claimed:
                self._claimed.add(name)
                self._waiting -= self._segments[name].count

    def _unclaim(self, names: Sequence[str]) -> None:
        for name in names:
            if name in self._claimed:
                self._claimed.discard(name)
                self._waiting += self._segments[name].count

    def _remove(self, names: Sequence[str]) -> None:
        for name in names:
            segment = self._segments.pop(name, None)
            if segment is not None:
                self._bytes -= segment.size
                if name not in self._claimed:
                    self._waiting -= segment.count
            self._claimed.discard(name)

    async def _enforce_budget(self) -> None:
        if self._bytes <= self._budget:
            return
        victims: list[Segment] = []
        over = self._bytes - self._budget
        for anomalous in (False, True):
            for name, segment in self._segments.items():
                if over <= 0:
                    break
                if segment.anomalous is anomalous and name not in self._claimed:
                    victims.append(segment)
                    over -= segment.size
        if not victims:
            return  # everything is in an upload in flight
        names = [s.name for s in victims]
        self._remove(names)
        for segment in victims:
            self.counters.inc("capture_dropped", segment.count, pipeline=self.pipeline,
                              reason="budget_anomaly" if segment.anomalous else "budget")
        await asyncio.to_thread(self.spool.delete_segments, names)
        self._warn("capture_budget_drop", records=sum(s.count for s in victims))

    # -- the uploader --------------------------------------------------------------------

    async def upload_loop(self) -> None:
        """Deliver uploads a previous run left unfinished, then every ``interval_s`` (or
        as soon as ``max_records`` are pending) upload what is spooled, oldest first."""
        while self._replay:
            await self._deliver(self._replay[0])
            self._replay.pop(0)
        while True:
            await self.upload_pending()
            self._upload_now.clear()
            try:
                async with asyncio.timeout(self.spec.upload.interval_s):
                    await self._upload_now.wait()
            except TimeoutError:
                pass

    async def upload_pending(self) -> int:
        """Upload every unclaimed segment, in batches of at most ``max_records`` (a
        segment is never split); return the records uploaded."""
        uploaded = 0
        while True:
            names: list[str] = []
            records = 0
            for name, segment in self._segments.items():
                if name in self._claimed:
                    continue
                if names and records + segment.count > self.spec.upload.max_records:
                    break
                names.append(name)
                records += segment.count
            if not names:
                return uploaded
            upload = Upload(str(uuid.uuid4()), tuple(names))
            self._claim(names)
            try:
                await asyncio.to_thread(self.spool.write_upload, upload)
            except BaseException:
                self._unclaim(names)
                raise
            await self._deliver(upload)
            uploaded += records

    async def _deliver(self, upload: Upload) -> None:
        records = sum(self._segments[n].count for n in upload.segments if n in self._segments)
        lines = await asyncio.to_thread(self.spool.read_lines, upload.segments)
        objects = await asyncio.to_thread(build_objects, upload.batch_id, lines, self.device)
        delay = self.spec.upload.retry_backoff_s
        while True:
            try:
                if objects:
                    await asyncio.to_thread(self.destination.write, objects)
                break
            except Exception as exc:
                # Retried for as long as it takes: nothing leaves the spool unacknowledged,
                # and a destination's bug must not end the daemon.
                self.counters.inc("capture_upload_failures", pipeline=self.pipeline)
                self._warn("capture_upload_failed", error=f"{type(exc).__name__}: {exc}",
                           transient=getattr(exc, "transient", False), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.spec.upload.max_backoff_s)
        await asyncio.to_thread(self.spool.finish_upload, upload)
        self._remove(upload.segments)
        self.counters.inc("capture_uploaded", records, pipeline=self.pipeline)
        self.counters.inc("capture_objects", len(objects), pipeline=self.pipeline)

    def _warn(self, event: str, **fields: Any) -> None:
        suppressed = self._rate_limit.allow(event)
        if suppressed is not None:
            log.warning(event, pipeline=self.pipeline, suppressed_since_last=suppressed,
                        **fields)
