"""The dashboard's board: the latest decision of every turbine and the last
:data:`HISTORY` of its model inputs and scores, recent alarms and the decision rate, kept
as the pipelines decide, and read back as one JSON page (``GET /api/state``, and the
``board`` events of ``GET /events``; docs/dashboard.md).

A subscriber of every pipeline and an observer of every actuator binding, in the
decision path: a round costs one dict lookup and one store per decision and two array
writes for the round; everything else (JSON, paging, staleness) is done when a page is
asked for.
"""

from __future__ import annotations

import functools
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edged.dashboard.controls import FarmControl, farm_status
from edged.plugin.alarm_payload import alarm_payload, event_id, iso_time
from edged.plugin.events import Decision, Event, Round
from edged.runtime.pipeline import SUMMARY_TURBINE, Pipeline
from edged.watch.records import per_feature

#: The states a turbine can show, in the order the page's summary lists them.
STATES = ("ok", "anomaly", "stale", "no_model")
#: Alarms and clears kept for the page (the newest; older ones are in the logs).
RECENT_ALARMS = 50
#: Turbines one page holds at most; ``limit`` defaults to DEFAULT_PAGE.
MAX_PAGE = 1000
DEFAULT_PAGE = 100
#: The decision rate is the decisions of the rounds of the last RATE_WINDOW_S seconds.
RATE_WINDOW_S = 10.0
#: Decisions of each turbine kept for its sparklines: a minute at two rounds a second.
#: 1,000 turbines of six features cost 5.9 MB (1,024 rows of 120 x 12 float32: inputs
#: and scores); at most the pipeline's ``max_turbines``, rounded up to a power of two.
HISTORY = 120
_ROUNDS_KEPT = 4096
_DIGITS = re.compile(r"(\d+)")
_FIRST_ROWS = 64


@dataclass(frozen=True, slots=True)
class _Scale:
    """What a round's scores are read against: its feature names and thresholds (one
    object a round, shared by its decisions: a round stores no object per decision)."""

    features: tuple[str, ...]
    thresholds: tuple[float, ...]


class PageError(ValueError):
    """A query out of its bounds; the message names the parameter."""


