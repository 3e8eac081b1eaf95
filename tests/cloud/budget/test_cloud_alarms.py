"""Alarms to the cloud (cloud.alarms) from a running daemon graph, over mosquitto through
the real cloud link: the edged.plugin.alarm_payload payload on the alarms topic, charged as
critical,
and alarms raised while the link is down published once it is back, in order."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edged.plugin.alarm_payload import KEYS
from edged.plugin.events import Event
from tests.support import Mosquitto

from .conftest import THING, Forwarder, Recorder, daemon, eventually, write_config

ALARMS = f"edged/{THING}/alarms"


async def test_a_pipeline_alarm_reaches_the_cloud_as_the_alarm_payload(tmp_path: Path):
    cloud = "  alarms: {}\n  data_budget: {daily_mb: 1}\n"
    with Mosquitto(tmp_path) as broker:
        async with Recorder(broker.host, broker.port, [ALARMS]) as recorder, \
                daemon(write_config(tmp_path, broker.port, cloud,
                                    faults="1:voltage@0-600")) as graph:
            await eventually(lambda: recorder.on(ALARMS))
            faulty = graph.sources["farm"].component.injections()[0].turbine
        await eventually(lambda: recorder.bytes_published()
                         == graph.budget.usage()["used_bytes"]["critical"])
    alarm = json.loads(recorder.on(ALARMS)[0])
    assert tuple(alarm) == KEYS
    assert alarm["event"] == "alarm" and alarm["device"] == THING
    assert alarm["pipeline"] == "turbines" and alarm["turbine"] == faulty
    assert alarm["groups"] and alarm["model"] == {"name": "windturbine", "version": 1}
    assert alarm["id"].startswith(f"{THING}:turbines:{faulty}:")
    assert graph.counters.get("cloud_alarms", result="sent") == len(recorder.on(ALARMS))
    assert graph.budget.usage()["used_bytes"]["heartbeat"] == 0


async def test_alarms_raised_while_the_link_is_down_go_out_in_order_when_it_is_back(
        tmp_path: Path):
    # Three kept while down: the fourth alarm pushes the oldest out.
    cloud = "  alarms: {events: [alarm], debounce: 1, cooldown_s: 600, queue_size: 3}\n"
    with Mosquitto(tmp_path) as broker, Forwarder(broker.port) as forwarder:
        async with Recorder(broker.host, broker.port, [ALARMS]) as recorder, \
                daemon(write_config(tmp_path, forwarder.port, cloud)) as graph:
            link, alarms = graph.cloud.link, graph.cloud.alarms
            await eventually(lambda: link.connected)
            before = len(recorder.on(ALARMS))  # what a healthy farm raised, if anything
            forwarder.cut()
            await eventually(lambda: not link.connected)
            farm = graph.sources["farm"].component
            for turbine in range(4):
                farm.inject(turbine, "voltage")
            await eventually(lambda: graph.counters.get("cloud_alarms",
                                                        result="dropped") >= 1)
            waiting = alarms.pending
            assert len(waiting) == 3 and not link.connected
            forwarder.restore()
            await eventually(lambda: len(recorder.on(ALARMS)) >= before + 3)
    received = [json.loads(p) for p in recorder.on(ALARMS)[before:]]
    assert [a["turbine"] for a in received] == [e.turbine for e in waiting]
    assert [a["timestamp"] for a in received] == sorted(a["timestamp"] for a in received)
    assert all(a["event"] == "alarm" for a in received)
    assert graph.counters.get("cloud_alarms", result="sent") == before + 3
    # Four turbines alarmed once each (the cooldown holds back re-raises): one dropped.
    assert graph.counters.get("cloud_alarms", result="dropped") == 1
    assert len({a["turbine"] for a in received}) == 3


async def test_an_event_that_cannot_be_encoded_is_counted_and_the_next_goes_out(
        tmp_path: Path):
    circular: dict = {}
    circular["self"] = circular
    bad = Event(kind="alarm", pipeline="turbines", turbine="t-bad", time=time.time(),
                detail={"loop": circular})
    good = Event(kind="clear", pipeline="turbines", turbine="t-good", time=time.time())
    with Mosquitto(tmp_path) as broker:
        async with Recorder(broker.host, broker.port, [ALARMS]) as recorder, \
                daemon(write_config(tmp_path, broker.port, "  alarms: {}\n")) as graph:
            graph.cloud.alarms.on_event(bad)
            graph.cloud.alarms.on_event(good)
            await eventually(lambda: any(json.loads(p)["turbine"] == "t-good"
                                         for p in recorder.on(ALARMS)))
    assert graph.counters.get("cloud_alarms", result="unencodable") == 1
    assert not any(json.loads(p)["turbine"] == "t-bad" for p in recorder.on(ALARMS))
