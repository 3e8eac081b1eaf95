"""One pipeline: readings -> ring buffers -> batched preprocessing and inference ->
decisions -> subscribers (actuator bindings, capture, cloud alarms, the demo's view),
each handed one :class:`~edged.plugin.events.Round` per round.

Three loops, all owned by the supervisor's task group: ``ingest`` drains the bounded
reading queue into the buffers, ``decide`` runs every ``interval_s`` over every turbine
with new data, ``watch`` raises ``sensor_stale`` / ``sensor_recovered`` and evicts
turbines silent for ``evict_after_s``.

Turbine ids come from outside, so none may hold a slot for good: a turbine silent for
``evict_after_s`` loses it, and when every slot is taken a new turbine takes the slot of
the longest-silent stale one (silent over ``stale_after_s``) at once. An evicted turbine
that comes back is new: empty history, no ``sensor_recovered``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from typing import TYPE_CHECKING, Protocol

import numpy as np
import structlog

from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.config import PipelineSpec
from edged.plugin.components import InferenceBackend, Preprocessor, Readings, Scores
from edged.plugin.events import Decision, Event, EventKind, ModelIO, Round
from edged.plugin.rows import MAX_TURBINE_ID
from edged.runtime.buffers import TurbineBuffers
from edged.runtime.latency import LatencyRing
from edged.runtime.queues import BoundedQueue

if TYPE_CHECKING:
    from edged.model.shadow import ShadowReport, ShadowTrial

log = structlog.get_logger("edged.pipeline")
#: The golden ratio's fractional part: slot i's phase is i * _PHASE_STEP mod 1 of the
#: interval, which spreads any number of consecutive slots evenly (no two bunch up).
_PHASE_STEP = 0.6180339887498949

#: Most turbines one round decides: when more are due at once (every history filling up
#: together at start, a fleet behind after a pause), the most overdue go first and the rest
#: in the rounds right after. A round's arrays (histories, windows, model outputs: about
#: 30 kB a turbine) stay this size whatever the fleet's: at 1,000 turbines, 7 MB at
#: start instead of 28.
MAX_ROUND_TURBINES = 256

#: Most sensor_stale (and as many sensor_recovered) events one watch raises turbine by
#: turbine; the rest go in one event for turbine "*" with detail {"turbines": n}, so a
#: thousand ghosts (or a whole farm behind one lost link) make two messages, not 1,000.
MAX_SENSOR_EVENTS = 10
SUMMARY_TURBINE = "*"

#: Why the pipeline rejects rows: rows_rejected{pipeline,reason}.
REJECT_REASONS = ("wrong_width", "wrong_length", "not_finite", "bad_turbine_id",
                  "too_many_turbines")
#: Why turbines lose their slots: turbines_evicted{pipeline,reason}.
EVICT_REASONS = ("full", "silent")

# What a row's slot is, when it has none.
_UNKNOWN = -1  # a turbine without a slot (after a claim: no room for it)
_NOT_FINITE = -2
_BAD_ID = -3


class Subscriber(Protocol):
    """What a pipeline hands its decisions and sensor events to, on the event loop and
    in the decision path: neither call may block."""

    def on_round(self, round: Round) -> None: ...

    def on_event(self, event: Event) -> None: ...


class Pipeline:
    max_round = MAX_ROUND_TURBINES

    def __init__(self, name: str, spec: PipelineSpec, preprocessor: Preprocessor,
                 backend: InferenceBackend, counters: Counters) -> None:
        self.name = name
        self.spec = spec
        # One reference to the pair, read once per round: a swap between two rounds can
        # never give a round one model's preprocessor and another's backend.
        self._stage: tuple[Preprocessor, InferenceBackend] = (preprocessor, backend)
        self._rounds: set[asyncio.Future] = set()  # model calls in flight
        # A shadow trial and the stage it shadows; only rounds of that stage feed it.
        self._shadow: tuple[ShadowTrial, tuple[Preprocessor, InferenceBackend]] | None = None
        self._observing: set[asyncio.Future] = set()  # shadow observations queued
        self.counters = counters
        # Listed at 0 from the start (/metrics): a zero apart from a counter not wired.
        counters.declare("rows_rejected", {"reason": REJECT_REASONS}, pipeline=name)
        counters.declare("turbines_evicted", {"reason": EVICT_REASONS}, pipeline=name)
        for counter in ("rows_accepted", "batches_dropped", "rounds_failed", "sensor_stale",
                        "sensor_recovered"):
            counters.declare(counter, pipeline=name)
        self.queue: BoundedQueue[Readings] = BoundedQueue(
            f"pipeline.{name}", spec.queue.size, spec.queue.overflow
        )
        # A raw ring beside the features only for a capture that records raw rows.
        keep_raw = spec.capture is not None and spec.capture.spool.include_rows
        # The model's input and output, kept past scoring only for such a capture too.
        # (Sketches histogram the model's input: they need it too.)
        self._keep_model_io = spec.capture is not None and (
            spec.capture.spool.include_model_io or spec.capture.sketches.enabled)
        self.buffers = TurbineBuffers(
            preprocessor.history, len(preprocessor.features), spec.max_turbines,
            inputs=len(preprocessor.inputs) if keep_raw else 0,
        )
        self.subscribers: list[Subscriber] = []
        # Decision.time and event times; replaceable so a test can step the wall clock.
        self.wall_clock: Callable[[], float] = time.time
        # Rows' arrival, schedules, staleness and eviction; replaceable so a test steps
        # time instead of sleeping through intervals and stale_after_s.
        self.monotonic_clock: Callable[[], float] = time.monotonic
        self._decided_at = np.zeros(0, dtype=np.int64)  # buffers.count at the last decision
        self._due_at = np.zeros(0)  # monotonic time each turbine is next due; -1: unset
        self._wake = asyncio.Event()  # set by ingest: rows arrived
        self._executor: ThreadPoolExecutor | None = None  # None: the default executor
        self._stale: set[int] = set()
        self._silent_since: dict[int, float] = {}  # stale slot -> time of its last row
        self._rate_limit = RateLimit()
        self.latency = LatencyRing()  # each round's model call, for health reports
        self._group_names = tuple(preprocessor.groups)
        self._group_index = [np.array(ix) for ix in preprocessor.groups.values()]

    @property
    def preprocessor(self) -> Preprocessor:
        return self._stage[0]

    @preprocessor.setter
    def preprocessor(self, preprocessor: Preprocessor) -> None:
        self._restage((preprocessor, self._stage[1]))

    @property
    def backend(self) -> InferenceBackend:
        return self._stage[1]

    @backend.setter
    def backend(self, backend: InferenceBackend) -> None:
        self._restage((self._stage[0], backend))

    @property
    def shadow(self) -> ShadowTrial | None:
        """The shadow trial attached now, if any."""
        return None if self._shadow is None else self._shadow[0]

    def _restage(self, stage: tuple[Preprocessor, InferenceBackend]) -> None:
        self._stage = stage
        if self._shadow is not None:
            # The trial compares a candidate with the model it was attached beside.
            self._shadow[0].abort("model swapped during shadow")
            self._shadow = None

    async def swap_model(self, backend: InferenceBackend,
                         preprocessor: Preprocessor | None = None
                         ) -> tuple[Preprocessor, InferenceBackend]:
        """Replace the backend (and preprocessor) between two rounds: rounds already
        running finish on the old pair, the next round uses the new one. Returns the old
        pair once no round uses it any more, for the caller to close."""
        old = self._stage
        self._restage((preprocessor or old[0], backend))  # no await before: atomic
        if self._rounds:
            await asyncio.wait(set(self._rounds))
        return old

    async def run_shadow(self, trial: ShadowTrial) -> ShadowReport:
        """Feed ``trial`` every round of the serving model until it reports: after the
        round's decisions are published, queued on the pipeline's worker thread and not
        awaited. A model swap meanwhile ends the trial as failed. The trial is detached
        on return, error or cancellation (which also ends it): bound this with a timeout
        if rounds may stop coming."""
        if self._shadow is not None:
            raise RuntimeError(f"pipeline {self.name!r} already runs a shadow trial")
        self._shadow = (trial, self._stage)
        try:
            return await trial.wait()
        finally:
            if self._shadow is not None and self._shadow[0] is trial:
                self._shadow = None
            trial.abort("shadow trial cancelled")  # no-op once ended; queued rounds skip

    # -- ingest -------------------------------------------------------------------------

    async def emit(self, readings: Readings) -> None:
        """What sources call (their ``emit``): queue a batch under the overflow policy."""
        if not await self.queue.put(readings):
            self.counters.inc("batches_dropped", pipeline=self.name)

    async def ingest_loop(self) -> None:
        while True:
            self.ingest(await self.queue.get_batch())

    def ingest(self, batches: Sequence[Readings]) -> int:
        """Write batches into the buffers; return the rows accepted. Rows that are not
        finite or belong to a turbine over ``max_turbines`` are counted and dropped."""
        width = len(self.preprocessor.inputs)
        turbines: list[str] = []
        blocks: list[np.ndarray] = []
        for batch in batches:
            if batch.values.ndim != 2 or batch.values.shape[1] != width:
                self._reject("wrong_width", len(batch.turbines),
                             f"expected {width} inputs, got shape {batch.values.shape}")
                continue
            if len(batch.turbines) != len(batch.values):
                self._reject("wrong_length", len(batch.values),
                             f"{len(batch.values)} rows but {len(batch.turbines)} turbine ids")
                continue
            turbines.extend(batch.turbines)
            blocks.append(batch.values)
        if not blocks:
            return 0
        values = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        finite = np.isfinite(values).all(axis=1)
        slots = self._slots(turbines, finite)
        good = slots >= 0
        if not good.all():
            self._reject_rows(slots)
            values, slots = values[good], slots[good]
        if len(slots):
            features = self.preprocessor.row_features(values)
            self.buffers.write(slots, features, self.monotonic_clock(), values)
            self._wake.set()
        self.counters.inc("rows_accepted", len(slots), pipeline=self.name)
        return len(slots)

    def _slots(self, turbines: list[str], finite: np.ndarray) -> np.ndarray:
        """Each row's slot, or why it has none (_UNKNOWN, _NOT_FINITE, _BAD_ID). Only
        valid rows may claim a slot: garbage must not invent turbines."""
        ids = self.buffers.ids
        # map() looks the ids up in C: this runs for every row (20,000 a second).
        slots = np.fromiter(map(ids.get, turbines, repeat(_UNKNOWN)), dtype=np.int64,
                            count=len(turbines))
        slots[~finite] = _NOT_FINITE
        new = np.flatnonzero(slots == _UNKNOWN)
        if len(new):
            # Rare (a turbine's first rows): claiming may evict and so move slots, so
            # every row is looked up again after it.
            self._claim(list(dict.fromkeys(turbines[i] for i in new.tolist())), slots)
            slots = np.fromiter((ids.get(t, _UNKNOWN if len(t) <= MAX_TURBINE_ID else _BAD_ID)
                                 if ok else _NOT_FINITE
                                 for t, ok in zip(turbines, finite.tolist(), strict=True)),
                                dtype=np.int64, count=len(turbines))
        return slots

    def _claim(self, names: list[str], slots: np.ndarray) -> None:
        """Give new turbines slots, first come first served, evicting the longest-silent
        stale turbines for them when every slot is taken; ``slots`` (this batch's) are
        never evicted."""
        names = [name for name in names if len(name) <= MAX_TURBINE_ID]
        free = self.buffers.max_turbines - len(self.buffers.names)
        if len(names) > free:
            self._evict(self._stalest(len(names) - free, now=self.monotonic_clock(),
                                      busy=slots[slots >= 0]), "full")
        for name in names:
            if self.buffers.index(name) is None:
                break

    def _stalest(self, count: int, now: float, busy: np.ndarray) -> np.ndarray:
        """Up to ``count`` slots silent for over ``stale_after_s``, not in ``busy``,
        the longest-silent first."""
        silent = now - self.buffers.last_seen[: len(self.buffers.names)]
        silent[busy] = -np.inf
        stale = np.flatnonzero(silent > self.spec.stale_after_s)
        if count < len(stale):  # a few of many (a flood, batch after batch): no full sort
            stale = stale[np.argpartition(-silent[stale], count - 1)[:count]]
        return stale[np.argsort(-silent[stale], kind="stable")]

    def _evict(self, slots: np.ndarray, reason: str) -> None:
        """Forget the turbines in ``slots`` and everything kept per slot about them."""
        if not len(slots):
            return
        self._grow()
        names = self.buffers.names
        evicted = [names[slot] for slot in slots.tolist()]
        # Highest first: the last slot, which moves into a freed one, is then never one
        # still to be evicted.
        for slot in sorted(slots.tolist(), reverse=True):
            self._move_state(self.buffers.remove(slot), slot)
        self.counters.inc("turbines_evicted", len(evicted), pipeline=self.name,
                          reason=reason)
        suppressed = self._rate_limit.allow(f"evicted:{reason}")
        if suppressed is not None:
            log.info("turbines_evicted", pipeline=self.name, reason=reason,
                     turbines=len(evicted), first=evicted[0],
                     suppressed_since_last=suppressed)

    def _move_state(self, moved_from: int | None, slot: int) -> None:
        """After TurbineBuffers.remove(slot): the pipeline's per-slot state follows the
        turbine that moved into ``slot``; the slot left empty is reset, so a turbine
        given it later starts afresh (never decided, not stale)."""
        stale, since = self._stale, self._silent_since
        stale.discard(slot)
        since.pop(slot, None)
        vacated = slot
        if moved_from is not None:
            self._decided_at[slot] = self._decided_at[moved_from]
            self._due_at[slot] = self._due_at[moved_from]
            if moved_from in stale:
                stale.discard(moved_from)
                stale.add(slot)
            if moved_from in since:
                since[slot] = since.pop(moved_from)
            vacated = moved_from
        self._decided_at[vacated] = 0
        self._due_at[vacated] = -1.0

    def _reject_rows(self, slots: np.ndarray) -> None:
        for code, reason, detail in (
                (_NOT_FINITE, "not_finite", "rows with NaN or infinity"),
                (_BAD_ID, "bad_turbine_id", f"turbine ids over {MAX_TURBINE_ID} characters"),
                (_UNKNOWN, "too_many_turbines", f"every one of max_turbines="
                 f"{self.buffers.max_turbines} slots is taken by a turbine heard within "
                 f"stale_after_s")):
            rows = int((slots == code).sum())
            if rows:
                self._reject(reason, rows, f"{rows} {detail}")

    def _reject(self, reason: str, rows: int, detail: str) -> None:
        self.counters.inc("rows_rejected", rows, pipeline=self.name, reason=reason)
        suppressed = self._rate_limit.allow(reason)
        if suppressed is not None:
            log.warning("rows_rejected", pipeline=self.name, reason=reason, rows=rows,
                        detail=detail, suppressed_since_last=suppressed)

    # -- decide -------------------------------------------------------------------------

    async def decide_loop(self) -> None:
        """Decide each turbine once per ``interval_s``, on the first row that arrives
        after it is due. Turbines are spread over the interval by a fixed phase, so each
        round holds a fraction of the fleet and a reading waits for one small round's
        compute, not the whole fleet's."""
        # One worker thread per pipeline: rounds never overlap, and the process does not
        # grow a malloc arena per thread of the default executor.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"edged-{self.name}")
        try:
            while True:
                slots = self.scheduled(self.monotonic_clock())
                if len(slots) > self.max_round:
                    overdue = np.argsort(self._due_at[slots], kind="stable")
                    slots = np.sort(slots[overdue[:self.max_round]])
                if len(slots):
                    try:
                        await self.decide_once(slots)  # yields: the work runs in the thread
                    except Exception as exc:
                        # A failed round (a remote model unreachable, say) must not end
                        # the daemon: its turbines were rescheduled before the model
                        # call, so they are decided again at their next interval.
                        self._round_failed(len(slots), exc)
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.spec.interval_s):
                        await self._wake.wait()
        finally:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _round_failed(self, turbines: int, exc: Exception) -> None:
        self.counters.inc("rounds_failed", pipeline=self.name)
        suppressed = self._rate_limit.allow("round_failed")
        if suppressed is not None:
            log.error("decision_round_failed", pipeline=self.name, turbines=turbines,
                      error=f"{type(exc).__name__}: {exc}", suppressed_since_last=suppressed)

    def _phase(self, slots: np.ndarray) -> np.ndarray:
        return (slots * _PHASE_STEP) % 1.0 * self.spec.interval_s

    def _grow(self) -> int:
        known = len(self.buffers.names)
        if len(self._decided_at) < known:
            extra = known - len(self._decided_at)
            self._decided_at = np.pad(self._decided_at, (0, extra))
            self._due_at = np.pad(self._due_at, (0, extra), constant_values=-1.0)
        return known

    def scheduled(self, now: float) -> np.ndarray:
        """Slots due by ``now`` that received a row since they became due."""
        self._grow()
        ready = self.buffers.ready()
        fresh = ready[self._due_at[ready] < 0]
        if len(fresh):
            # Decide a turbine at once when its history first fills up, and from then on
            # at its phase: next due = last row - phase + interval.
            self._due_at[fresh] = self.buffers.last_seen[fresh] - self._phase(fresh)
        due_at = self._due_at[ready]
        return ready[(due_at <= now) & (self.buffers.last_seen[ready] >= due_at)
                     & (self.buffers.count[ready] > self._decided_at[ready])]

    def due(self) -> np.ndarray:
        """Slots with a full history and rows newer than their last decision."""
        self._grow()
        ready = self.buffers.ready()
        return ready[self.buffers.count[ready] > self._decided_at[ready]]

    async def decide_once(self, slots: np.ndarray | None = None) -> list[Decision]:
        """Decide ``slots`` (default: every turbine with new rows) in one batch."""
        slots = self.due() if slots is None else slots
        if not len(slots):
            return []
        # Copy the histories on the loop (ingest keeps writing); compute in a thread.
        history = self.buffers.gather(slots)
        raw = self.buffers.gather_raw(slots) if self.buffers.keeps_raw else None
        self._decided_at[slots] = self.buffers.count[slots]
        self._reschedule(slots, self.monotonic_clock())
        rows = self.buffers.count[slots].tolist()
        # Read before the round yields: meanwhile an eviction may move a turbine's slot.
        names = self.buffers.names
        turbines = [names[slot] for slot in slots.tolist()]
        stage = self._stage
        preprocessor, backend = stage
        work = asyncio.get_running_loop().run_in_executor(
            self._executor, self._score, history, preprocessor, backend)
        self._rounds.add(work)
        work.add_done_callback(self._rounds.discard)
        started = time.perf_counter()
        scores, model_io = await work
        self.latency.record(time.perf_counter() - started)
        now = self.wall_clock()
        monotonic = self.monotonic_clock()
        model = backend.model
        group_flags = self._groups(scores.anomalous)
        primary = self._primary(scores, group_flags)
        decisions = [
            Decision(
                pipeline=self.name,
                turbine=turbine,
                time=now,
                values=tuple(scores.values[i].tolist()),
                anomalous=tuple(scores.anomalous[i].tolist()),
                groups=dict(zip(self._group_names, group_flags[i].tolist(), strict=True)),
                model=model,
                primary=primary[i],
                rows=rows[i],
            )
            for i, turbine in enumerate(turbines)
        ]
        self.counters.inc("decisions", len(decisions), pipeline=self.name)
        self.counters.inc("anomalous_decisions", sum(d.is_anomalous for d in decisions),
                          pipeline=self.name)
        # The arrays are handed over, never copied: the round is read, not kept.
        round_ = Round(pipeline=self.name, decisions=decisions,
                       features=preprocessor.features, thresholds=scores.thresholds.tolist(),
                       time=now, monotonic=monotonic, window=history, raw=raw,
                       inputs=tuple(preprocessor.inputs) if raw is not None else (),
                       model_io=model_io, values=scores.values, anomalous=scores.anomalous,
                       group_flags=group_flags)
        for subscriber in self.subscribers:
            subscriber.on_round(round_)
        shadow = self._shadow
        if shadow is not None and shadow[1] is stage:
            # Published first and not awaited: the candidate never delays a decision. On
            # the one worker thread it runs before the next round, never beside it.
            observed = asyncio.get_running_loop().run_in_executor(
                self._executor, shadow[0].observe, history, scores)
            self._observing.add(observed)
            observed.add_done_callback(self._observing.discard)
        return decisions

    def _reschedule(self, slots: np.ndarray, now: float) -> None:
        due_at = self._due_at[slots] + self.spec.interval_s
        behind = due_at < now
        # A turbine more than an interval behind (overload, a long pause) starts afresh
        # at its phase, so the fleet never bunches up into one huge round.
        due_at[behind] = now + self._phase(slots[behind])
        self._due_at[slots] = due_at

    def _groups(self, anomalous: np.ndarray) -> np.ndarray:
        return np.stack([anomalous[:, ix].any(axis=1) for ix in self._group_index], axis=1)

    def _primary(self, scores, group_flags: np.ndarray) -> list[str | None]:
        ratio = scores.values / scores.thresholds
        worst = np.stack([ratio[:, ix].max(axis=1) for ix in self._group_index], axis=1)
        worst[~group_flags] = -np.inf
        best = worst.argmax(axis=1)
        return [self._group_names[g] if flagged.any() else None
                for g, flagged in zip(best.tolist(), group_flags, strict=True)]

    def _score(self, history: np.ndarray, preprocessor: Preprocessor,
               backend: InferenceBackend) -> tuple[Scores, ModelIO | None]:
        """The round's scores, and with ``include_model_io`` the model's input and output
        by turbine, each (turbines, rows each, ...): a preprocessor lays turbine t's rows
        of the model input out together (see Preprocessor.model_input)."""
        x = preprocessor.model_input(history)
        y = backend.predict(x)
        scores = preprocessor.score(x, y, len(history))
        if not self._keep_model_io:
            return scores, None
        turbines, y = len(history), np.asarray(y)
        if len(x) % turbines or len(y) % turbines:
            return scores, None  # not laid out by turbine: nothing to hand over per row
        return scores, (x.reshape(turbines, -1, *x.shape[1:]),
                        y.reshape(turbines, -1, *y.shape[1:]))

    # -- watch --------------------------------------------------------------------------

    async def watch_loop(self) -> None:
        period = min(1.0, self.spec.stale_after_s / 2)
        while True:
            await asyncio.sleep(period)
            self.check_stale(self.monotonic_clock())

    def check_stale(self, now: float) -> None:
        """Evict turbines silent for ``evict_after_s``, then raise ``sensor_stale`` for
        those silent for ``stale_after_s`` and ``sensor_recovered`` for those back.

        Only a turbine whose history has filled is watched: one that never sent
        ``history`` rows was never decided on, so its silence changes nothing, and ids
        from a flood of garbage (one row each) raise no event at all."""
        known = len(self.buffers.names)
        silent = now - self.buffers.last_seen[:known]
        self._evict(np.flatnonzero(silent > self.spec.evict_after_s), "silent")
        known = len(self.buffers.names)
        silent = now - self.buffers.last_seen[:known]
        watched = self.buffers.count[:known] >= self.buffers.history
        stale = set(np.flatnonzero((silent > self.spec.stale_after_s) & watched).tolist())
        last_seen = self.buffers.last_seen
        went = sorted(stale - self._stale)
        for slot in went:
            self._silent_since[slot] = float(last_seen[slot])
        self._sensor_events("sensor_stale", [
            (slot, {"silent_s": round(float(silent[slot]), 3)}) for slot in went])
        back = []
        for slot in sorted(self._stale - stale):
            since = self._silent_since.pop(slot, None)
            # Seconds without data: from the last row before the silence to the newest
            # row now (late by at most one watch period).
            back.append((slot, None if since is None
                         else {"gap_s": round(float(last_seen[slot]) - since, 3)}))
        self._sensor_events("sensor_recovered", back)
        self._stale = stale

    def _sensor_events(self, kind: EventKind,
                       events: list[tuple[int, dict[str, float] | None]]) -> None:
        """The first MAX_SENSOR_EVENTS one by one, the rest as one summary event."""
        names = self.buffers.names
        for slot, detail in events[:MAX_SENSOR_EVENTS]:
            self._sensor_event(kind, names[slot], detail)
        rest = len(events) - MAX_SENSOR_EVENTS
        if rest > 0:
            self._sensor_event(kind, SUMMARY_TURBINE, {"turbines": rest})

    def _sensor_event(self, kind: EventKind, turbine: str,
                      detail: dict[str, float] | None) -> None:
        turbines = detail["turbines"] if turbine == SUMMARY_TURBINE and detail else 1
        self.counters.inc(kind, turbines, pipeline=self.name)
        log.warning(kind, pipeline=self.name, turbine=turbine, **(detail or {}))
        event = Event(kind=kind, pipeline=self.name, turbine=turbine,
                      time=self.wall_clock(), detail=detail)
        for subscriber in self.subscribers:
            subscriber.on_event(event)
