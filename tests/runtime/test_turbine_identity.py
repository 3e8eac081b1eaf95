"""Turbine ids come from outside: none may hold a slot for good, long ones are refused,
and a flood of them cannot flood the actuators with sensor events (issue 13, item 6).
One Pipeline with the real preprocessor and ONNX backend, fed the simulated farm."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from edged.base.metrics import Counters
from edged.builtin.onnx import OnnxBackend, OnnxConfig
from edged.builtin.windturbine import WindTurbineConfig, WindTurbineStage, params_for
from edged.config import PipelineSpec
from edged.plugin.components import Readings
from edged.runtime.pipeline import MAX_SENSOR_EVENTS, SUMMARY_TURBINE, Pipeline
from tests.runtime.test_pipeline import HISTORY, Farm, Subscriber
from tests.support.clock import FakeClock

STALE_S = 0.2


def make(backend: OnnxBackend, max_turbines: int, clock: FakeClock | None = None,
         **spec) -> Pipeline:
    """A pipeline on ``clock`` (stepped by the test, never by sleeping)."""
    stage = WindTurbineStage(params_for(WindTurbineConfig(type="windturbine"),
                                        backend.manifest))
    spec = PipelineSpec(inputs=["farm"], preprocessor={"type": "windturbine"},
                        inference={"type": "onnx"}, stale_after_s=STALE_S,
                        max_turbines=max_turbines, **spec)
    pipe = Pipeline("turbines", spec, stage, backend, Counters())
    pipe.monotonic_clock = clock or FakeClock()
    pipe.subscribers.append(Subscriber())
    return pipe


@pytest.fixture
async def backend():
    async with OnnxBackend(OnnxConfig(type="onnx")) as onnx:
        yield onnx


def ghosts(names: list[str], farm: Farm) -> Readings:
    """One healthy-looking row for each of ``names``."""
    rows = farm.readings(len(names), only=(0,)).values
    return Readings(tuple(names), rows)


def rename(readings: Readings, name: str) -> Readings:
    return Readings((name,) * len(readings.turbines), readings.values)


def rejected(pipe: Pipeline, reason: str) -> int:
    return pipe.counters.get("rows_rejected", pipeline="turbines", reason=reason)


def evicted(pipe: Pipeline, reason: str) -> int:
    return pipe.counters.get("turbines_evicted", pipeline="turbines", reason=reason)


async def test_stale_ghosts_give_their_slots_to_a_new_turbine(backend):
    clock = FakeClock()
    pipe = make(backend, max_turbines=4, clock=clock)
    farm = Farm(turbines=1)
    pipe.ingest([ghosts([f"ghost-{i}" for i in range(10)], farm)])
    assert len(pipe.buffers.names) == 4 and rejected(pipe, "too_many_turbines") == 6
    # Ghosts heard from just now hold their slots: nothing proves them dead yet.
    assert pipe.ingest([rename(farm.readings(1), "real")]) == 0
    assert rejected(pipe, "too_many_turbines") == 7

    clock.advance(STALE_S + 0.05)
    pipe.ingest([ghosts(["ghost-3"], farm)])  # one ghost speaks again: not a victim
    real = rename(farm.readings(HISTORY), "real")
    assert pipe.ingest([real]) == HISTORY
    assert evicted(pipe, "full") == 1
    assert "ghost-0" not in pipe.buffers.ids and "ghost-3" in pipe.buffers.ids
    # Its history is its own rows only, never the evicted ghost's.
    slot = pipe.buffers.ids["real"]
    assert pipe.buffers.count[slot] == HISTORY
    np.testing.assert_allclose(pipe.buffers.gather(np.array([slot]))[0],
                               pipe.preprocessor.row_features(real.values))
    decisions = await pipe.decide_once()
    assert [d.turbine for d in decisions] == ["real"] and decisions[0].rows == HISTORY


async def test_a_batch_never_loses_a_slot_it_writes_to(backend):
    """When full, the stale turbines whose rows are in the same batch are not victims:
    their rows would land in the new turbine's ring."""
    clock = FakeClock()
    pipe = make(backend, max_turbines=2, clock=clock)
    farm = Farm(turbines=1)
    pipe.ingest([ghosts(["a", "b"], farm)])
    clock.advance(STALE_S + 0.05)
    both = Readings(("a", "c", "b"), farm.readings(3, only=(0,)).values)
    assert pipe.ingest([both]) == 2  # a and b keep their slots; c finds none
    assert rejected(pipe, "too_many_turbines") == 1 and evicted(pipe, "full") == 0
    assert sorted(pipe.buffers.names) == ["a", "b"]


