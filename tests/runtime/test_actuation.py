"""AlarmTracker (debounce, clear, cooldown) and ActuatorBinding (filtering, errors,
overflow)."""

from __future__ import annotations

import asyncio

from edged.base.metrics import Counters
from edged.plugin.components import Component
from edged.plugin.config import ActuatorConfig
from edged.plugin.events import Decision, Event, ModelRef
from edged.runtime.actuation import ActuatorBinding, AlarmTracker
from edged.windturbine.layout import FEATURES, GROUPS
from tests.support.clock import FakeClock
from tests.support.rounds import round_of

MODEL = ModelRef("windturbine", 3)
THRESHOLDS = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def decision(turbine: str = "t0", *flagged: str, primary: str | None = None,
             at: float = 0.0) -> Decision:
    """A decision flagging one feature of each group in ``flagged``."""
    anomalous = [False] * len(FEATURES)
    for group in flagged:
        anomalous[GROUPS[group][0]] = True
    values = tuple(10.0 * (i + 1) if a else 0.1 * (i + 1) for i, a in enumerate(anomalous))
    if primary is None and flagged:
        primary = flagged[0]
    return Decision(pipeline="p", turbine=turbine, time=at, values=values,
                    anomalous=tuple(anomalous),
                    groups={g: g in flagged for g in GROUPS}, model=MODEL, primary=primary)


def feed(tracker: AlarmTracker, *decisions: Decision) -> list[Event]:
    events = []
    for d in decisions:
        event = tracker.update(d, FEATURES, THRESHOLDS)
        if event is not None:
            events.append(event)
    return events


def bad(turbine: str = "t0", *groups: str) -> Decision:
    return decision(turbine, *(groups or ("voltage",)))


def good(turbine: str = "t0") -> Decision:
    return decision(turbine)


# -- AlarmTracker -------------------------------------------------------------------------


def test_no_alarm_before_debounce_consecutive_anomalous_decisions():
    tracker = AlarmTracker(debounce=3, clear_after=2, cooldown_s=0, clock=FakeClock())
    assert feed(tracker, bad(), bad()) == []
    assert not tracker.active("t0")
    events = feed(tracker, bad())
    assert [e.kind for e in events] == ["alarm"]
    assert events[0].detail["consecutive"] == 3
    assert tracker.active("t0")
    assert feed(tracker, bad(), bad()) == [], "an active alarm is not raised again"


def test_a_healthy_decision_resets_the_streak():
    tracker = AlarmTracker(debounce=3, clear_after=2, cooldown_s=0, clock=FakeClock())
    assert feed(tracker, bad(), bad(), good(), bad(), bad()) == []
    assert [e.kind for e in feed(tracker, bad())] == ["alarm"]


def test_clear_after_clear_after_healthy_decisions():
    tracker = AlarmTracker(debounce=1, clear_after=3, cooldown_s=0, clock=FakeClock())
    assert [e.kind for e in feed(tracker, bad())] == ["alarm"]
    assert feed(tracker, good(), good()) == []
    # An anomalous decision in between restarts the healthy count.
    assert feed(tracker, bad(), good(), good()) == []
    assert tracker.active("t0")
    events = feed(tracker, good())
    assert [e.kind for e in events] == ["clear"]
    assert events[0].groups == ()
    assert not tracker.active("t0")
    assert feed(tracker, good(), good(), good(), good()) == [], "cleared only once"


def test_healthy_decisions_without_an_alarm_produce_nothing():
    tracker = AlarmTracker(debounce=1, clear_after=1, cooldown_s=0, clock=FakeClock())
    assert feed(tracker, *(good() for _ in range(5))) == []


def test_cooldown_suppresses_a_second_alarm_then_allows_it():
    clock = FakeClock()
    tracker = AlarmTracker(debounce=1, clear_after=1, cooldown_s=30, clock=clock)
    assert [e.kind for e in feed(tracker, bad(), good())] == ["alarm", "clear"]
    clock.now += 29.0
    assert feed(tracker, bad()) == []
    assert tracker.suppressed == 1
    assert not tracker.active("t0")
    clock.now += 1.5
    assert [e.kind for e in feed(tracker, bad())] == ["alarm"]
    assert tracker.suppressed == 1


