"""The dashboard's board: the latest decision of every turbine, recent alarms and the
decision rate, kept as the pipelines decide, and read back as one JSON page of
``GET /api/state`` (docs/dashboard.md).

A subscriber of every pipeline and an observer of every actuator binding, in the
decision path: a round costs one copy of its newest feature rows and one dict store per
decision; everything else (JSON, paging, staleness) is done when a page is asked for.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edged.plugin.alarm_payload import alarm_payload, iso_time
from edged.plugin.events import Decision, Event, Round
from edged.runtime.pipeline import SUMMARY_TURBINE, Pipeline
from edged.watch.records import per_feature

#: The states a turbine can show, in the order the page's summary lists them.
STATES = ("ok", "anomaly", "stale", "no_model")
#: Alarms and clears kept for the page (the newest; older ones are in the logs).
RECENT_ALARMS = 50
#: Turbines one page of /api/state holds at most; ``limit`` defaults to DEFAULT_PAGE.
MAX_PAGE = 1000
DEFAULT_PAGE = 100
#: The decision rate is the decisions of the rounds of the last RATE_WINDOW_S seconds.
RATE_WINDOW_S = 10.0
_ROUNDS_KEPT = 4096


@dataclass(frozen=True, slots=True)
class _Latest:
    """A turbine's latest decision, with its round's names, thresholds and newest rows."""

    decision: Decision
    features: tuple[str, ...]
    thresholds: tuple[float, ...]
    rows: np.ndarray | None  # (decisions, features): the round's newest feature rows
    index: int  # this decision's row of ``rows``


class PageError(ValueError):
    """A query of /api/state out of its bounds; the message names the parameter."""


class TurbineBoard:
    """What /api/state shows, for ``pipelines`` (and ``health``'s report, if any)."""

    def __init__(self, device: str, pipelines: Mapping[str, Pipeline],
                 health: Any = None) -> None:
        self.device = device
        self.pipelines = pipelines
        self.health = health
        self._latest: dict[str, dict[str, _Latest]] = {name: {} for name in pipelines}
        self._alarms: deque[dict[str, Any]] = deque(maxlen=RECENT_ALARMS)
        self._rounds: deque[tuple[float, int]] = deque(maxlen=_ROUNDS_KEPT)

    # -- what the graph hands the board -----------------------------------------------------

    def on_round(self, round: Round) -> None:
        # One copy for the round: a view would pin the whole window array.
        rows = None if round.window is None else round.window[:, -1, :].copy()
        features, thresholds = tuple(round.features), tuple(round.thresholds)
        latest = self._latest.setdefault(round.pipeline, {})
        for index, decision in enumerate(round.decisions):
            latest[decision.turbine] = _Latest(decision, features, thresholds, rows, index)
        self._rounds.append((round.monotonic, len(round.decisions)))
        pipeline = self.pipelines.get(round.pipeline)
        # Turbines the pipeline evicted keep no entry for long: bounded by its slots.
        if pipeline is not None and len(latest) > 2 * pipeline.spec.max_turbines:
            known = set(pipeline.buffers.names)
            for turbine in [t for t in latest if t not in known]:
                del latest[turbine]

    def on_event(self, event: Event) -> None:
        """Sensor events: staleness is read off the pipeline's buffers when asked."""

    def on_actuator_event(self, event: Event) -> None:
        if event.kind not in ("alarm", "clear"):
            return
        payload = alarm_payload(event, self.device)
        if any(a["id"] == payload["id"] for a in self._alarms):
            return  # raised alike by another actuator's tracker
        self._alarms.append(payload)

    # -- what a page reads --------------------------------------------------------------

    def decisions_per_s(self, now: float) -> float:
        recent = sum(n for t, n in self._rounds if now - t <= RATE_WINDOW_S)
        return round(recent / RATE_WINDOW_S, 3)

    def state(self, now: float, offset: int = 0, limit: int = DEFAULT_PAGE) -> dict[str, Any]:
        """One page of turbines (sorted by pipeline, then name) and everything else;
        ``now`` is the monotonic clock the pipelines' ``last_seen`` is read against."""
        if offset < 0:
            raise PageError(f"offset must be 0 or more, not {offset}")
        if not 1 <= limit <= MAX_PAGE:
            raise PageError(f"limit must be from 1 to {MAX_PAGE}, not {limit}")
        everyone = [(name, turbine, slot) for name, pipeline in self.pipelines.items()
                    for slot, turbine in enumerate(pipeline.buffers.names)
                    if turbine and turbine != SUMMARY_TURBINE]
        everyone.sort(key=lambda t: (t[0], t[1]))
        counts = dict.fromkeys(STATES, 0)
        items = []
        for position, (name, turbine, slot) in enumerate(everyone):
            pipeline = self.pipelines[name]
            age = float(now - pipeline.buffers.last_seen[slot])
            latest = self._latest.get(name, {}).get(turbine)
            state = _state_of(latest, age > pipeline.spec.stale_after_s)
            counts[state] += 1
            if offset <= position < offset + limit:
                items.append(_turbine(name, turbine, state, age, latest))
        return {
            "device": self.device,
            "pipelines": {name: _pipeline(p) for name, p in self.pipelines.items()},
            "summary": {"turbines": len(everyone), **counts},
            "turbines": {"offset": offset, "limit": limit, "total": len(everyone),
                         "items": items},
            "alarms": list(reversed(self._alarms)),  # newest first
            "health": self._health(now),
        }

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


def _state_of(latest: _Latest | None, stale: bool) -> str:
    if stale:
        return "stale"
    if latest is None:
        return "no_model"  # not scored yet: a window still filling, or no model loaded
    return "anomaly" if latest.decision.is_anomalous else "ok"


def _turbine(pipeline: str, turbine: str, state: str, age: float,
             latest: _Latest | None) -> dict[str, Any]:
    item: dict[str, Any] = {"pipeline": pipeline, "turbine": turbine, "state": state,
                            "age_s": round(age, 3)}
    if latest is None:
        return item
    decision = latest.decision
    item.update(
        groups=decision.groups, primary=decision.primary,
        flagged=[n for n, over in zip(latest.features, decision.anomalous, strict=True)
                 if over],
        errors=per_feature(latest.features, decision.values),
        thresholds=per_feature(latest.features, latest.thresholds),
        # The model's inputs when they are the scored features (the wind turbine's six).
        features=per_feature(latest.features, latest.rows[latest.index].tolist())
        if latest.rows is not None and latest.rows.shape[1] == len(latest.features) else None,
        model={"name": decision.model.name, "version": decision.model.version},
        time=iso_time(decision.time))
    return item


def _pipeline(pipeline: Pipeline) -> dict[str, Any]:
    model = pipeline.backend.model
    shadow = pipeline.shadow
    return {"model": {"name": model.name, "version": model.version},
            "shadow": None if shadow is None else {
                "name": shadow.backend.model.name, "version": shadow.backend.model.version},
            "turbines": sum(1 for t in pipeline.buffers.names
                            if t and t != SUMMARY_TURBINE)}
