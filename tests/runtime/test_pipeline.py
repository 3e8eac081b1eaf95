"""One Pipeline with the real wind-turbine preprocessor and the real ONNX backend, fed
rows from the simulated wind farm."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from edged.base.metrics import Counters
from edged.builtin.onnx import OnnxBackend, OnnxConfig
from edged.builtin.windturbine import WindTurbineConfig, WindTurbineStage, params_for
from edged.config import PipelineSpec
from edged.plugin.components import Readings
from edged.plugin.events import Decision, Event, Round
from edged.runtime.pipeline import Pipeline
from edged.testing import stop_task
from edged.windturbine import layout
from edged.windturbine.simulator import WindFarm
from tests.support.clock import FakeClock

COLUMNS = np.array([layout.DATASET_COLUMNS.index(c) for c in layout.INPUTS])
HISTORY = 500


class Subscriber:
    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.events: list[Event] = []

    def on_round(self, round: Round) -> None:
        assert tuple(round.features) == layout.FEATURES
        assert len(round.thresholds) == len(layout.FEATURES)
        # One object per round: its decisions, and the history behind each, row by row.
        assert {(d.pipeline, d.time) for d in round.decisions} == {(round.pipeline, round.time)}
        assert round.window is not None and len(round.window) == len(round.decisions)
        self.decisions.extend(round.decisions)

    def on_event(self, event: Event) -> None:
        self.events.append(event)


class Farm:
    """The simulated farm, as Readings in the preprocessor's input columns."""

    def __init__(self, turbines: int = 3, seed: int = 11) -> None:
        self.farm = WindFarm(turbines=turbines, rate_hz=20, seed=seed)
        self.ids = tuple(self.farm.turbine_ids)

    def readings(self, ticks: int, only: tuple[int, ...] | None = None) -> Readings:
        rows = self.farm.ticks(ticks)[:, :, COLUMNS]  # (ticks, turbines, inputs)
        keep = list(range(len(self.ids))) if only is None else list(only)
        rows = rows[:, keep]
        ids = tuple(self.ids[i] for i in keep)
        return Readings(ids * ticks, rows.reshape(-1, len(COLUMNS)))


def windturbine_parts(**spec_options):
    """The built-in model's backend and stage, and a spec of a pipeline reading the farm."""
    backend = OnnxBackend(OnnxConfig(type="onnx"))
    stage = WindTurbineStage(params_for(WindTurbineConfig(type="windturbine"),
                                        backend.manifest))
    spec = PipelineSpec(inputs=["farm"], preprocessor={"type": "windturbine"},
                        inference={"type": "onnx"}, **spec_options)
    return backend, stage, spec


@pytest.fixture
def clock() -> FakeClock:
    """The pipeline's monotonic clock: tests of staleness step it instead of sleeping."""
    return FakeClock()


@pytest.fixture
async def pipeline(clock):
    backend, stage, spec = windturbine_parts(stale_after_s=0.2, max_turbines=4)
    async with backend:
        pipe = Pipeline("turbines", spec, stage, backend, Counters())
        pipe.monotonic_clock = clock
        pipe.subscribers.append(Subscriber())
        yield pipe


def history(pipe: Pipeline, turbine: str) -> np.ndarray:
    return pipe.buffers.gather(np.array([pipe.buffers.ids[turbine]])).copy()


def count(pipe: Pipeline, turbine: str) -> int:
    return int(pipe.buffers.count[pipe.buffers.ids[turbine]])


