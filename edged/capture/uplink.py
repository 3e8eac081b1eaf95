"""The one capture path from a record to its destination: segment spool -> byte budget ->
uploads with intents -> Disk or S3. Pipeline capture and the agent's CaptureData both
hand their JSON lines to a :class:`CaptureUplink`; see docs/capture.md.

- :meth:`CaptureUplink.write` makes lines durable (fsync ``always``: a segment and an
  fsync per record; ``batch``: one segment and one fsync per call, which is how
  concurrent writers share a commit; ``never``) within the spool's byte budget (what
  its files take on disk) and the filesystem's free-space reserve: whole segments of
  records not kept longer go first, oldest first, then the others
  (``capture_dropped{reason=budget|budget_anomaly|disk_space|disk_space_anomaly}``).
  Records there is no room for, or that the disk refuses, are dropped and counted
  (``spool_full``, ``disk_full``, ``disk_error``): no disk ever ends the daemon.
- :meth:`CaptureUplink.upload_loop` uploads every ``interval_s``, sooner once
  ``max_records`` are waiting: it writes an intent naming the segments, uploads one gzip
  JSON-lines object per partition, tells its user which record ids the destination
  acknowledged (``on_settled``), and only then deletes segments and intent. After a
  restart the intents go first, under the same keys.
- A transient failure (unreachable, throttled, 5xx) is retried with backoff for as long
  as it takes. A permanent one, ``upload_attempts`` times in a row, moves the upload's
  segments to ``failed/`` for a human (``capture_failed``); its records settle as
  ``FAILURE``. Nothing else leaves the spool without an acknowledgement.
- An optional data budget (:class:`Budget`) can hold an upload back; it waits, spooled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.base.retry import Backoff
from edged.base.tasks import run_to_end
from edged.capture.destinations import DeliveryError, Destination
from edged.capture.segments import (
    Segment,
    SegmentSpool,
    SpoolCorrupt,
    Upload,
    build_objects,
    decode_line,
)
from edged.config.capture import default_reserve

log = structlog.get_logger("edged.capture.uplink")

#: One record for :meth:`CaptureUplink.write`: (kept longer, its JSON line ending in \n).
Entry = tuple[bool, bytes]
#: ``on_settled(ids, outcome)``: the records' ``id`` fields; "SUCCESS" once the
#: destination acknowledged them, "FAILURE" once they were set aside under ``failed/``.
Settled = Callable[[list[str], str], Awaitable[None]]

BUDGET_PRIORITY = "capture"
_BUDGET_RECHECK_S = 60.0


class Budget(Protocol):
    """A data budget the uplink asks before each upload (e.g. a daily byte allowance)."""

    def allows(self, priority: str, nbytes: int) -> bool:
        """Whether ``nbytes`` of traffic at ``priority`` may go now."""
        ...

    def charge(self, priority: str, nbytes: int) -> None:
        """Record ``nbytes`` sent at ``priority``."""
        ...

    def seconds_until_reset(self) -> float:
        """When the allowance is next renewed."""
        ...


@dataclass(frozen=True)
class UplinkSettings:
    interval_s: float  # upload what is spooled this often
    max_records: int  # records per upload at most; this many waiting start one sooner
    retry_backoff_s: float  # bound of the first retry delay; doubles (edged.base.retry)
    max_backoff_s: float
    upload_attempts: int = 5  # permanent failures in a row before an upload is set aside
    fsync: Literal["always", "batch", "never"] = "batch"
    budget_bytes: int | None = None  # spool size on disk at most; None: unbounded
    # Free space the spool leaves on its filesystem; None: capture_config's default,
    # sized by the filesystem.
    min_free_bytes: int | None = 0
    # Make room by dropping the oldest records; off, new records are refused instead
    # (the agent's: each one's client was told it is stored).
    drop_oldest: bool = True


@dataclass
class _Plan:
    """One write, as decided on the loop: the segments to write and those to drop."""

    admitted: list[tuple[int, bool, list[bytes]]] = field(default_factory=list)
    victims: list[Segment] = field(default_factory=list)
    refused: int = 0  # records there was no room for
    refused_reason: str = "spool_full"


def _planned_segments(entries: list[Entry], seq: int, per_record: bool
                      ) -> list[tuple[int, bool, list[bytes]]]:
    """(seq, kept longer, lines) of each segment a write makes: one per record
    (``fsync: always``), else one per kind."""
    if per_record:
        return [(seq + i, keep, [line]) for i, (keep, line) in enumerate(entries)]
    planned = []
    for offset, flag in enumerate((True, False)):
        lines = [line for keep, line in entries if keep is flag]
        if lines:
            planned.append((seq + offset, flag, lines))
    return planned


def _on_disk(lines: list[bytes], unit: int) -> int:
    """What a segment of ``lines`` will take on disk: whole allocation units."""
    return -(-max(1, sum(map(len, lines))) // unit) * unit


#: Errors of a full filesystem or quota; any other OSError of a write is ``disk_error``.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


#: Why records leave the spool unsent: capture_dropped{...labels, reason}. To make room
#: (whole segments, oldest first; _anomaly: records kept longer), or refused a place.
DROP_REASONS = ("budget", "budget_anomaly", "disk_space", "disk_space_anomaly",
                "spool_full", "disk_full", "disk_error")


def _disk_reason(error: OSError) -> str:
    return "disk_full" if error.errno in _FULL else "disk_error"


def _describe(error: OSError) -> str:
    code = errno.errorcode.get(error.errno or 0, type(error).__name__)
    return f"{code}: {error.strerror or error}"


class CaptureUplink:
    """A spool directory and the uploads from it to one destination. An async context
    manager: entering locks the spool and opens the destination. ``labels`` go on every
    counter (``pipeline=<name>``, or ``source=agent``)."""

    def __init__(self, root: Path, destination: Destination, settings: UplinkSettings, *,
                 device: str, counters: Counters, labels: dict[str, str],
                 budget: Budget | None = None, on_settled: Settled | None = None) -> None:
        self.settings = settings
        self.destination = destination
        self.device = device
        self.counters = counters
        self.labels = labels
        counters.declare("capture_dropped", {"reason": DROP_REASONS}, **labels)
        self.budget = budget
        self.on_settled = on_settled
        self.spool = SegmentSpool(root, fsync=settings.fsync != "never")
        self._segments: dict[str, Segment] = {}  # oldest first
        self._claimed: set[str] = set()
        self._bytes = 0
        self._waiting = 0  # records in segments no upload claimed
        self._seq = 0
        self._replay: list[Upload] = []
        self._upload_now = asyncio.Event()
        self._uploading = asyncio.Lock()  # the loop, a test or a flush: one pass at once
        self._rate_limit = RateLimit(interval=30.0)
        self._refusing: str | None = None
        self._refused_at = 0.0
        self._refused = 0  # records refused since the spool began refusing

    # -- life cycle ----------------------------------------------------------------------

    async def __aenter__(self) -> CaptureUplink:
        segments, self._replay, corrupt = await asyncio.to_thread(self.spool.open)
        if corrupt:
            self.counters.inc("capture_intents_corrupt", corrupt, **self.labels)
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
            log.info("capture_replay", **self.labels, segments=len(segments),
                     records=sum(s.count for s in segments), uploads=len(self._replay))
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await asyncio.to_thread(self.destination.close)
        finally:
            self.spool.close()

    def spooled_lines(self) -> list[bytes]:
        """(Blocking.) Every record line in the spool, oldest first: what a restart
        found pending."""
        return self.spool.read_lines(list(self._segments))

    # -- figures -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records in the spool not yet acknowledged (an upload in flight included)."""
        return sum(segment.count for segment in self._segments.values())

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def waiting(self) -> int:
        """Records no upload has claimed yet."""
        return self._waiting

    # -- writing -------------------------------------------------------------------------

    @property
    def refusing(self) -> str | None:
        """Why the spool refuses new records now (``spool_full``, ``disk_full``,
        ``disk_error``); None while it takes them."""
        return self._refusing

    async def write(self, entries: Sequence[Entry]) -> list[Segment]:
        """Make ``entries`` durable (as ``fsync`` says) within the spool's budget and
        the filesystem's reserve, dropping the oldest segments to make room (never a
        kept-longer one for records that are not). Records there is no room for, or
        that the disk refuses, are dropped and counted: a write never fails. Returns the
        segments written. Cancelled mid-write, the write still completes and is
        accounted for before the cancellation propagates."""
        if not entries:
            return []
        per_record = self.settings.fsync == "always"
        first = self._seq
        self._seq += len(entries) if per_record else 2
        # The thread writes regardless of a cancellation: the books must say so.
        return await run_to_end(self._write_and_count(list(entries), first, per_record))

    async def _write_and_count(self, entries: list[Entry], seq: int,
                               per_record: bool) -> list[Segment]:
        try:
            free, unit, size = await asyncio.to_thread(self.spool.space)
        except OSError:
            free, unit, size = None, 4096, 0  # no reserve to check; the budget still is
        reserve = self.settings.min_free_bytes
        if reserve is None:
            reserve = default_reserve(size)
        plan = self._plan(_planned_segments(entries, seq, per_record), free, unit, reserve)
        segments, error, failed = await asyncio.to_thread(self._apply, plan)
        self._written(segments)
        if plan.refused:
            self._refuse(plan.refused_reason, plan.refused, None)
        if error is not None:
            self._refuse(_disk_reason(error), failed, error)
        if not plan.refused and error is None:
            self._resume()
        return segments

    def _plan(self, planned: list[tuple[int, bool, list[bytes]]], free: int | None,
              unit: int, reserve: int) -> _Plan:
        """(Loop.) Which new segments fit, and which old ones go to make room for them:
        kept-longer records first; the victims leave the books at once."""
        plan = _Plan()
        budget = self.settings.budget_bytes
        added = 0
        for seq, keep, lines in sorted(planned, key=lambda p: not p[1]):
            need = _on_disk(lines, unit)
            over_budget = 0 if budget is None else self._bytes + added + need - budget
            under_reserve = 0 if free is None else reserve - (free - need)
            short = max(over_budget, under_reserve)
            victims = self._victims(short, keep)
            if victims is None:
                plan.refused += len(lines)
                plan.refused_reason = "spool_full" if over_budget > under_reserve \
                    else "disk_full"
                continue
            if free is not None:
                free += sum(v.size for v in victims) - need
            added += need
            self._remove([v.name for v in victims])  # out of self._bytes from here
            why = "budget" if over_budget >= under_reserve else "disk_space"
            for victim in victims:
                self.counters.inc("capture_dropped", victim.count, **self.labels,
                                  reason=f"{why}_anomaly" if victim.anomalous else why)
            if victims:
                self._warn(f"capture_{why}_drop", records=sum(v.count for v in victims))
            plan.victims += victims
            plan.admitted.append((seq, keep, lines))
        return plan

    def _victims(self, short: int, keep: bool) -> list[Segment] | None:
        """The oldest unclaimed segments whose bytes make up ``short``: records not kept
        longer first, kept-longer ones only for kept-longer records; None if even all of
        them would not."""
        if short > 0 and not self.settings.drop_oldest:
            return None
        chosen: list[Segment] = []
        freed = 0
        for kind in (False, True) if keep else (False,):
            for name, segment in self._segments.items():
                if freed >= short:
                    return chosen
                if segment.anomalous is kind and name not in self._claimed:
                    chosen.append(segment)
                    freed += segment.size
        return chosen if freed >= short else None

    def _apply(self, plan: _Plan) -> tuple[list[Segment], OSError | None, int]:
        """(Thread.) Delete the victims, write the admitted segments; the segments
        written, and the error and count of records of the first write that failed."""
        if plan.victims:
            try:
                self.spool.delete_segments([v.name for v in plan.victims])
            except OSError as exc:  # a file left behind is found again by the next start
                self._warn("capture_spool_delete_failed", error=_describe(exc))
        written: list[Segment] = []
        for index, (seq, keep, lines) in enumerate(plan.admitted):
            try:
                written.append(self.spool.write_segment(seq, keep, lines))
            except OSError as exc:
                return written, exc, sum(len(p[2]) for p in plan.admitted[index:])
        return written, None, 0

    def _refuse(self, reason: str, records: int, error: OSError | None) -> None:
        self.counters.inc("capture_dropped", records, **self.labels, reason=reason)
        if self._refusing is None:
            self._refused_at, self._refused = time.monotonic(), 0
        self._refusing = reason
        self._refused += records
        self._rate_limit.warning(
            log, "capture_spool_refusing", **self.labels, reason=reason,
            spool=str(self.spool.root), records=records,
            error=None if error is None else _describe(error))

    def _resume(self) -> None:
        if self._refusing is None:
            return
        log.info("capture_spool_writing_again", **self.labels, spool=str(self.spool.root),
                 refused_records=self._refused, after_reason=self._refusing,
                 refused_for_s=round(time.monotonic() - self._refused_at, 1))
        self._refusing = None

    def _written(self, segments: list[Segment]) -> None:
        for segment in segments:
            self._add(segment)
            self.counters.inc("capture_records", segment.count, **self.labels)
        if self._waiting >= self.settings.max_records:
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

    # -- uploading -----------------------------------------------------------------------

    async def upload_loop(self) -> None:
        """Deliver what a previous run left in flight, then upload full batches as soon
        as ``max_records`` are waiting and everything waiting every ``interval_s``."""
        interval = self.settings.interval_s
        next_partial = time.monotonic() + interval
        while True:
            partial = time.monotonic() >= next_partial
            self._upload_now.clear()
            try:
                await self.upload_pending(partial=partial)
            except OSError as exc:
                # A disk that fails under the spool stops uploads until the next pass,
                # never the daemon: what was claimed is retried first then.
                self.counters.inc("capture_spool_errors", **self.labels, op="upload")
                self._warn("capture_upload_spool_error", error=_describe(exc))
            if partial:
                next_partial = time.monotonic() + interval
            try:
                async with asyncio.timeout(max(0.0, next_partial - time.monotonic())):
                    await self._upload_now.wait()
            except TimeoutError:
                pass

    async def upload_pending(self, *, partial: bool = True, once: bool = False) -> int:
        """Deliver unfinished uploads, then upload unclaimed segments oldest first, in
        batches of at most ``max_records`` (a segment is never split); without
        ``partial``, only batches that are full. ``once``: one attempt each, no retries
        and no waiting for the data budget (shutdown); stops at the first failure.
        Returns the records acknowledged. Passes run one at a time."""
        async with self._uploading:
            return await self._upload_pending(partial, once)

    async def _upload_pending(self, partial: bool, once: bool) -> int:
        uploaded = 0
        while self._replay:
            done = await self._deliver(self._replay[0], once=once)
            if done is None:
                return uploaded
            self._replay.pop(0)
            uploaded += done
        while True:
            names: list[str] = []
            records = 0
            full = False
            for name, segment in self._segments.items():
                if name in self._claimed:
                    continue
                if names and records + segment.count > self.settings.max_records:
                    full = True
                    break
                names.append(name)
                records += segment.count
            full = full or records >= self.settings.max_records
            if not names or not (full or partial):
                return uploaded
            upload = Upload(str(uuid.uuid4()), tuple(names))
            self._claim(names)
            try:
                await asyncio.to_thread(self.spool.write_upload, upload)
            except OSError as exc:
                # Too full for an intent (a few hundred bytes): the upload is what frees
                # the disk, so it goes without one. Only a crash during it costs: the
                # next start uploads the records again under new keys (dedupe on id).
                self.counters.inc("capture_upload_without_intent", **self.labels)
                self._warn("capture_intent_unwritten", error=_describe(exc))
            except BaseException:
                self._unclaim(names)
                raise
            try:
                done = await self._deliver(upload, once=once)
            except BaseException:
                self._replay.append(upload)  # the same batch again, first
                raise
            if done is None:
                self._replay.append(upload)
                return uploaded
            uploaded += done

    async def flush(self) -> int:
        """One attempt at everything spooled (for a shutdown); what fails stays."""
        return await self.upload_pending(once=True)

    async def _deliver(self, upload: Upload, *, once: bool) -> int | None:
        """Upload one batch until the destination acknowledges it (the records
        acknowledged) or refuses it for good (0: set aside); None if ``once`` and not
        done."""
        # Reading, parsing and compressing a batch (up to max_records records, each maybe
        # tens of KB with a window) all happen in a worker thread: on the loop, parsing
        # alone held up decisions for 0.14 s per 10,000 records, 1.5 s per 1,000 windows.
        records, ids, bad, objects = await asyncio.to_thread(self._prepare, upload)
        if bad:
            self.counters.inc("capture_corrupt", bad, **self.labels)
            log.error("capture_spool_corrupt", **self.labels, batch=upload.batch_id,
                      lines=bad)
        nbytes = sum(len(body) for _, body in objects)
        if objects and self.budget is not None and not await self._within_budget(
                nbytes, once):
            return None
        backoff = Backoff(self.settings.retry_backoff_s, self.settings.max_backoff_s)
        refused = 0
        while True:
            try:
                if objects:
                    await asyncio.to_thread(self.destination.write, objects)
                break
            except Exception as exc:
                # A destination's bug must not end the daemon nor strand the spool: it
                # counts as a permanent failure.
                transient = isinstance(exc, DeliveryError) and exc.transient
                error = f"{type(exc).__name__}: {exc}"
                self.counters.inc("capture_upload_failures", **self.labels)
                if not transient:
                    refused += 1
                    if refused >= self.settings.upload_attempts:
                        await run_to_end(self._set_aside(upload, ids, error, refused))
                        return 0
                if once:
                    return None
                delay = backoff.next_delay()
                self._warn("capture_upload_failed", error=error, transient=transient,
                           retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)
        if objects and self.budget is not None:
            self.budget.charge(BUDGET_PRIORITY, nbytes)
        self.counters.inc("capture_uploaded", len(records), **self.labels)
        self.counters.inc("capture_objects", len(objects), **self.labels)
        count = self._count(upload)
        await run_to_end(self._acknowledged(upload, ids))
        return count

    async def _acknowledged(self, upload: Upload, ids: list[str]) -> None:
        if ids and self.on_settled is not None:
            # Before the spool forgets them: a crash in between uploads the same keys again.
            await self.on_settled(ids, "SUCCESS")
        try:
            await asyncio.to_thread(self.spool.finish_upload, upload)
        except OSError as exc:
            # Acknowledged all the same: a file left behind is uploaded again by the next
            # start, under the same keys.
            self._warn("capture_spool_delete_failed", error=_describe(exc))
        self._remove(upload.segments)

    def _prepare(self, upload: Upload) -> tuple[list[tuple[str, bytes]], list[str], int,
                                                 list[tuple[str, bytes]]]:
        """(Blocking.) An upload's records (each line with its partition), their ids, the
        count of lines that are not records (left out), and the objects to write."""
        records, ids, bad = [], [], 0
        for line in self.spool.read_lines(upload.segments):
            try:
                record, where = decode_line(line, self.device)
            except SpoolCorrupt:
                bad += 1  # only a torn disk writes these: renames make segments whole
                continue
            records.append((where, line))
            if isinstance(record.get("id"), str):
                ids.append(record["id"])
        return records, ids, bad, build_objects(upload.batch_id, records)

    def _count(self, upload: Upload) -> int:
        return sum(self._segments[n].count for n in upload.segments if n in self._segments)

    async def _set_aside(self, upload: Upload, ids: list[str], error: str,
                         attempts: int) -> None:
        if ids and self.on_settled is not None:
            await self.on_settled(ids, "FAILURE")
        count = self._count(upload)
        try:
            target = str(await asyncio.to_thread(self.spool.fail_upload, upload, error))
        except OSError as exc:
            # A disk too full even for failed/: the records go (they were refused for
            # good anyway), rather than be retried for ever.
            target = f"nowhere ({_describe(exc)}): deleted"
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.spool.finish_upload, upload)
        self._remove(upload.segments)
        self.counters.inc("capture_failed", count, **self.labels)
        log.error("capture_upload_set_aside", **self.labels, batch=upload.batch_id,
                  records=count, attempts=attempts, error=error, moved_to=target)

    async def _within_budget(self, nbytes: int, once: bool) -> bool:
        """Wait until the data budget allows ``nbytes`` (re-asked at least every 60 s
        and when it resets); False at once if ``once``."""
        assert self.budget is not None
        if self.budget.allows(BUDGET_PRIORITY, nbytes):
            return True
        self.counters.inc("capture_upload_deferred", **self.labels)
        self._warn("capture_upload_deferred", bytes=nbytes,
                   resets_in_s=round(self.budget.seconds_until_reset(), 1))
        if once:
            return False
        while True:
            reset = self.budget.seconds_until_reset()
            await asyncio.sleep(min(_BUDGET_RECHECK_S, max(reset, 0.05)))
            if self.budget.allows(BUDGET_PRIORITY, nbytes):
                return True

    def _warn(self, event: str, **fields: Any) -> None:
        self._rate_limit.warning(log, event, **self.labels, **fields)
