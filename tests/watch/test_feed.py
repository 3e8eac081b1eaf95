"""The event feed: decisions and events fanned out to subscriptions, each line encoded
once, a subscription that falls behind ended and counted, never waited for."""

from __future__ import annotations

import asyncio
import json

import pytest

from edged.base.metrics import Counters
from edged.plugin.events import Event
from edged.watch.feed import EventFeed, FeedFull, Overflowed
from tests.support.payloads import (
    FEATURES,
    THRESHOLDS,
    assert_valid,
    decision,
    tracked_events,
)
from tests.support.rounds import round_of


def a_round(*anomalous_turbines: str, healthy: tuple[str, ...] = ("turbine-0",)):
    decisions = [decision(t) for t in healthy] + [
        decision(t, ("vibration",)) for t in anomalous_turbines]
    return round_of(decisions, FEATURES, THRESHOLDS)


def lines_of(subscription) -> list[dict]:
    return [json.loads(line) for line in subscription._lines]


def test_without_subscribers_a_round_encodes_nothing(monkeypatch):
    feed = EventFeed("gw-7", Counters())
    monkeypatch.setattr("edged.watch.feed.decision_record",
                        lambda *a: pytest.fail("encoded with nobody watching"))
    feed.on_round(a_round("turbine-2"))
    none = feed.subscribe("none")  # alarms only: decisions are not encoded either
    feed.on_round(a_round("turbine-2"))
    assert lines_of(none) == []


def test_each_subscription_gets_the_decisions_it_asked_for():
    feed = EventFeed("gw-7", Counters())
    every = feed.subscribe("all")
    anomalies = feed.subscribe("anomalies")
    one = feed.subscribe("all", turbine="turbine-2")
    feed.on_round(a_round("turbine-2", "turbine-3"))
    assert [(r["turbine"], r["anomalous"]) for r in lines_of(every)] == [
        ("turbine-0", False), ("turbine-2", True), ("turbine-3", True)]
    assert [r["turbine"] for r in lines_of(anomalies)] == ["turbine-2", "turbine-3"]
    assert [r["turbine"] for r in lines_of(one)] == ["turbine-2"]
    record = lines_of(every)[1]
    assert_valid(record)
    assert (record["groups"], record["primary"], record["flagged"]) == (
        ["vibration"], "vibration", ["roll", "pitch", "yaw"])
    # One encoding per decision, whoever wants it: the very same bytes object.
    assert every._lines[1] is anomalies._lines[0] is one._lines[0]


def test_events_reach_every_subscription_once_whoever_raised_them():
    feed = EventFeed("gw-7", Counters())
    watcher = feed.subscribe("none")
    alarm, clear, stale, recovered, summary = tracked_events()
    # Two actuators with the same settings raise the same alarm: sent once.
    feed.on_actuator_event(alarm)
    feed.on_actuator_event(alarm)
    feed.on_actuator_event(stale)  # a binding's sensor event: the pipeline's is used
    feed.on_event(stale)
    feed.on_actuator_event(clear)
    feed.on_event(recovered)
    feed.on_event(summary)
    records = lines_of(watcher)
    assert [r["event"] for r in records] == ["alarm", "sensor_stale", "clear",
                                             "sensor_recovered", "sensor_stale"]
    for record in records:
        assert_valid(record)


def test_a_turbine_filter_still_shows_summaries_of_many():
    feed = EventFeed("gw-7", Counters())
    one = feed.subscribe("none", turbine="turbine-9")
    *_, summary = tracked_events()
    feed.on_event(summary)  # turbine "*": turbine-9 may be among them
    feed.on_actuator_event(tracked_events()[0])  # turbine-2's alarm: not for this watch
    assert [r["turbine"] for r in lines_of(one)] == ["*"]


def test_at_most_max_subscribers():
    feed = EventFeed("gw-7", Counters(), max_subscribers=2)
    first = feed.subscribe()
    feed.subscribe()
    with pytest.raises(FeedFull):
        feed.subscribe()
    first.close()
    feed.subscribe()
    assert feed.subscriptions == 2


async def test_a_subscription_that_falls_behind_is_ended_and_counted():
    counters = Counters()
    feed = EventFeed("gw-7", counters)
    slow = feed.subscribe("all", limit=10)
    fast = feed.subscribe("all", limit=10_000)
    overflowed = []
    slow.on_overflow = lambda: overflowed.append(True)
    for _ in range(6):  # 2 decisions a round: the 11th line overflows the slow one
        feed.on_round(a_round("turbine-2"))
    assert overflowed == [True]
    assert feed.subscriptions == 1 and counters.get("watch_clients_dropped",
                                                    reason="too_slow") == 1
    with pytest.raises(Overflowed):
        await slow.next_lines()
    assert len(await fast.next_lines()) == 12  # the others never noticed


async def test_next_lines_waits_for_the_next_line():
    feed = EventFeed("gw-7", Counters())
    watcher = feed.subscribe("none")
    waiting = asyncio.create_task(watcher.next_lines())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    feed.on_event(Event(kind="sensor_stale", pipeline="turbines", turbine="t1",
                        time=1718000000.0, detail={"silent_s": 6.0}))
    [line] = await asyncio.wait_for(waiting, 5)
    assert json.loads(line)["event"] == "sensor_stale" and line.endswith(b"\n")