async def test_no_decision_before_a_full_history_then_decisions(pipeline):
    pipeline.wall_clock = FakeClock(1_764_000_000.0)
    farm = Farm()
    assert pipeline.preprocessor.history == HISTORY
    assert pipeline.ingest([farm.readings(HISTORY - 1)]) == 3 * (HISTORY - 1)
    assert await pipeline.decide_once() == []
    # One more row for turbine-1 only: it alone has a full history.
    pipeline.ingest([farm.readings(1, only=(1,))])
    decisions = await pipeline.decide_once()
    assert [d.turbine for d in decisions] == ["turbine-1"]
    pipeline.ingest([farm.readings(1, only=(0, 2))])
    decisions = await pipeline.decide_once()
    assert sorted(d.turbine for d in decisions) == ["turbine-0", "turbine-2"]

    d = decisions[0]
    assert d.pipeline == "turbines"
    assert d.model == pipeline.backend.model
    assert len(d.values) == len(d.anomalous) == len(layout.FEATURES)
    assert all(np.isfinite(d.values))
    assert set(d.groups) == set(layout.GROUPS)
    assert d.primary is None or d.groups[d.primary]
    assert d.time == pipeline.wall_clock()
    assert pipeline.subscribers[0].decisions[-2:] == decisions
    assert pipeline.counters.get("decisions", pipeline="turbines") == 3
    assert pipeline.counters.get("rows_accepted", pipeline="turbines") == 3 * HISTORY


async def test_a_turbine_is_decided_again_only_after_new_rows(pipeline):
    farm = Farm()
    pipeline.ingest([farm.readings(HISTORY)])
    assert len(await pipeline.decide_once()) == 3
    assert await pipeline.decide_once() == []
    pipeline.ingest([farm.readings(2, only=(2,))])
    decisions = await pipeline.decide_once()
    assert [d.turbine for d in decisions] == ["turbine-2"]
    assert await pipeline.decide_once() == []


async def test_injected_fault_is_flagged_in_its_group(pipeline):
    farm = Farm()
    pipeline.ingest([farm.readings(HISTORY)])
    healthy = {d.turbine: d for d in await pipeline.decide_once()}
    farm.farm.inject(0, "voltage", duration=5.0)
    pipeline.ingest([farm.readings(40)])  # 2 s of faulty voltage on turbine-0
    decisions = {d.turbine: d for d in await pipeline.decide_once()}
    assert decisions["turbine-0"].groups["voltage"]
    assert decisions["turbine-0"].primary == "voltage"
    assert not healthy["turbine-0"].groups["voltage"]


async def test_non_finite_rows_are_rejected_without_touching_the_buffer(pipeline):
    farm = Farm()
    pipeline.ingest([farm.readings(HISTORY)])
    await pipeline.decide_once()
    before = {t: history(pipeline, t) for t in farm.ids}
    counts = {t: count(pipeline, t) for t in farm.ids}

    batch = farm.readings(4)  # rows: turbine-0, 1, 2, 0, 1, 2, ...
    values = batch.values.copy()
    values[0, 2] = np.nan  # turbine-0's rows only
    values[3, 6] = np.inf
    values[6, 0] = -np.inf
    values[9, 5] = np.nan
    accepted = pipeline.ingest([Readings(batch.turbines, values)])
    assert accepted == 8
    assert pipeline.counters.get("rows_rejected", pipeline="turbines",
                                 reason="not_finite") == 4
    np.testing.assert_array_equal(history(pipeline, "turbine-0"), before["turbine-0"])
    assert count(pipeline, "turbine-0") == counts["turbine-0"]
    for turbine in ("turbine-1", "turbine-2"):
        assert count(pipeline, turbine) == counts[turbine] + 4
        assert not np.array_equal(history(pipeline, turbine), before[turbine])
    # turbine-0 has nothing new, so only the others are decided.
    assert sorted(d.turbine for d in await pipeline.decide_once()) == ["turbine-1",
                                                                        "turbine-2"]