class _Track:
    """One pipeline's turbines: a row each, holding its latest decision (and the scale
    it was scored on) and a ring of its last HISTORY model inputs and scores,
    ``(rows, HISTORY, 2 * features)`` float32."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.free: list[int] = []
        self.latest: list[Decision | None] = []
        self.scale: list[_Scale | None] = []
        self.width = 0  # features of the ring; a model with other features starts anew
        self.ring = np.zeros((0, HISTORY, 0), np.float32)
        self.count = np.zeros(0, np.int64)  # decisions written into each row's ring

    def slots(self, turbines: Sequence[str],
              known: Callable[[], set[str]] | None = None) -> np.ndarray:
        """Each turbine's row, a new one for a turbine not seen before: first a row
        freed from a turbine no longer ``known`` (the pipeline's), else a larger ring.
        So the ring holds at most the pipeline's turbines (its ``max_turbines``),
        rounded up to a power of two."""
        rows = self.rows
        missing = [t for t in turbines if t not in rows]
        for turbine in missing:
            if not self.free and known is not None:
                self.forget(known() | set(turbines))
            if not self.free:
                self._grow()
            rows[turbine] = row = self.free.pop()
            self.count[row] = 0
        return np.array(list(map(rows.__getitem__, turbines)), np.intp)

    def _grow(self) -> None:
        old = len(self.latest)
        new = max(_FIRST_ROWS, 2 * old)
        self.latest += [None] * (new - old)
        self.scale += [None] * (new - old)
        ring = np.full((new, HISTORY, 2 * self.width), np.nan, np.float32)
        ring[:old] = self.ring
        self.ring = ring
        self.count = np.concatenate([self.count, np.zeros(new - old, np.int64)])
        self.free += range(new - 1, old - 1, -1)

    def reshape(self, width: int) -> None:
        if width != self.width:
            self.width = width
            self.ring = np.full((len(self.latest), HISTORY, 2 * width), np.nan, np.float32)
            self.count[:] = 0

    def forget(self, known: set[str]) -> None:
        """Free the rows of turbines the pipeline no longer tracks."""
        for turbine in [t for t in self.rows if t not in known]:
            row = self.rows.pop(turbine)
            self.latest[row] = self.scale[row] = None
            self.free.append(row)

    def history(self, row: int) -> np.ndarray:
        """Row ``row``'s ring in time order, oldest first: (decisions, 2 * features)."""
        count = int(self.count[row])
        if count <= HISTORY:
            return self.ring[row, :count]
        return np.roll(self.ring[row], -(count % HISTORY), axis=0)

    def newest(self, row: int) -> np.ndarray:
        return self.ring[row, (int(self.count[row]) - 1) % HISTORY]


class TurbineBoard:
    """What the page shows, for ``pipelines`` (and ``health``'s report, and the
    simulator ``controls``, if any)."""

    def __init__(self, device: str, pipelines: Mapping[str, Pipeline], health: Any = None,
                 controls: Mapping[str, FarmControl] | None = None,
                 jobs: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.device = device
        self.pipelines = pipelines
        self.health = health
        self.controls = dict(controls or {})
        self.jobs = jobs  # the model updates in progress (the cloud link's), if any
        self._tracks: dict[str, _Track] = {name: _Track() for name in pipelines}
        self._alarms: deque[dict[str, Any]] = deque(maxlen=RECENT_ALARMS)
        self._rounds: deque[tuple[float, int]] = deque(maxlen=_ROUNDS_KEPT)
        #: Bumped by every round and alarm: a stream sends a board only when it moved.
        self.version = 0

    # -- what the graph hands the board -----------------------------------------------------

    def on_round(self, round: Round) -> None:
        decisions = round.decisions
        if not decisions:
            return
        track = self._tracks.setdefault(round.pipeline, _Track())
        scale = _Scale(tuple(round.features), tuple(round.thresholds))
        width = len(scale.features)
        track.reshape(width)
        pipeline = self.pipelines.get(round.pipeline)
        rows = track.slots([d.turbine for d in decisions], None if pipeline is None
                           else lambda: set(pipeline.buffers.names))
        latest, scales = track.latest, track.scale
        for row, decision in zip(rows.tolist(), decisions, strict=True):
            latest[row] = decision
            scales[row] = scale
        at = track.count[rows] % HISTORY
        values = round.values if round.values is not None else np.array(
            [d.values for d in decisions])
        track.ring[rows, at, :width] = values
        window = round.window
        # The model's inputs when they are the scored features (the wind turbine's six).
        if window is not None and window.shape[2] == width:
            track.ring[rows, at, width:] = window[:, -1, :]
        else:
            track.ring[rows, at, width:] = np.nan
        track.count[rows] += 1
        self._rounds.append((round.monotonic, len(decisions)))
        self.version += 1

    def on_event(self, event: Event) -> None:
        """Sensor events: staleness is read off the pipeline's buffers when asked."""

    def on_actuator_event(self, event: Event) -> None:
        if event.kind not in ("alarm", "clear"):
            return
        payload = alarm_payload(event, self.device)
        if any(a["id"] == payload["id"] for a in self._alarms):
            return  # raised alike by another actuator's tracker
        self._alarms.append({**payload, "actions": []})
        self.version += 1

    def on_actuator_outcome(self, actuator: str, event: Event, error: str | None) -> None:
        """What ``actuator`` did with an alarm or clear on the page: done, or its error."""
        if event.kind not in ("alarm", "clear"):
            return
        key = event_id(event, self.device)
        for alarm in reversed(self._alarms):  # the newest first: it is the one, mostly
            if alarm["id"] == key:
                alarm["actions"].append({"actuator": actuator, "ok": error is None,
                                         "error": error})
                self.version += 1
                return

    # -- what a page reads --------------------------------------------------------------

    def decisions_per_s(self, now: float) -> float:
        recent = sum(n for t, n in self._rounds if now - t <= RATE_WINDOW_S)
        return round(recent / RATE_WINDOW_S, 3)

    def state(self, now: float, offset: int = 0, limit: int = DEFAULT_PAGE,
              only: str | None = None, focus: tuple[str, str] | None = None) -> dict[str, Any]:
        """One page of turbines (sorted by pipeline, then name, its numbers as numbers;
        in state ``only``, if given), the ``focus`` turbine (pipeline, name) with its
        history, and everything else; ``now`` is the monotonic clock the pipelines'
        ``last_seen`` is read against."""
        if offset < 0:
            raise PageError(f"offset must be 0 or more, not {offset}")
        if not 1 <= limit <= MAX_PAGE:
            raise PageError(f"limit must be from 1 to {MAX_PAGE}, not {limit}")
        if only is not None and only not in STATES:
            raise PageError(f"state must be one of {', '.join(STATES)}, not {only[:40]!r}")
        everyone = [(name, turbine, slot) for name, pipeline in self.pipelines.items()
                    for slot, turbine in enumerate(pipeline.buffers.names)
                    if turbine and turbine != SUMMARY_TURBINE]
        everyone.sort(key=lambda t: (t[0], _natural(t[1])))
        counts = dict.fromkeys(STATES, 0)
        items, shown, focused = [], 0, None
        for name, turbine, slot in everyone:
            pipeline = self.pipelines[name]
            age = float(now - pipeline.buffers.last_seen[slot])
            state = _state_of(self._latest(name, turbine), age > pipeline.spec.stale_after_s)
            counts[state] += 1
            if focus == (name, turbine):
                focused = self._item(name, turbine, state, age, history=True)
            if only not in (None, state):
                continue
            if offset <= shown < offset + limit:
                items.append(self._item(name, turbine, state, age))
            shown += 1
        return {
            "device": self.device,
            "pipelines": {name: _pipeline(p) for name, p in self.pipelines.items()},
            "summary": {"turbines": len(everyone), **counts},
            "turbines": {"offset": offset, "limit": limit, "state": only, "total": shown,
                         "items": items},
            "focus": focused,
            "alarms": list(reversed(self._alarms)),  # newest first
            "jobs": self.jobs() if self.jobs is not None else [],
            "simulators": {source: {"faults": list(c.fault_kinds), "drifts": list(c.drift_kinds)}
                           for source, c in self.controls.items()},
            "health": self._health(now),
        }

    def _latest(self, pipeline: str, turbine: str) -> Decision | None:
        track = self._tracks.get(pipeline)
        row = None if track is None else track.rows.get(turbine)
        return None if row is None else track.latest[row]

    def _item(self, pipeline: str, turbine: str, state: str, age: float,
              history: bool = False) -> dict[str, Any]:
        item: dict[str, Any] = {"pipeline": pipeline, "turbine": turbine, "state": state,
                                "age_s": round(age, 3)}
        control = self._control(turbine)
        if control is not None:
            item["simulator"] = farm_status(control[0], control[1], turbine)
        track = self._tracks.get(pipeline)
        row = None if track is None else track.rows.get(turbine)
        decision = None if row is None else track.latest[row]
        if decision is None:
            return item  # not scored yet: a window still filling, or no model loaded
        scale = track.scale[row]
        features = scale.features
        width = len(features)
        thresholds = np.asarray(scale.thresholds, np.float32)
        if width == track.width:
            newest, rows = track.newest(row), track.history(row)
        else:  # its ring started anew for another model's features since: no history
            newest = np.full(2 * width, np.nan, np.float32)
            rows = np.empty((0, 2 * width), np.float32)
        item.update(
            groups=decision.groups, primary=decision.primary,
            flagged=[n for n, over in zip(features, decision.anomalous, strict=True) if over],
            errors=per_feature(features, decision.values),
            thresholds=per_feature(features, scale.thresholds),
            features=None if np.isnan(newest[width:]).all()
            else per_feature(features, newest[width:].tolist()),
            # The worst score against its threshold, decision by decision: over 1 flags.
            score=_series((rows[:, :width] / thresholds).max(axis=1)),
            model={"name": decision.model.name, "version": decision.model.version},
            time=iso_time(decision.time))
        if history:
            item["history"] = {
                "errors": {n: _series(rows[:, i]) for i, n in enumerate(features)},
                "features": {n: _series(rows[:, width + i]) for i, n in enumerate(features)}}
        return item

    def _control(self, turbine: str) -> tuple[str, FarmControl] | None:
        for source, control in self.controls.items():
            if turbine in control.turbine_ids():
                return source, control
        return None

    def _health(self, now: float) -> dict[str, Any]:
        figures: dict[str, Any] = {"decisions_per_s": self.decisions_per_s(now)}
        if self.health is not None:
            report = self.health.report()
            figures.update(
                uptime_s=report["uptime_s"], spool=report["spool"], sketch=report["sketch"],
                pipelines={name: {key: p[key] for key in (
                    "decisions", "anomalous_decisions", "rounds_failed", "latency_ms",
                    "turbines", "stale")} for name, p in report["pipelines"].items()})
        return figures


@functools.lru_cache(maxsize=16_384)
def _natural(name: str) -> tuple[str | int, ...]:
    """``turbine-2`` before ``turbine-10``: the digits in a name compared as numbers.
    Kept per name: every board event sorts every turbine again (a third of its time
    at 1,000 turbines when split anew)."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(name)))


def _series(values: np.ndarray) -> np.ndarray:
    """A sparkline's values as float32, which orjson writes in C in their shortest form
    (NaN, where no input was kept, as null): JSON only with OPT_SERIALIZE_NUMPY."""
    return np.ascontiguousarray(values, np.float32)


def _state_of(latest: Decision | None, stale: bool) -> str:
    if stale:
        return "stale"
    if latest is None:
        return "no_model"  # not scored yet: a window still filling, or no model loaded
    return "anomaly" if latest.is_anomalous else "ok"


def _pipeline(pipeline: Pipeline) -> dict[str, Any]:
    model = pipeline.backend.model
    shadow = pipeline.shadow
    return {"model": {"name": model.name, "version": model.version},
            "shadow": None if shadow is None else {
                "name": shadow.backend.model.name, "version": shadow.backend.model.version},
            "turbines": sum(1 for t in pipeline.buffers.names
                            if t and t != SUMMARY_TURBINE)}