def test_turbines_are_independent():
    clock = FakeClock()
    tracker = AlarmTracker(debounce=2, clear_after=1, cooldown_s=60, clock=clock)
    # Interleaved: neither turbine's streak is broken by the other's decisions.
    events = feed(tracker, bad("a"), good("b"), bad("a"), bad("b"), good("a"), bad("b"))
    assert [(e.kind, e.turbine) for e in events] == [("alarm", "a"), ("clear", "a"),
                                                     ("alarm", "b")]
    # a's cooldown does not hold back c.
    assert [(e.kind, e.turbine) for e in feed(tracker, bad("c"), bad("c"))] == [
        ("alarm", "c")]
    assert tracker.active("b") and tracker.active("c") and not tracker.active("a")


def test_only_turbines_with_something_to_remember_hold_a_state():
    # Ids come from whoever can publish: 10,000 names decided healthy, or anomalous once
    # and healthy again with no cooldown running, leave nothing behind.
    clock = FakeClock()
    tracker = AlarmTracker(debounce=2, clear_after=1, cooldown_s=30, clock=clock)
    feed(tracker, *(good(f"ghost-{i}") for i in range(10_000)))
    feed(tracker, *(d for i in range(1000) for d in (bad(f"blip-{i}"), good(f"blip-{i}"))))
    assert tracker._state == {}
    # An alarm and its cooldown are remembered past the clear, and then forgotten.
    assert [e.kind for e in feed(tracker, bad(), bad(), good())] == ["alarm", "clear"]
    assert list(tracker._state) == ["t0"]
    assert feed(tracker, bad(), bad()) == [] and tracker.suppressed == 1
    clock.now += 31
    feed(tracker, good())
    assert tracker._state == {}


def test_past_max_states_the_least_recently_decided_is_forgotten_and_counted():
    tracker = AlarmTracker(debounce=1, clear_after=1, cooldown_s=0, clock=FakeClock(),
                           max_states=3)
    feed(tracker, bad("a"), bad("b"), bad("c"), bad("a"), bad("d"))
    assert list(tracker._state) == ["c", "a", "d"] and tracker.forgotten == 1
    assert tracker.active("a") and not tracker.active("b")

    b = binding(Recorder(), debounce=5)
    b.tracker.max_states = 2
    b.on_round(round_of([bad(f"t{i}") for i in range(5)], FEATURES, THRESHOLDS))
    assert b.counters.get("alarm_states_forgotten", actuator="rec") == 3


def test_a_new_group_while_active_re_raises_cooldown_permitting():
    clock = FakeClock()
    tracker = AlarmTracker(debounce=1, clear_after=5, cooldown_s=10, clock=clock)
    first = feed(tracker, bad("t0", "vibration"))
    assert [e.groups for e in first] == [("vibration",)]
    clock.now += 5
    assert feed(tracker, bad("t0", "vibration", "rotation")) == [], "within cooldown"
    assert tracker.suppressed == 1
    clock.now += 6
    events = feed(tracker, bad("t0", "vibration", "rotation"))
    assert [e.kind for e in events] == ["alarm"]
    assert events[0].groups == ("vibration", "rotation")
    clock.now += 60
    # Groups already alarmed (or a subset) do not re-raise.
    assert feed(tracker, bad("t0", "rotation"), bad("t0", "vibration")) == []
    events = feed(tracker, bad("t0", "voltage"))
    assert events[0].groups == ("vibration", "rotation", "voltage")


def test_alarm_event_carries_values_thresholds_model_and_primary():
    tracker = AlarmTracker(debounce=2, clear_after=1, cooldown_s=0, clock=FakeClock())
    d = decision("t7", "vibration", "voltage", primary="voltage", at=1234.5)
    (event,) = feed(tracker, d, d)
    assert event.kind == "alarm"
    assert event.turbine == "t7"
    assert event.pipeline == "p"
    assert event.time == 1234.5
    assert event.model == MODEL
    assert event.values == dict(zip(FEATURES, d.values, strict=True))
    assert event.thresholds == dict(zip(FEATURES, THRESHOLDS, strict=True))
    assert event.groups == ("vibration", "voltage")
    assert event.detail == {"consecutive": 2, "primary": "voltage", "rows": d.rows}
    as_dict = event.to_dict()
    assert as_dict["detail"]["primary"] == "voltage"
    assert as_dict["model"] == {"name": "windturbine", "version": 3}


