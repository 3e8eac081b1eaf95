"""From decisions to actions: debounce, clear and cooldown, then one queue and one task
per actuator. Actuators only act; when to act is decided here, once for all of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from edged.base.metrics import Counters
from edged.plugin.components import Actuator
from edged.plugin.config import ActuatorConfig
from edged.plugin.events import Decision, Event, Round
from edged.runtime.queues import BoundedQueue

log = structlog.get_logger("edged.actuation")

#: Turbines an alarm tracker remembers at once (a streak, an active alarm or a cooldown
#: each); beyond it the least recently decided is forgotten (docs/limits.md).
MAX_ALARM_STATES = 100_000


@dataclass
class _AlarmState:
    streak: int = 0  # consecutive anomalous decisions
    healthy: int = 0  # consecutive healthy decisions while the alarm is active
    active: bool = False
    groups: frozenset[str] = frozenset()
    last_alarm: float = float("-inf")


class AlarmTracker:
    """Turns a turbine's stream of decisions into alarm and clear events.

    An alarm fires after ``debounce`` consecutive anomalous decisions, at most once per
    ``cooldown_s`` per turbine; while it is active, a new anomalous group re-raises it
    (cooldown permitting). It clears after ``clear_after`` consecutive healthy decisions.
    """

    def __init__(self, debounce: int, clear_after: int, cooldown_s: float,
                 clock=time.monotonic, max_states: int = MAX_ALARM_STATES) -> None:
        self.debounce = debounce
        self.clear_after = clear_after
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.suppressed = 0
        self.forgotten = 0  # states dropped over max_states, least recently decided first
        self.max_states = max_states
        # Only turbines with something to remember (a streak, an active alarm, a cooldown
        # running), least recently decided first: ids come from whoever can publish, and
        # a pipeline evicts silent turbines, so a state per name ever seen would grow
        # without end.
        self._state: dict[str, _AlarmState] = {}

    def active(self, turbine: str) -> bool:
        state = self._state.get(turbine)
        return bool(state and state.active)

    def update(self, decision: Decision, features: Sequence[str],
               thresholds: Sequence[float]) -> Event | None:
        turbine = decision.turbine
        state = self._state.pop(turbine, None)
        if not decision.is_anomalous:
            if state is None:
                return None
            state.streak = 0
            if not state.active:
                if self.clock() - state.last_alarm < self.cooldown_s:
                    self._keep(turbine, state)  # the cooldown must outlive the streak
                return None
            self._keep(turbine, state)
            state.healthy += 1
            if state.healthy < self.clear_after:
                return None
            state.active, state.groups, state.healthy = False, frozenset(), 0
            return self._event("clear", decision, features, thresholds, ())

        if state is None:
            state = _AlarmState()
        self._keep(turbine, state)
        state.streak += 1
        state.healthy = 0
        groups = frozenset(g for g, flagged in decision.groups.items() if flagged)
        wants_alarm = (not state.active and state.streak >= self.debounce) or (
            state.active and not groups <= state.groups
        )
        if not wants_alarm:
            return None
        now = self.clock()
        if now - state.last_alarm < self.cooldown_s:
            self.suppressed += 1
            return None
        state.active, state.last_alarm = True, now
        state.groups = state.groups | groups
        ordered = tuple(g for g in decision.groups if g in state.groups)
        return self._event("alarm", decision, features, thresholds, ordered,
                           {"consecutive": state.streak, "primary": decision.primary,
                            "rows": decision.rows})

    def _keep(self, turbine: str, state: _AlarmState) -> None:
        self._state[turbine] = state  # as the most recently decided
        if len(self._state) > self.max_states:
            del self._state[next(iter(self._state))]
            self.forgotten += 1

    @staticmethod
    def _event(kind, decision: Decision, features, thresholds, groups, detail=None) -> Event:
        return Event(
            kind=kind,
            pipeline=decision.pipeline,
            turbine=decision.turbine,
            time=decision.time,
            groups=groups,
            values=dict(zip(features, decision.values, strict=True)),
            thresholds=dict(zip(features, (float(t) for t in thresholds), strict=True)),
            model=decision.model,
            detail=detail,
        )


class ActuatorBinding:
    """One actuator wired into the runtime: its tracker, its queue and its task."""

    def __init__(self, name: str, config: ActuatorConfig, actuator: Actuator,
                 counters: Counters) -> None:
        self.name = name
        self.config = config
        self.actuator = actuator
        self.counters = counters
        self.tracker = AlarmTracker(config.debounce, config.clear_after, config.cooldown_s)
        self.queue: BoundedQueue[Event] = BoundedQueue(
            f"actuator.{name}", config.queue.size, config.queue.overflow
        )
        self._kinds = frozenset(config.events)
        #: Told each event this actuator is handed, as it is queued (the watch feed).
        self.observers: list[Callable[[Event], None]] = []
        #: Told what came of each event once the actuator has handled it: (this binding's
        #: name, the event, None or what went wrong) (the dashboard's recent actions).
        self.outcomes: list[Callable[[str, Event, str | None], None]] = []

    def on_round(self, round: Round) -> None:
        tracker, features, thresholds = self.tracker, round.features, round.thresholds
        forgotten = tracker.forgotten
        for decision in round.decisions:
            event = tracker.update(decision, features, thresholds)
            if event is not None:
                self.on_event(event)
        if tracker.forgotten != forgotten:
            self.counters.inc("alarm_states_forgotten", tracker.forgotten - forgotten,
                              actuator=self.name)

    def on_event(self, event: Event) -> None:
        if event.kind not in self._kinds:
            return
        for observe in self.observers:
            observe(event)
        if not self.queue.put_nowait(event):
            self.counters.inc("events_dropped", actuator=self.name)

    async def run(self) -> None:
        while True:
            for event in await self.queue.get_batch():
                await self._deliver(event)

    async def drain(self) -> None:
        """Deliver what is queued, then return (the shutdown's last actuator stage)."""
        while len(self.queue):
            for event in await self.queue.get_batch():
                await self._deliver(event)

    async def _deliver(self, event: Event) -> None:
        error = None
        try:
            await self.actuator.handle(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = repr(exc)
            self.counters.inc("actuator_errors", actuator=self.name)
            log.warning("actuator_failed", actuator=self.name, kind=event.kind,
                        turbine=event.turbine, error=error)
        else:
            self.counters.inc("events_delivered", actuator=self.name, kind=event.kind)
        for told in self.outcomes:
            told(self.name, event, error)
