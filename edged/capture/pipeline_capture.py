"""Sampled capture of a pipeline's decisions: subscriber -> bounded queue -> writer ->
the capture uplink (segment spool, budget, uploads) -> S3 or disk. See docs/capture.md.

The decision path only runs the sampling policies and ``put_nowait``: it never waits
for the disk or the network. A full queue drops the new picks, counted as
``capture_dropped{pipeline,reason=queue_full}``; a full spool drops the oldest records
without an anomaly (``reason=budget``), then the oldest with one (``reason=budget_anomaly``);
a full disk drops new ones (``reason=disk_full``, see the uplink), never a decision.
A record counts as captured (``capture_records``) once its segment is on disk; it leaves
the spool only after the destination acknowledged its upload (``capture_uploaded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from edged.base import strict_json
from edged.base.durable import read_at_most, write_durably
from edged.base.metrics import Counters
from edged.base.tasks import run_to_end
from edged.capture.decision_records import Item, clock_synced, encode_record, manifest_hash
from edged.capture.destinations import Destination, DiskDestination, S3Destination
from edged.capture.policy import (
    MAX_ON_DEMAND_S,
    AnomalyPolicy,
    Pick,
    RatePolicy,
    ReservoirPolicy,
    Sampler,
)
from edged.capture.sketches import (
    DEFAULT_STEP,
    MAX_STATE_BYTES,
    STATE_FILE,
    Bins,
    Sketcher,
    encode_sketch,
    parse_state,
)
from edged.capture.uplink import Budget, CaptureUplink, Entry, UplinkSettings
from edged.config.capture import PipelineCaptureSpec, reserve_bytes
from edged.plugin.events import Event, Round

log = structlog.get_logger("edged.capture.pipeline")

#: Beside the spool: the running captures on demand, ``{"schema": 1, "requests":
#: {turbine: deadline}}`` (seconds since the epoch).
REQUESTS_FILE = "on_demand.json"
#: Its size at most: a request per turbine of 128 characters, for thousands of turbines.
MAX_REQUESTS_BYTES = 4 * 1024 * 1024
#: Why records never reach the spool: capture_dropped{pipeline,reason} (the spool's own
#: reasons: edged.capture.uplink.DROP_REASONS).
QUEUE_REASONS = ("queue_full",)
#: The writer's last upload at shutdown waits this long at most (an endpoint that hangs).
LAST_UPLOAD_S = 5.0


def build_sampler(spec: PipelineCaptureSpec) -> Sampler:
    return Sampler(
        rate=RatePolicy(spec.rate.every, mode=spec.rate.mode, seed=spec.rate.seed)
        if spec.rate else None,
        reservoir=ReservoirPolicy(spec.reservoir.size, spec.reservoir.window_s,
                                  seed=spec.reservoir.seed) if spec.reservoir else None,
        anomalies=AnomalyPolicy(spec.anomalies.before, spec.anomalies.after)
        if spec.anomalies else None,
    )


def build_destination(spec: PipelineCaptureSpec, fsync: bool, *, thing: str,
                      counters: Counters | None = None) -> Destination:
    """``thing``: the thing name the IoT credentials provider is asked for when the
    destination's ``credentials`` name none (the device's cloud thing name)."""
    dest = spec.destination
    if dest.type == "s3":
        credentials = None
        if dest.credentials is not None:
            from edged.capture.credentials import provider_from_spec

            credentials = provider_from_spec(dest.credentials, thing, counters=counters)
        return S3Destination(dest.bucket, dest.prefix.strip("/"),
                             endpoint_url=dest.endpoint_url, region=dest.region,
                             credentials=credentials)
    if dest.type == "presigned":
        from edged.capture.destinations import PresignedDestination

        return PresignedDestination(timeout_s=dest.timeout_s, put_timeout_s=dest.put_timeout_s,
                                    ca_file=dest.ca_file)
    return DiskDestination(Path(dest.path), fsync=fsync)


class PipelineCapture:
    """One pipeline's capture: a subscriber (add it to ``pipeline.subscribers``), a
    writer and an uploader loop, and the spool they share. An async context manager:
    entering opens the spool (replaying what a previous run left) and the destination."""

    def __init__(self, pipeline: str, spec: PipelineCaptureSpec, *, device: str,
                 root: Path, counters: Counters, source: Any = None,
                 destination: Destination | None = None,
                 clock: Callable[[], bool | None] = clock_synced,
                 budget: Budget | None = None, thing: str | None = None) -> None:
        self.pipeline = pipeline
        self.spec = spec
        self.device = device
        self.counters = counters
        counters.declare("capture_dropped", {"reason": QUEUE_REASONS}, pipeline=pipeline)
        self.sampler = build_sampler(spec)
        self._source = source  # the Pipeline: its backend's manifest
        fsync = spec.spool.fsync != "never"
        upload = spec.upload
        self.uplink = CaptureUplink(
            root, destination or build_destination(spec, fsync, thing=thing or device,
                                                   counters=counters),
            UplinkSettings(interval_s=upload.interval_s, max_records=upload.max_records,
                           retry_backoff_s=upload.retry_backoff_s,
                           max_backoff_s=upload.max_backoff_s,
                           upload_attempts=upload.attempts, fsync=spec.spool.fsync,
                           budget_bytes=int(spec.spool.budget_mb * 1024 * 1024),
                           min_free_bytes=reserve_bytes(spec.spool.min_free_mb)),
            device=device, counters=counters, labels={"pipeline": pipeline}, budget=budget)
        self._clock = clock
        self.queue: asyncio.Queue[Item] = asyncio.Queue(spec.spool.queue_size)
        self._models: dict[tuple[str, int], str | None] = {}
        self._last_round: tuple[Sequence[str], Sequence[float]] = ((), ())
        # Captures on demand outlive a reload or a restart: their wall-clock deadlines
        # are kept beside the spool, rewritten (in a worker thread) at every request.
        self.root = root
        self._requests_path = root / REQUESTS_FILE
        self._requests_lock = threading.Lock()
        self._requests_version = 0
        self._requests_saved = 0
        self._requests_saving: set[asyncio.Future[None]] = set()
        # Hourly sketches (edged.capture.sketches): records the decision path closed,
        # waiting for the writer; the bins of each model version met.
        self.sketcher: Sketcher | None = None
        if spec.sketches.enabled:
            groups = getattr(getattr(source, "preprocessor", None), "groups", None) or {}
            self.sketcher = Sketcher(pipeline, device, tuple(groups))
            counters.declare("sketch_records", {"final": ("true", "false")},
                             pipeline=pipeline)
            counters.declare("sketch_bins_invalid", pipeline=pipeline)
            counters.declare("sketch_state_unreadable", pipeline=pipeline)
        self._sketches: list[dict] = []
        # When the open sketch hour ends for the writer (a test steps it: FakeClock).
        self.wall_clock: Callable[[], float] = time.time
        self._bins: dict[tuple[str, int], tuple[Bins, int]] = {}

    # -- life cycle ----------------------------------------------------------------------

    async def __aenter__(self) -> PipelineCapture:
        await self.uplink.__aenter__()
        saved = await asyncio.to_thread(self._read_requests)
        self._resume_requests(saved)
        if self.sketcher is not None:
            self.sketcher.resume_from(await asyncio.to_thread(self._read_sketch_state))
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._requests_saving:
                await asyncio.gather(*self._requests_saving, return_exceptions=True)
        finally:
            await self.uplink.__aexit__(*exc)

    @property
    def destination(self) -> Destination:
        return self.uplink.destination

    # -- figures -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records in the spool not yet acknowledged by the destination (an upload in
        flight included); picks still queued for the writer are not counted."""
        return self.uplink.pending

    @property
    def pending_bytes(self) -> int:
        """Bytes of the spool's segments not yet acknowledged by the destination."""
        return self.uplink.pending_bytes

    @property
    def refusing(self) -> bool:
        """Whether the spool refuses new records now (no room, a full or failing disk)."""
        return self.uplink.refusing is not None

    def dropped(self) -> int:
        """Records this pipeline's capture dropped (``capture_dropped``, every reason)."""
        return self.counters.total("capture_dropped", pipeline=self.pipeline)

    # -- the decision path ---------------------------------------------------------------

    def on_round(self, round: Round) -> None:
        spool, features, thresholds = self.spec.spool, round.features, round.thresholds
        # The round's monotonic time, read beside its wall-clock time: a jump of their
        # difference is a step of the wall clock, not the time the round took.
        now = round.monotonic
        window = round.window if spool.include_window else None
        raw = round.raw if spool.include_rows else None
        model_io = round.model_io if spool.include_model_io else None
        picks = self.sampler.select(round.decisions, now, window, raw,
                                    round.inputs if raw is not None else (), model_io)
        self._last_round = (features, thresholds)
        if picks:
            self._enqueue(picks, (features, thresholds, self._model_info(), now, round.time))
        if self.sketcher is not None and round.decisions:
            self._sketch(round)

    def on_event(self, event: Event) -> None:
        if self.sketcher is not None:
            self.sketcher.on_event(event)

    def sketch_totals(self) -> dict[str, Any] | None:
        """The open hour's totals of the newest model version (health's ``sketch``)."""
        return self.sketcher.totals() if self.sketcher is not None else None

    def _sketch(self, round: Round) -> None:
        model = round.decisions[0].model
        bins, step = self._sketch_bins(model.name, model.version)
        sha = self._model_info().get((model.name, model.version))
        closed = self.sketcher.observe(round, bins=bins, step=step, sha=sha)  # type: ignore[union-attr]
        if closed:
            self._sketches += closed
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)  # type: ignore[arg-type]  # wakes the writer

    def _sketch_bins(self, name: str, version: int) -> tuple[Bins, int]:
        """The bins of a model version (its manifest's ``monitoring``, else the
        defaults) and the rows of each decision histogrammed (the preprocessor's step)."""
        found = self._bins.get((name, version))
        if found is not None:
            return found
        backend = getattr(self._source, "backend", None)
        manifest = getattr(backend, "manifest", None) or {}
        preprocessor = getattr(self._source, "preprocessor", None)
        step = getattr(getattr(preprocessor, "params", None), "step", None) or \
            (manifest.get("preprocessing") or {}).get("step") or DEFAULT_STEP
        features = len(getattr(preprocessor, "features", ()) or ())
        try:
            bins = Bins.from_manifest(manifest, features)
        except (KeyError, ValueError) as exc:
            self.counters.inc("sketch_bins_invalid", pipeline=self.pipeline)
            log.error("sketch_bins_invalid", pipeline=self.pipeline, model=name,
                      version=version, error=str(exc))
            bins = Bins()
        self._bins[(name, version)] = found = (bins, int(step))
        return found

    def request(self, turbine: str, duration_s: float) -> None:
        """Capture every decision of ``turbine`` (``*``: all) for ``duration_s``; the
        request is also saved, so that it goes on after a reload or a restart."""
        self.sampler.on_demand.request(turbine, time.monotonic() + duration_s)
        log.info("capture_on_demand", pipeline=self.pipeline, turbine=turbine,
                 duration_s=duration_s)
        self._save_requests()

    # -- captures on demand across restarts ----------------------------------------------

    def _save_requests(self) -> None:
        """Write the running requests' deadlines from a worker thread: the decision loop
        never waits for the fsync; of two saves racing, the newer snapshot wins."""
        self._requests_version += 1
        deadlines = self.sampler.on_demand.deadlines(time.monotonic(), time.time())
        future = asyncio.get_running_loop().run_in_executor(
            None, self._write_requests, self._requests_version, deadlines)
        self._requests_saving.add(future)
        future.add_done_callback(self._requests_saving.discard)

    def _write_requests(self, version: int, deadlines: dict[str, float]) -> None:
        body = json.dumps({"schema": 1, "requests": deadlines}, sort_keys=True).encode()
        with self._requests_lock:
            if version <= self._requests_saved:
                return
            try:
                write_durably(self._requests_path, [body], self.uplink.spool.fsync)
            except OSError as exc:
                # The request runs all the same; only a restart would forget it.
                log.warning("capture_on_demand_not_saved", pipeline=self.pipeline,
                            path=str(self._requests_path), error=str(exc))
                return
            self._requests_saved = version

    def _read_requests(self) -> dict[str, float]:
        """(Blocking.) The deadlines a previous run saved; {} when there are none, or
        when the file is unreadable (logged and counted: nothing else depends on it)."""
        try:
            data = strict_json.loads(read_at_most(self._requests_path, MAX_REQUESTS_BYTES),
                                     max_bytes=MAX_REQUESTS_BYTES, max_depth=4)
        except FileNotFoundError:
            return {}
        except (OSError, strict_json.JsonError) as exc:
            return self._unreadable(f"{type(exc).__name__}: {exc}")
        requests = data.get("requests") if isinstance(data, dict) else None
        if not isinstance(requests, dict) or data.get("schema") != 1 or not all(
                isinstance(t, str) and type(u) in (int, float)
                for t, u in requests.items()):
            return self._unreadable('expected {"schema": 1, "requests": {turbine: '
                                    'deadline in seconds since the epoch}}')
        return requests

    def _unreadable(self, reason: str) -> dict[str, float]:
        self.counters.inc("capture_on_demand_unreadable", pipeline=self.pipeline)
        log.error("capture_on_demand_unreadable", pipeline=self.pipeline,
                  path=str(self._requests_path), reason=reason)
        return {}

    def _resume_requests(self, deadlines: dict[str, float]) -> None:
        now, wall = time.monotonic(), time.time()
        resumed = {}
        for turbine, until in deadlines.items():
            remaining = min(until - wall, MAX_ON_DEMAND_S)
            if remaining > 0:
                self.sampler.on_demand.request(turbine, now + remaining)
                resumed[turbine] = round(remaining, 1)
        if resumed:
            log.info("capture_on_demand_resumed", pipeline=self.pipeline,
                     remaining_s=resumed)

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
                items = await self._next_items()
                await self.write(items)
                await self._write_sketches(self._take_sketches(self.wall_clock()))
        except asyncio.CancelledError:
            rest = self._take_queued()
            meta = (*self._last_round, self._model_info(), time.monotonic(), time.time())
            rest += [(pick, meta) for pick in self.sampler.drain()]
            if rest:
                await self.write(rest)
            if self.sketcher is not None:
                # The open hour as a partial, and beside the spool for the next start.
                now = self.wall_clock()
                closed = self._take_sketches(now)
                partial = self.sketcher.partial(now)
                await run_to_end(self._write_sketches(closed + partial,
                                                      self.sketcher.state(partial)))
            # The capture stage cancels the uploader with the writer, so what the writer
            # spooled just now (the open hour's partial sketch) would wait for the next
            # start: one attempt at it here, as CaptureStore makes when it leaves.
            await run_to_end(self._last_upload())
            raise

    async def _last_upload(self) -> None:
        """One attempt at everything spooled, within LAST_UPLOAD_S; what fails or is
        left stays in the spool for the next start."""
        try:
            async with asyncio.timeout(LAST_UPLOAD_S):
                await self.uplink.flush()
        except (TimeoutError, OSError) as exc:
            log.warning("capture_last_upload_unfinished", pipeline=self.pipeline,
                        error=f"{type(exc).__name__}: {exc}")

    async def _next_items(self) -> list[Item]:
        """The queued picks, waiting for one at most until the open sketch hour ends."""
        wait = self.sketcher.seconds_to_roll(self.wall_clock()) if self.sketcher else None
        try:
            async with asyncio.timeout(None if wait is None else wait + 0.01):
                items = [await self.queue.get()]
        except TimeoutError:
            return []
        if self.spec.spool.fsync != "always":
            items += self._take_queued()
        return [item for item in items if item is not None]

    def _take_sketches(self, now: float) -> list[dict]:
        if self.sketcher is None:
            return []
        closed, self._sketches = self._sketches + self.sketcher.roll(now), []
        return closed

    async def _write_sketches(self, records: list[dict], state: bytes | None = None) -> None:
        """Spool sketch records (kept longer, like anomalies: they are few and small);
        with ``state``, save it beside the spool for the next start to continue from."""
        if records:
            await self.uplink.write([(True, encode_sketch(r)) for r in records])
            for record in records:
                self.counters.inc("sketch_records", pipeline=self.pipeline,
                                  final="true" if record["final"] else "false")
        if state is not None:
            try:
                await asyncio.to_thread(write_durably, self.root / STATE_FILE, [state],
                                        self.uplink.spool.fsync)
            except OSError as exc:
                log.warning("sketch_state_not_saved", pipeline=self.pipeline, error=str(exc))

    def _read_sketch_state(self) -> dict[str, dict]:
        """(Blocking.) The partial sketches a previous run left; {} when there are none
        or the file is unreadable (logged: the hour then starts afresh)."""
        path = self.root / STATE_FILE
        try:
            return parse_state(strict_json.loads(read_at_most(path, MAX_STATE_BYTES),
                                                 max_bytes=MAX_STATE_BYTES, max_depth=6))
        except FileNotFoundError:
            return {}
        except (OSError, strict_json.JsonError, ValueError) as exc:
            self.counters.inc("sketch_state_unreadable", pipeline=self.pipeline)
            log.error("sketch_state_unreadable", pipeline=self.pipeline, path=str(path),
                      error=f"{type(exc).__name__}: {exc}")
            return {}

    def _take_queued(self) -> list[Item]:
        items = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not None:  # a sketch's wake-up, not a pick
                items.append(item)
        return items

    async def write(self, items: list[Item]) -> None:
        """Encode ``items`` (in a thread) and hand them to the uplink: durable in the
        spool, anomalous and other records in separate segments, within the budget."""
        if not items:
            return
        # Picks taken off the queue are written even if the writer is cancelled meanwhile.
        await run_to_end(self._encode_and_write(items))

    async def _encode_and_write(self, items: list[Item]) -> None:
        entries = await asyncio.to_thread(self._encode, items)
        await self.uplink.write(entries)

    def _encode(self, items: list[Item]) -> list[Entry]:
        synced = self._clock()
        return [(pick.decision.is_anomalous,
                 encode_record(pick, meta, self.pipeline, self.device, synced))
                for pick, meta in items]

    # -- the uploader --------------------------------------------------------------------

    async def upload_loop(self) -> None:
        """The uplink's uploader: every ``interval_s``, sooner once ``max_records`` are
        waiting; unfinished uploads of a previous run first."""
        await self.uplink.upload_loop()

    async def upload_pending(self) -> int:
        """Upload everything spooled now; return the records acknowledged."""
        return await self.uplink.upload_pending()