# -- ActuatorBinding ----------------------------------------------------------------------


class Recorder(Component):
    """A real actuator that keeps what it handles; raises for turbines in ``fail_for``."""

    def __init__(self, fail_for: tuple[str, ...] = ()) -> None:
        self.events: list[Event] = []
        self.fail_for = fail_for

    async def handle(self, event: Event) -> None:
        if event.turbine in self.fail_for:
            raise RuntimeError(f"cannot act on {event.turbine}")
        self.events.append(event)


def binding(actuator, **config) -> ActuatorBinding:
    cfg = ActuatorConfig.model_validate({"type": "test", "inputs": ["p"], **config})
    return ActuatorBinding("rec", cfg, actuator, Counters())


def sensor(kind: str, turbine: str = "t0") -> Event:
    return Event(kind=kind, pipeline="p", turbine=turbine, time=1.0)


async def run_until_delivered(b: ActuatorBinding, total: int) -> None:
    task = asyncio.create_task(b.run())
    try:
        async with asyncio.timeout(2.0):
            while True:
                done = b.counters.total("events_delivered") + b.counters.total(
                    "actuator_errors")
                if done >= total:
                    break
                await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_events_are_filtered_by_kind():
    actuator = Recorder()
    b = binding(actuator, events=["alarm", "sensor_stale"], debounce=1, clear_after=1,
                cooldown_s=0)
    b.on_round(round_of([decision("t0", "voltage"), decision("t0")], FEATURES, THRESHOLDS))
    b.on_event(sensor("sensor_stale"))
    b.on_event(sensor("sensor_recovered"))
    assert len(b.queue) == 2
    await run_until_delivered(b, 2)
    assert [e.kind for e in actuator.events] == ["alarm", "sensor_stale"]
    assert b.counters.get("events_delivered", actuator="rec", kind="alarm") == 1
    assert b.counters.get("events_delivered", actuator="rec", kind="sensor_stale") == 1


async def test_a_failing_actuator_is_counted_and_does_not_stop_delivery():
    actuator = Recorder(fail_for=("bad",))
    b = binding(actuator)
    for turbine in ("t0", "bad", "t1", "bad", "t2"):
        b.on_event(sensor("sensor_stale", turbine))
    await run_until_delivered(b, 5)
    assert [e.turbine for e in actuator.events] == ["t0", "t1", "t2"]
    assert b.counters.get("actuator_errors", actuator="rec") == 2
    assert b.counters.total("events_delivered") == 3


async def test_drain_delivers_what_is_queued_and_returns():
    actuator = Recorder(fail_for=("bad",))
    b = binding(actuator)
    for turbine in ("t0", "bad", "t1"):
        b.on_event(sensor("sensor_stale", turbine))
    await asyncio.wait_for(b.drain(), 1.0)
    assert [e.turbine for e in actuator.events] == ["t0", "t1"]
    assert len(b.queue) == 0
    await asyncio.wait_for(b.drain(), 1.0)  # nothing queued: returns at once


def test_queue_overflow_is_counted_as_events_dropped():
    b = binding(Recorder(), queue={"size": 2, "overflow": "drop_oldest"})
    for turbine in ("t0", "t1", "t2", "t3", "t4"):
        b.on_event(sensor("sensor_stale", turbine))
    assert b.counters.get("events_dropped", actuator="rec") == 3
    assert [e.turbine for e in b.queue._items] == ["t3", "t4"]

    b = binding(Recorder(), queue={"size": 2, "overflow": "drop_newest"})
    for turbine in ("t0", "t1", "t2"):
        b.on_event(sensor("sensor_stale", turbine))
    assert b.counters.get("events_dropped", actuator="rec") == 1
    assert [e.turbine for e in b.queue._items] == ["t0", "t1"]


def test_binding_applies_its_config_to_the_tracker():
    b = binding(Recorder(), debounce=3, clear_after=2, cooldown_s=0)
    b.on_round(round_of([decision("t0", "rotation")] * 2, FEATURES, THRESHOLDS))
    assert len(b.queue) == 0
    b.on_round(round_of([decision("t0", "rotation")], FEATURES, THRESHOLDS))
    assert [e.kind for e in b.queue._items] == ["alarm"]