async def test_wrong_width_batches_are_rejected_and_others_in_the_round_kept(pipeline):
    farm = Farm()
    pipeline.ingest([farm.readings(HISTORY)])
    before = {t: history(pipeline, t) for t in farm.ids}

    good = farm.readings(1, only=(1,))
    narrow = farm.readings(2, only=(0,))
    narrow = Readings(narrow.turbines, narrow.values[:, :-1])  # 6 columns, not 7
    wide = farm.readings(1, only=(0,))
    wide = Readings(wide.turbines, np.hstack([wide.values, wide.values]))
    flat = Readings(("turbine-0",), farm.readings(1, only=(0,)).values[0])  # 1-D
    assert pipeline.ingest([narrow, good, wide, flat]) == 1
    assert pipeline.counters.get("rows_rejected", pipeline="turbines",
                                 reason="wrong_width") == 4
    np.testing.assert_array_equal(history(pipeline, "turbine-0"), before["turbine-0"])
    assert count(pipeline, "turbine-1") == HISTORY + 1
    assert pipeline.ingest([narrow]) == 0
    assert pipeline.counters.get("rows_rejected", pipeline="turbines",
                                 reason="wrong_width") == 6


async def test_max_turbines_exceeded_is_counted(pipeline):
    farm = Farm(turbines=6)
    accepted = pipeline.ingest([farm.readings(10)])
    assert accepted == 4 * 10
    assert pipeline.buffers.names == [f"turbine-{i}" for i in range(4)]
    assert pipeline.counters.get("rows_rejected", pipeline="turbines",
                                 reason="too_many_turbines") == 2 * 10


async def test_stale_once_then_recovered_after_new_rows(pipeline, clock):
    farm = Farm()
    subscriber = pipeline.subscribers[0]
    pipeline.ingest([farm.readings(HISTORY)])  # watched: the histories have filled
    pipeline.check_stale(clock())
    assert subscriber.events == []

    later = clock() + pipeline.spec.stale_after_s + 1.0
    pipeline.check_stale(later)
    assert sorted((e.kind, e.turbine) for e in subscriber.events) == [
        ("sensor_stale", t) for t in farm.ids]
    assert all(e.detail["silent_s"] > pipeline.spec.stale_after_s
               for e in subscriber.events)
    pipeline.check_stale(later + 1.0)
    assert len(subscriber.events) == 3, "sensor_stale is raised once per silence"
    assert pipeline.counters.get("sensor_stale", pipeline="turbines") == 3

    # The pipeline's own time: let every turbine go silent, then hear from turbine-1 again.
    clock.advance(pipeline.spec.stale_after_s + 0.05)
    subscriber.events.clear()
    pipeline.check_stale(clock())
    assert subscriber.events == [], "still stale: no new events"
    pipeline.ingest([farm.readings(1, only=(1,))])
    pipeline.check_stale(clock())
    assert [(e.kind, e.turbine) for e in subscriber.events] == [
        ("sensor_recovered", "turbine-1")]
    assert subscriber.events[0].pipeline == "turbines"


async def test_loops_run_together(pipeline):
    """ingest_loop + decide_loop as the graph runs them: emitted rows become decisions."""
    farm = Farm()
    subscriber = pipeline.subscribers[0]
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(pipeline.ingest_loop()), tg.create_task(pipeline.decide_loop())]
        await pipeline.emit(farm.readings(HISTORY))
        async with asyncio.timeout(5):
            while True:
                if len({d.turbine for d in subscriber.decisions}) == 3:
                    break
                await asyncio.sleep(0.02)
        for task in tasks:
            task.cancel()
    assert pipeline.counters.get("rows_accepted", pipeline="turbines") == 3 * HISTORY


async def test_a_turbine_heard_only_through_bad_rows_is_not_tracked(pipeline, clock):
    """Garbage under a new turbine id must neither take a max_turbines slot nor raise
    sensor_stale for a turbine that never sent a valid row."""
    farm = Farm()
    pipeline.ingest([farm.readings(5)])
    garbage = Readings(("ghost-1", "ghost-2"), np.full((2, len(layout.INPUTS)), np.nan))
    assert pipeline.ingest([garbage]) == 0
    assert pipeline.buffers.names == list(farm.ids)
    assert pipeline.counters.get("rows_rejected", pipeline="turbines",
                                 reason="not_finite") == 2
    pipeline.check_stale(clock())
    assert pipeline.subscribers[0].events == []
    # The fourth slot is still free for a real turbine.
    assert pipeline.ingest([Farm(turbines=4).readings(1, only=(3,))]) == 1
    assert pipeline.buffers.names[-1] == "turbine-3"


