"""The IoT Jobs executor: model updates from the fleet service, one execution at a time.

On every connection and every push (``notify``, ``notify-next``) it reads the thing's
pending list (``get``), describes each execution it has not seen to read its document,
leaves alone those that are not edged's (another program's jobs on the same thing: never
started, never answered), and runs the first of its own: a QUEUED one is moved to
IN_PROGRESS (an update with a step timer and ``expectedVersion``), then it goes through
the phases of :data:`edged.cloud.jobs.journal.PHASES`::

    received     the job document is parsed (a bad one is REJECTED at once)
    downloading  the bundle streams to disk, resumable, size-capped, hash-checked;
                 an expired pre-signed URL is replaced by describing the execution again
    verifying    unpack into an empty directory; signature, hashes, newer version,
                 schema and preprocessing this device's pipelines expect, golden pairs
    staging      install into a new model-store slot, load it, run the golden pairs on it
    shadow       optional: run beside the live model on live data, compare behaviour
    activating   the store's commit (the only point where the served model changes on
                 disk), then the swap in every pipeline between two decisions
    reporting    the outcome is decided; send it until the service acknowledges it

Each phase is saved in the journal before its side effects, and a progress update
(statusDetails: phase, model, bytes, time per phase) goes out as it starts; while the
phases run, the step timer is renewed every third of its length, so a long step (a shadow
trial of an hour) never lets the service time the execution out. On restart a decided
outcome is reported first and never decided again; an execution cut short is resumed
where it stopped; the model store, whose commit is one rename, guarantees the old model
or the new one is served meanwhile, never none.

Every request the service refuses as ``RequestThrottled`` or ``InternalError``, or leaves
unanswered, is asked again after a pause drawn by :mod:`edged.base.retry` (AWS's own
device client's policy: 10 s doubling to 640 s, full jitter). An execution the service
says is gone (``InvalidStateTransition``, ``TerminalStateReached``, ``ResourceNotFound``)
stops the work at once.

Outcomes: SUCCEEDED; REJECTED for what retrying cannot fix (a refused bundle or
document); FAILED for what may work later (network, S3, disk, a shadow trial that did
not pass, which the job's abort criteria can count to stop a rollout).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import structlog

from edged.base.errors import EdgedError
from edged.base.metrics import Counters
from edged.base.retry import Backoff
from edged.base.tasks import cancel_and_wait
from edged.cloud.jobs import protocol
from edged.cloud.jobs.client import JobsClient, JobsRejected
from edged.cloud.jobs.document import (
    OPERATION,
    JobDocument,
    document_of,
    is_ours,
    needs_fresh_url,
    parse_document,
    terminal_status,
)
from edged.cloud.jobs.download import DownloadError, ExpiredUrl, fetch_bundle
from edged.cloud.jobs.journal import JobRecord, Journal
from edged.cloud.jobs.protocol import (
    GONE_CODES,
    TRANSIENT_CODES,
    ExecutionState,
    JobDocumentError,
    JobExecution,
    JobsProtocolError,
)
from edged.model.bundle import (
    BundleError,
    ModelExpectation,
    TrustStore,
    extract_bundle,
    verify_bundle,
)
from edged.model.errors import SwapError
from edged.model.package import ModelManifest
from edged.model.shadow import ShadowLimits, ShadowReport, ShadowTrial
from edged.model.store import ModelStore
from edged.mqtt.link import BrokerLink, Received
from edged.runtime.pipeline import Pipeline
from edged.runtime.swap import BuildPreprocessor, Candidate, commit_swap, prepare_swap

log = structlog.get_logger("edged.cloud.jobs")

T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """How long the executor waits. AWS's own figures by default; a test compresses
    them, telling its jobs service the same (``tests/support/jobs_peer.py``)."""

    #: The backoff of every request asked again (edged.base.retry, full jitter): AWS's
    #: device client's, from 10 s doubling to 640 s.
    backoff_s: tuple[float, float] = (10.0, 640.0)
    #: How long a minute of a step timer lasts.
    minute_s: float = 60.0
    #: How a backoff is waited (a test records the delays drawn).
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep

    def renew_every_s(self, step_timeout_minutes: int) -> float:
        """How often the step timer of a running execution is renewed: every third of
        it, so that a renewal lost or throttled still leaves time for another."""
        return step_timeout_minutes * self.minute_s / 3


#: The timing of every executor built without one (the daemon's).
TIMING = Timing()
#: Jobs that are not edged's, remembered (by id) so each is described and counted once.
LEFT_ALONE_REMEMBERED = 1024

#: Awaited with the phase's name right after each phase is saved in the journal, before
#: its first side effect: a test pauses there to kill the process at that phase.
PhaseHook = Callable[[str], Awaitable[None]]
#: How many times one execution describes itself for a fresh URL before it FAILS.
URL_REFRESHES = 3


class JobGone(EdgedError):
    """The execution is no longer ours to run (cancelled, removed, timed out, deleted):
    ``code`` is the service's refusal that said so, ``state`` the state it sent."""

    def __init__(self, reason: str, code: str | None = None,
                 state: ExecutionState | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.state = state


class ShadowFailed(EdgedError):
    """The candidate behaved unlike the live model on live data."""

    def __init__(self, report: ShadowReport) -> None:
        super().__init__(report.reason or "the shadow trial did not pass")
        self.report = report


@dataclass
class _Run:
    """One execution in this process: its record and what lives only in memory."""

    record: JobRecord
    version: int | None  # the execution's versionNumber, for expectedVersion
    bytes: int = 0
    entered: float = field(default_factory=time.monotonic)  # start of the current phase
    candidates: list[tuple[Pipeline, Candidate]] = field(default_factory=list)
    work: asyncio.Task | None = None  # the phases, cancelled if the execution is gone
    gone: str | None = None  # why the execution is no longer ours
    renewed: float = field(default_factory=time.monotonic)  # the step timer's last start
    updating: asyncio.Lock = field(default_factory=asyncio.Lock)  # one update at a time


class JobsExecutor:
    """Runs deploy-model executions for the pipelines that serve a store model.

    ``pipelines`` maps each pipeline that jobs may update to the preprocessor factory a
    new model's preprocessing is built with; ``on_phase`` (tests) see :data:`PhaseHook`;
    ``timing`` (tests) see :class:`Timing`."""

    def __init__(self, config: Any, *, link: BrokerLink, thing: str,
                 pipelines: dict[Pipeline, BuildPreprocessor], stores: dict[str, str],
                 state_dir: Path, trust: TrustStore, counters: Counters,
                 on_phase: PhaseHook | None = None, timing: Timing | None = None) -> None:
        self.config = config  # edged.cloud.link.JobsConfig
        self.thing = thing
        self.pipelines = pipelines
        self.stores = stores  # pipeline name -> the name of its store model
        self.state_dir = Path(state_dir)
        self.trust = trust
        self.counters = counters
        self.timing = timing or TIMING
        self.client = JobsClient(link, thing, counters, timeout_s=config.request_timeout_s)
        self.journal = Journal(self.state_dir / "jobs")
        self.work_root = self.state_dir / "jobs" / "work"
        self._wake = asyncio.Event()
        self._announced = asyncio.Event()  # a push leaves out the job that runs
        self._connected = asyncio.Event()  # set by every new connection
        self._running: _Run | None = None
        self._left_alone: OrderedDict[str, None] = OrderedDict()
        self._on_phase = on_phase

    # -- the cloud link's service interface ------------------------------------------

    @property
    def job_in_progress(self) -> dict[str, Any] | None:
        """The execution running now, as the dashboard shows it; None between jobs."""
        run = self._running
        if run is None:
            return None
        record = run.record
        return {"job_id": record.job_id, "model": record.model, "version": record.version,
                "phase": record.phase, "bytes": run.bytes, "started_at": record.started_at}

    async def subscribe(self, client: aiomqtt.Client) -> None:
        await self.client.subscribe(client)
        self._connected.set()
        self._wake.set()  # read the pending list on every connection: jobs queued while away

    def dispatch(self, message: Received) -> None:
        named = self.client.dispatch(message)
        if named is None:
            return
        self._wake.set()
        running = self._running
        if running is not None and running.record.job_id not in named:
            self._announced.set()  # a push that leaves our job out: is it still on?

    async def run(self) -> None:
        backoff = Backoff(*self.timing.backoff_s)
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while await self._next():
                    pass
                backoff.reset()
            except (TimeoutError, JobsProtocolError, JobsRejected) as exc:
                _raise_if_cancelled()
                # Refused for good, or nonsense: ask again later, never at once.
                delay = backoff.next_delay()
                log.warning("jobs_service_unavailable", error=repr(exc),
                            retry_in_s=round(delay, 1))
                await self._pause(delay)
                self._wake.set()

    # -- asking the service ----------------------------------------------------------

    async def _ask(self, request: str, job: str | None,
                   call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, asked again while the service answers ``RequestThrottled`` or
        ``InternalError``, answers nonsense or nothing at all, after the backoff's pause
        (10 s doubling to 640 s, full jitter). Any other refusal is raised."""
        backoff = Backoff(*self.timing.backoff_s)
        while True:
            try:
                return await call()
            except JobsRejected as exc:
                if exc.code not in TRANSIENT_CODES:
                    raise
                error: Exception = exc
                code = exc.code
            except (TimeoutError, JobsProtocolError) as exc:
                _raise_if_cancelled()
                error, code = exc, type(exc).__name__
            delay = backoff.next_delay()
            self.counters.inc("jobs_requests_retried", request=request, code=code)
            log.warning("jobs_request_retry", request=request, job=job, error=str(error),
                        attempt=backoff.failures, retry_in_s=round(delay, 1))
            await self._pause(delay)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the link connects anew meanwhile (a device back
        online asks at once rather than at the end of a long backoff)."""
        self._connected.clear()
        sleep = asyncio.ensure_future(self.timing.sleep(seconds))
        connected = asyncio.ensure_future(self._connected.wait())
        try:
            await asyncio.wait((sleep, connected), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleep, connected):
                await cancel_and_wait(task)

    async def _describe(self, job_id: str) -> JobExecution:
        """The execution, its document freshly signed; JobGone if the service says it
        has ended or was deleted."""
        try:
            return await self._ask("describe", job_id, lambda: self.client.describe(job_id))
        except JobsRejected as exc:
            if exc.code in GONE_CODES:
                raise JobGone(str(exc), exc.code, exc.state) from None
            raise

    # -- one execution ------------------------------------------------------------------

    async def _next(self) -> bool:
        """Do the next thing there is: report a decided outcome, resume the execution
        of the journal, or start the first pending one of ours. False when nothing is
        left to do until the next push or connection."""
        record = self.journal.load()
        if record is not None and record.outcome is not None and record.refused is None:
            # Decided, not yet accepted: say it before anything else, never decide again.
            await self._report(_Run(record, None))
            return True
        pending = await self._ask("get", None, self.client.pending)
        if record is not None and record.job_id not in {e.job_id for e in pending}:
            self._abandon(record)  # it ended (timed out, cancelled) while we were away
            record = None
        if record is not None and record.refused is not None:
            # Its report was refused for good: it is never run again, and it holds back
            # the next until the service ends it (its step timer runs out).
            return False
        if record is not None:  # the journal's execution first
            pending.sort(key=lambda execution: execution.job_id != record.job_id)
        for summary in pending:
            if summary.job_id in self._left_alone:
                continue
            try:
                execution = await self._describe(summary.job_id)
            except JobGone:
                continue  # ended since the list was read
            if not is_ours(execution.job_document):
                self._leave_alone(execution)
                continue
            resumed = record if record is not None and record.job_id == execution.job_id \
                else None
            await self._execute(execution, resumed)
            return True
        if record is None:
            self._clean_work()
        return False

    def _leave_alone(self, execution: JobExecution) -> None:
        """Another program's job on this thing: never started, never answered."""
        if len(self._left_alone) >= LEFT_ALONE_REMEMBERED:
            self._left_alone.popitem(last=False)
        self._left_alone[execution.job_id] = None
        document = execution.job_document
        operation = document.get("operation") if isinstance(document, dict) else None
        self.counters.inc("jobs_left_alone")
        log.info("job_left_alone", job=execution.job_id, operation=repr(operation)[:80],
                 reason=f"not an {OPERATION} job")

    async def _execute(self, execution: JobExecution, record: JobRecord | None) -> None:
        if record is None:
            record = self._new_record(execution)
            self.counters.inc("jobs_started")
            log.info("job_started", job=record.job_id, model=record.model,
                     version=record.version)
            await self._phase_hook("received")
        else:
            record.resumed += 1
            self.counters.inc("jobs_resumed")
            log.info("job_resumed", job=record.job_id, phase=record.phase,
                     resumed=record.resumed)
        run = _Run(record, execution.version_number)
        if record.outcome is None:
            self._running = run
            try:
                if execution.status == "QUEUED":  # ours now: IN_PROGRESS, a step timer
                    await self._ask("update", record.job_id, lambda: self._update(
                        run, "IN_PROGRESS", self._details(record)))
                details = await self._guarded(run)
                record.outcome = {"status": "SUCCEEDED", "details": details}
            except JobGone as exc:
                self.counters.inc("jobs_gone")
                log.warning("job_gone", job=record.job_id, phase=record.phase,
                            reason=str(exc))
                self._finish()
                return
            except Exception as exc:
                _raise_if_cancelled()  # stopping is not a failure: the journal resumes it
                record.outcome = self._failure(record, exc)
            finally:
                self._running = None
                await self._close_candidates(run)
            self._tick(run)
            record.phase = "reporting"
            self.journal.save(record)
            await self._phase_hook("reporting")
        await self._report(run)

    async def _guarded(self, run: _Run) -> dict[str, str]:
        """Run the phases as a task that stops as soon as the execution is found gone
        (cancelled, removed, timed out, deleted): by a rejected update, or by describing
        it when a push leaves it out. Meanwhile the step timer is renewed. Raises
        JobGone then."""
        self._announced.clear()  # a push from before this job began says nothing of it
        run.work = asyncio.create_task(self._work(run), name="edged[jobs].work")
        helpers = [asyncio.create_task(self._watch(run), name="edged[jobs].watch"),
                   asyncio.create_task(self._keep_alive(run), name="edged[jobs].renew")]
        try:
            return await run.work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if run.gone is None or (current is not None and current.cancelling()):
                raise  # the daemon is stopping: the journal resumes the job
            raise JobGone(run.gone) from None
        finally:
            for task in (run.work, *helpers):
                await cancel_and_wait(task)

    async def _watch(self, run: _Run) -> None:
        """Describe the execution once each time a push leaves it out: gone (ended or
        deleted) stops the work; busy or unanswered waits the backoff (inside _ask)."""
        while True:
            await self._announced.wait()
            self._announced.clear()
            try:
                execution = await self._describe(run.record.job_id)
            except JobGone as exc:
                self._gone(run, str(exc))
                return
            except JobsRejected as exc:  # refused for good: the next update will tell
                log.warning("job_describe_refused", job=run.record.job_id, error=str(exc))
                continue
            if execution.status in protocol.TERMINAL_STATUSES:
                self._gone(run, f"the execution is {execution.status}")
                return

    async def _keep_alive(self, run: _Run) -> None:
        """Renew the step timer while the phases run: an IN_PROGRESS update whenever
        none has started it for a third of its length (a long download, a shadow trial
        of an hour), so the service never times a working device out."""
        every = self.timing.renew_every_s(self.config.step_timeout_minutes)
        backoff = Backoff(*self.timing.backoff_s)
        while True:
            wait = run.renewed + every - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                await self._update(run, "IN_PROGRESS", self._details(run.record))
                backoff.reset()
            except JobGone as exc:
                self._gone(run, str(exc))
                return
            except (TimeoutError, JobsRejected, JobsProtocolError) as exc:
                _raise_if_cancelled()
                # Again before the timer runs out, however long the backoff has grown.
                delay = min(backoff.next_delay(), every)
                log.warning("job_step_timer_not_renewed", job=run.record.job_id,
                            error=str(exc), retry_in_s=round(delay, 1))
                await self._pause(delay)

    def _gone(self, run: _Run, reason: str) -> None:
        """Stop the work for an execution that is no longer ours. Once the commit
        has begun it runs to its end (it is short): the report then finds the
        execution terminal and says nothing."""
        if run.gone is None and run.record.phase not in ("activating", "reporting"):
            run.gone = reason
            if run.work is not None:
                run.work.cancel()

    def _new_record(self, execution: JobExecution) -> JobRecord:
        document = execution.job_document or {}
        model = document.get("model") if isinstance(document, dict) else None
        name = model.get("name") if isinstance(model, dict) else None
        version = model.get("version") if isinstance(model, dict) else None
        record = JobRecord(
            job_id=execution.job_id, execution_number=execution.execution_number,
            model=name if isinstance(name, str) else "",
            version=version if type(version) is int else 0,
            document=document if isinstance(document, dict) else {}, url_at=time.time())
        try:
            document_of(execution)
        except JobDocumentError as exc:
            # Decided before anything runs, and saved so: a restart reports it, never
            # runs it.
            record.outcome = self._failure(record, exc)
            record.phase = "reporting"
        self.journal.save(record)
        return record

    async def _work(self, run: _Run) -> dict[str, str]:
        """Every phase up to the commit; returns the success details."""
        record = run.record
        document = parse_document(record.document)
        targets = self._targets(document)
        store = ModelStore.for_model(self.state_dir, document.model.name)
        current = await asyncio.to_thread(store.current)
        if record.slot is not None and current is not None and current.name == record.slot:
            # The commit happened before a restart: the new model is already serving.
            return self._success(run, None, committed_before=True)
        bundle = self.work_root / record.job_id / "bundle.tar.gz"
        if record.phase in ("received", "downloading") or not bundle.exists():
            await self._enter(run, "downloading")
            await self._download(run, document, bundle)
        await self._enter(run, "verifying")
        model_dir = await asyncio.to_thread(self._verify, bundle, document, targets,
                                            current.version if current else None)
        await self._enter(run, "staging")
        for pipeline in targets:
            candidate = await prepare_swap(pipeline, model_dir, store,
                                           build_preprocessor=self.pipelines[pipeline])
            run.candidates.append((pipeline, candidate))
        record.slot = run.candidates[0][1].slot.name
        self.journal.save(record)
        previous = targets[0].backend.model.version
        if not document.options.activate:
            await self._close_candidates(run)
            return self._success(run, previous, activated=False)
        if document.options.shadow_decisions and record.shadow is None:
            await self._enter(run, "shadow")
            await self._shadow(run, document)
        await self._enter(run, "activating")
        while run.candidates:
            pipeline, candidate = run.candidates[0]
            await commit_swap(pipeline, candidate, store)
            run.candidates.pop(0)
        await asyncio.to_thread(store.remove_unused)
        return self._success(run, previous)

    def _targets(self, document: JobDocument) -> list[Pipeline]:
        targets = [p for p in self.pipelines if self.stores[p.name] == document.model.name]
        if not targets:
            served = sorted(set(self.stores.values()))
            raise BundleError("incompatible", f"no pipeline here runs model "
                              f"{document.model.name!r} from its store (served: {served})")
        if document.bundle.size > self.config.max_bundle_bytes:
            raise BundleError("too_large", f"the bundle is {document.bundle.size} bytes, "
                              f"this device accepts at most {self.config.max_bundle_bytes}")
        return targets

    async def _download(self, run: _Run, document: JobDocument, bundle: Path) -> None:
        record = run.record
        bundle.parent.mkdir(parents=True, exist_ok=True)
        run.bytes = record.bytes
        reporter = asyncio.create_task(self._report_download(run, document.bundle.size))
        try:
            for refresh in range(URL_REFRESHES + 1):
                url = document.bundle.url
                if refresh or needs_fresh_url(url) or \
                        time.time() - record.url_at > self.config.url_lifetime_s:
                    document = await self._fresh_document(run, document)
                    url = document.bundle.url
                try:
                    await fetch_bundle(
                        url, bundle, size=document.bundle.size, sha256=document.bundle.sha256,
                        on_progress=lambda n: setattr(run, "bytes", n),
                        timeout_s=self.config.download_timeout_s,
                        attempts=self.config.download_attempts, ca_file=self.config.ca_file)
                    record.bytes = run.bytes = document.bundle.size
                    return
                except ExpiredUrl:
                    log.info("bundle_url_expired", job=record.job_id, refresh=refresh + 1)
            raise DownloadError("expired_url", f"the bundle URL was refused after "
                                f"{URL_REFRESHES} fresh ones")
        finally:
            # Its cancellation can be swallowed mid-update (see edged.base.tasks):
            # a plain cancel-and-gather then waited forever on a cancelled job.
            await cancel_and_wait(reporter)

    async def _fresh_document(self, run: _Run, old: JobDocument) -> JobDocument:
        """Describe the execution again: the service signs the bundle URL anew."""
        execution = await self._describe(run.record.job_id)
        document = parse_document(document_of(execution))
        if (document.bundle.sha256, document.bundle.size, document.model) != \
                (old.bundle.sha256, old.bundle.size, old.model):
            raise JobDocumentError("malformed", "the job document changed while the job "
                                   "ran (another bundle or model)")
        if document.needs_fresh_url:
            raise JobDocumentError("malformed", "bundle.url holds a pre-signed URL "
                                   "placeholder that the jobs service did not resolve")
        run.record.document = execution.job_document or {}
        run.record.url_at = time.time()
        self.journal.save(run.record)
        return document

    async def _report_download(self, run: _Run, size: int) -> None:
        reported = run.bytes
        while True:
            await asyncio.sleep(self.config.progress_interval_s)
            if run.bytes != reported:
                reported = run.record.bytes = run.bytes
                self.journal.save(run.record)
                try:
                    await self._progress(run, bytes=reported, size=size)
                except JobGone as exc:
                    self._gone(run, str(exc))
                    return

    def _verify(self, bundle: Path, document: JobDocument, targets: list[Pipeline],
                installed: int | None) -> Path:
        """Unpack and verify (blocking). Returns the verified model directory."""
        directory = bundle.parent / "model"
        shutil.rmtree(directory, ignore_errors=True)  # a half-unpacked one from before
        extract_bundle(bundle, directory)
        live = ModelManifest.model_validate(targets[0].backend.manifest)
        installed = max(installed or 0, live.version)
        manifest = verify_bundle(directory, self.trust, installed_version=installed,
                                 expect=ModelExpectation.from_manifest(live))
        if (manifest.name, manifest.version) != (document.model.name, document.model.version):
            raise BundleError("incompatible", f"the bundle holds {manifest.name} version "
                              f"{manifest.version}, the job names {document.model.name} "
                              f"version {document.model.version}")
        return directory

    async def _shadow(self, run: _Run, document: JobDocument) -> None:
        pipeline, candidate = run.candidates[0]
        limits = ShadowLimits.from_manifest(candidate.backend.manifest)
        trial = ShadowTrial(candidate.preprocessor or pipeline.preprocessor,
                            candidate.backend, document.options.shadow_decisions, limits)
        try:
            async with asyncio.timeout(self.config.shadow_timeout_s):
                report = await pipeline.run_shadow(trial)
        except TimeoutError:
            _raise_if_cancelled()
            raise TimeoutError(f"the shadow trial did not see "
                               f"{document.options.shadow_decisions} decisions in "
                               f"{self.config.shadow_timeout_s:g} s") from None
        run.record.shadow = report.details()
        self.journal.save(run.record)
        log.info("shadow_trial_done", job=run.record.job_id, passed=report.passed,
                 **report.details())
        if not report.passed:
            raise ShadowFailed(report)

    async def _close_candidates(self, run: _Run) -> None:
        while run.candidates:
            _, candidate = run.candidates.pop()
            await candidate.close()

    # -- phases, progress and outcome ------------------------------------------------

    def _tick(self, run: _Run) -> None:
        now = time.monotonic()
        phase = run.record.phase
        run.record.timers[phase] = run.record.timers.get(phase, 0.0) + now - run.entered
        run.entered = now

    async def _enter(self, run: _Run, phase: str) -> None:
        if run.gone is not None:
            # Its cancellation was swallowed (see edged.base.tasks): stop here, at
            # the latest before the commit.
            raise asyncio.CancelledError
        self._tick(run)
        run.record.phase = phase
        self.journal.save(run.record)  # before the phase's first side effect
        await self._phase_hook(phase)
        await self._progress(run)

    async def _phase_hook(self, phase: str) -> None:
        if self._on_phase is not None:
            await self._on_phase(phase)

    def _details(self, record: JobRecord, **extra: Any) -> dict[str, str]:
        details: dict[str, Any] = {"phase": record.phase, "model": record.model,
                                   "version": record.version}
        if record.resumed:
            details["resumed"] = record.resumed
        details |= {f"t:{phase}": f"{seconds:.3f}" for phase, seconds in record.timers.items()}
        details |= record.shadow or {}
        details |= extra
        return {key: str(value) for key, value in details.items()}

    async def _progress(self, run: _Run, **extra: Any) -> None:
        """An IN_PROGRESS update with a fresh step timer. One not sent is not fatal (the
        step timer's renewal tries again, the next update corrects the version); a job
        that is gone stops the work."""
        try:
            await self._update(run, "IN_PROGRESS", self._details(run.record, **extra))
        except (TimeoutError, JobsRejected, JobsProtocolError) as exc:
            _raise_if_cancelled()
            log.warning("job_progress_not_sent", job=run.record.job_id, error=str(exc))

    async def _update(self, run: _Run, status: str, details: dict[str, str]) -> None:
        """One update of the execution (IN_PROGRESS ones start the step timer anew).
        JobGone if the service says the execution has ended or was deleted; a
        ``VersionMismatch`` whose state shows our own update (its reply was lost) counts
        as done, another one is tried again on the current version."""
        clamped = protocol.clamp_status_details(details)
        if clamped.changed:
            self.counters.inc("jobs_status_details_clamped")
        async with run.updating:
            for _ in range(3):
                try:
                    state = await self.client.update(
                        run.record.job_id, status, clamped.details, run.version,
                        self.config.step_timeout_minutes if status == "IN_PROGRESS" else None)
                    run.version = state.version_number if state else None
                    if status == "IN_PROGRESS":
                        run.renewed = time.monotonic()
                    return
                except JobsRejected as exc:
                    state = exc.state
                    if exc.code in GONE_CODES:
                        raise JobGone(str(exc), exc.code, state) from None
                    if exc.code != "VersionMismatch" or state is None:
                        raise
                    if state.status in protocol.TERMINAL_STATUSES:
                        raise JobGone(f"the execution is {state.status}", exc.code,
                                      state) from None
                    run.version = state.version_number
                    if state.status == status and state.status_details == clamped.details:
                        return  # our own update; its reply was lost
        raise JobsRejected("VersionMismatch", "the version kept moving", None)

    async def _report(self, run: _Run) -> None:
        """Send the decided outcome until the service accepts it (asked again while it
        is busy or silent, however long that takes: the outcome stays in the journal).
        A refusal for good is counted and logged: an execution gone meanwhile is
        forgotten; one whose report the service will not take (InvalidRequest...) is
        sent once more with only its phase and reason, then kept in the journal as
        refused, never run again."""
        record = run.record
        outcome = record.outcome or {}
        status, details = outcome["status"], outcome["details"]
        essential = {k: v for k, v in details.items() if k in ("phase", "reason")}
        for attempt in (details, essential):
            try:
                await self._ask("update", record.job_id,
                                lambda attempt=attempt: self._update(run, status, attempt))
            except JobGone as exc:
                if exc.state is not None and exc.state.status == status:
                    break  # our own report, whose reply was lost: it was taken
                self._refused(record, exc.code or "gone", str(exc), keep=False)
                return
            except JobsRejected as exc:
                if attempt is details and essential != details:
                    log.warning("job_report_refused_retrying_essentials",
                                job=record.job_id, error=str(exc))
                    continue
                self._refused(record, exc.code, str(exc), keep=True)
                return
            break
        self.counters.inc("jobs_finished", status=status)
        log.info("job_finished", job=record.job_id, status=status, **details)
        self._finish()

    def _refused(self, record: JobRecord, code: str, error: str, *, keep: bool) -> None:
        """The service will never take this report. Never run the job again: forget it
        if it is gone, else keep it in the journal as refused until the service ends
        it."""
        self.counters.inc("jobs_reports_refused", code=code)
        log.error("job_report_refused", job=record.job_id, code=code, error=error,
                  status=(record.outcome or {}).get("status"),
                  kept_until_it_ends=keep)
        if keep:
            record.refused = code
            self.journal.save(record)
        else:
            self._finish()

    def _success(self, run: _Run, previous: int | None, *, activated: bool = True,
                 committed_before: bool = False) -> dict[str, str]:
        self._tick(run)  # the last phase's time belongs in the report
        record = run.record
        extra: dict[str, Any] = {"slot": record.slot, "activated": str(activated).lower()}
        if previous is not None:
            extra["previousVersion"] = previous
        if committed_before:
            extra["note"] = "committed before a restart"
        return self._details(record, **extra) | {"phase": "done"}

    def _failure(self, record: JobRecord, exc: Exception) -> dict[str, Any]:
        status = terminal_status(exc)
        if isinstance(exc, SwapError):  # the bundle does not fit this pipeline
            status = "REJECTED"
        reason = getattr(exc, "reason", None) or _reason(exc)
        # By reason, as it is decided: jobs_finished counts the report, maybe a life later.
        self.counters.inc("jobs_failed", status=status, reason=reason)
        details = self._details(record, reason=reason, detail=str(exc) or type(exc).__name__)
        log.error("job_failed", job=record.job_id, status=status, phase=record.phase,
                  reason=reason, error=str(exc))
        return {"status": status, "details": details}

    def _abandon(self, record: JobRecord) -> None:
        """The journal's execution is no longer pending: it ended (its step timer ran
        out, it was cancelled or deleted) while the device was away or its report
        refused."""
        log.warning("job_abandoned", job=record.job_id, phase=record.phase,
                    refused=record.refused)
        self._finish()

    def _finish(self) -> None:
        self.journal.clear()
        self._clean_work()

    def _clean_work(self) -> None:
        """Remove downloads and unpacked bundles (only called with no job in the
        journal, so nothing there is needed)."""
        shutil.rmtree(self.work_root, ignore_errors=True)


def _raise_if_cancelled() -> None:
    """Stop a retry loop whose task is being cancelled. ``asyncio.timeout`` turns a
    cancellation that lands as it expires into TimeoutError, and aiomqtt may report it
    as a failed publish: a loop that retries those must not swallow the daemon's stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _reason(exc: Exception) -> str:
    if isinstance(exc, ShadowFailed):
        return "shadow_failed"
    if isinstance(exc, DownloadError):
        return exc.reason
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        return "disk" if exc.errno is not None else "io"
    return "internal"