async def test_silent_turbines_are_evicted_and_come_back_new(backend):
    clock = FakeClock()
    pipe = make(backend, max_turbines=10, clock=clock, evict_after_s=30)
    farm = Farm(turbines=3)
    pipe.ingest([farm.readings(HISTORY)])
    assert len(await pipe.decide_once()) == 3
    clock.advance(10)
    pipe.check_stale(clock())  # stale, not yet evicted
    assert len(pipe.subscribers[0].events) == 3 and evicted(pipe, "silent") == 0
    # turbine-1 keeps talking; the others are evicted once silent for evict_after_s.
    clock.advance(21)
    pipe.ingest([farm.readings(HISTORY, only=(1,))])
    events = pipe.subscribers[0].events
    events.clear()
    pipe.check_stale(clock())
    assert evicted(pipe, "silent") == 2 and pipe.buffers.names == ["turbine-1"]
    # turbine-1 moved into slot 0 with its state: it was stale, now heard again.
    assert [(e.kind, e.turbine) for e in events] == [("sensor_recovered", "turbine-1")]
    assert pipe._stale == set() and pipe._decided_at[1:].tolist() == [0, 0]
    assert pipe._due_at[1:].tolist() == [-1.0, -1.0]
    assert [d.turbine for d in await pipe.decide_once()] == ["turbine-1"]

    # An evicted turbine that comes back is a new one: empty history, no event.
    pipe.ingest([farm.readings(5, only=(2,))])
    assert pipe.buffers.count[pipe.buffers.ids["turbine-2"]] == 5
    pipe.check_stale(clock())
    assert len(events) == 1


async def test_a_round_names_its_turbines_as_they_were_when_it_began(backend):
    pipe = make(backend, max_turbines=10)
    farm = Farm(turbines=3)
    pipe.ingest([farm.readings(HISTORY)])
    round_ = asyncio.create_task(pipe.decide_once())
    await asyncio.sleep(0)  # the round is in the worker thread now
    pipe._evict(np.array([0]), "silent")  # turbine-2 moves into slot 0 meanwhile
    assert pipe.buffers.names == ["turbine-2", "turbine-1"]
    assert sorted(d.turbine for d in await round_) == ["turbine-0", "turbine-1", "turbine-2"]


async def test_a_flood_of_stale_turbines_makes_a_few_events(backend):
    clock = FakeClock()
    pipe = make(backend, max_turbines=100, clock=clock)
    farm = Farm(turbines=30)
    pipe.ingest([farm.readings(HISTORY)])
    never_filled = Farm(turbines=5, seed=3)
    pipe.ingest([Readings(tuple(f"ghost-{t}" for t in never_filled.readings(1).turbines),
                          never_filled.readings(1).values)])
    events = pipe.subscribers[0].events
    clock.advance(10)
    pipe.check_stale(clock())
    individual = [e for e in events if e.turbine != SUMMARY_TURBINE]
    summary = [e for e in events if e.turbine == SUMMARY_TURBINE]
    assert len(individual) == MAX_SENSOR_EVENTS
    assert [(e.kind, e.detail) for e in summary] == [("sensor_stale",
                                                      {"turbines": 30 - MAX_SENSOR_EVENTS})]
    # Counted per turbine; ghosts that never filled a history are not watched at all.
    assert pipe.counters.get("sensor_stale", pipeline="turbines") == 30
    events.clear()
    pipe.ingest([farm.readings(1)])
    pipe.check_stale(clock())
    assert len(events) == MAX_SENSOR_EVENTS + 1
    assert events[-1].kind == "sensor_recovered" and events[-1].turbine == SUMMARY_TURBINE


async def test_ids_over_the_limit_are_refused(backend):
    pipe = make(backend, max_turbines=10)
    farm = Farm(turbines=1)
    assert pipe.ingest([ghosts(["t" * 129, "t" * 128], farm)]) == 1
    assert rejected(pipe, "bad_turbine_id") == 1 and pipe.buffers.names == ["t" * 128]