async def test_a_batch_whose_turbines_and_rows_disagree_is_rejected(pipeline):
    farm = Farm()
    pipeline.ingest([farm.readings(HISTORY)])
    before = history(pipeline, "turbine-0")
    batch = farm.readings(1)
    short = Readings(batch.turbines[:2], batch.values)  # 3 rows, 2 turbine ids
    assert pipeline.ingest([short, farm.readings(1, only=(1,))]) == 1
    assert pipeline.counters.get("rows_rejected", pipeline="turbines",
                                 reason="wrong_length") == 3
    np.testing.assert_array_equal(history(pipeline, "turbine-0"), before)


async def test_decisions_are_spread_over_the_interval():
    """The decide loop's schedule: every turbine decided at once when its history fills,
    then once per interval at its own phase, on the first row after it is due — so a
    round holds a fraction of the fleet, not all of it."""
    backend, stage, spec = windturbine_parts(interval_s=0.5)
    farm = Farm(turbines=40)
    clock = FakeClock()
    async with backend:
        pipe = Pipeline("turbines", spec, stage, backend, Counters())
        pipe.monotonic_clock = clock
        pipe.ingest([farm.readings(HISTORY)])
        first = pipe.scheduled(clock())
        assert len(first) == 40  # a full history is decided at once
        await pipe.decide_once(first)
        assert len(pipe.scheduled(clock())) == 0  # nothing new, nothing due
        pipe.ingest([farm.readings(1)])
        now = clock()
        # Due times are spread over the next interval...
        due = np.sort(pipe._due_at[:40]) - now
        assert due.max() - due.min() > 0.8 * spec.interval_s
        # ...so a quarter of an interval later about a quarter of the fleet is due,
        # and only once a row has arrived after its due time.
        early = pipe.scheduled(now + spec.interval_s / 4)
        assert len(early) <= 3  # only turbines whose row came after their due time
        assert (pipe._due_at[early] <= pipe.buffers.last_seen[early]).all()
        clock.advance(spec.interval_s / 4)
        pipe.ingest([farm.readings(1)])
        round_ = pipe.scheduled(clock())
        assert 3 <= len(round_) <= 20
        await pipe.decide_once(round_)
        assert set(pipe.scheduled(clock())).isdisjoint(round_)


async def test_a_fleet_due_at_once_is_decided_in_rounds_of_at_most_max_round():
    """40 histories filling up together, rounds of at most 8: five rounds, every turbine
    decided once, the most overdue (earliest due: the largest phase) first."""
    backend, stage, spec = windturbine_parts(interval_s=60)
    farm = Farm(turbines=40)
    rounds: list[list[str]] = []
    all_decided = asyncio.Event()

    class Rounds(Subscriber):
        def on_round(self, round: Round) -> None:
            super().on_round(round)
            rounds.append([d.turbine for d in round.decisions])
            if sum(map(len, rounds)) >= 40:
                all_decided.set()

    async with backend:
        pipe = Pipeline("turbines", spec, stage, backend, Counters())
        pipe.max_round = 8
        pipe.subscribers.append(Rounds())
        pipe.ingest([farm.readings(HISTORY)])
        assert len(pipe.scheduled(pipe.monotonic_clock())) == 40  # all due: their times set
        by_due = np.argsort(pipe._due_at[:40], kind="stable")
        assert len(set(pipe._due_at[:40])) == 40
        loop = asyncio.create_task(pipe.decide_loop())
        try:
            async with asyncio.timeout(30):
                await all_decided.wait()
        finally:
            await stop_task(loop)
    assert [len(r) for r in rounds] == [8] * 5
    decided = [turbine for r in rounds for turbine in r]
    assert sorted(decided) == sorted(farm.ids)  # each once
    expected = [pipe.buffers.names[slot] for slot in by_due]
    assert [sorted(r) for r in rounds] == [sorted(expected[i:i + 8]) for i in range(0, 40, 8)]
