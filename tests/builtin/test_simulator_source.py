"""The simulator source: history at start, live rows at rate_hz, scheduled and commanded
faults, config validation."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from edged.builtin.simulator import FaultSpec, SimulatorConfig, SimulatorSource
from edged.plugin.components import BuildContext, Readings
from edged.windturbine import layout

VOLTAGE = layout.INPUTS.index("voltage")


def source(tmp_path, **config) -> SimulatorSource:
    cfg = SimulatorConfig.model_validate({"type": "simulator", "seed": 5, **config})
    ctx = BuildContext(name="sources.farm", device_id="test", state_dir=tmp_path,
                       inputs=layout.INPUTS)
    return SimulatorSource(cfg, ctx)


class Collector:
    """An emit target that sorts rows into history (before ``live``) and live."""

    def __init__(self, sim: SimulatorSource) -> None:
        self.sim = sim
        self.history: list[Readings] = []
        self.live: list[tuple[float, Readings]] = []

    async def __call__(self, readings: Readings) -> None:
        assert readings.values.shape == (len(readings.turbines), len(layout.INPUTS))
        if self.sim.live.is_set():
            self.live.append((time.monotonic(), readings))
        else:
            self.history.append(readings)

    def rows(self, batches) -> Counter:
        return Counter(t for b in batches for t in b.turbines)

    def values(self, turbine: str, since: float = 0.0) -> np.ndarray:
        picked = [b.values[np.array(b.turbines) == turbine]
                  for at, b in self.live if at >= since]
        return np.concatenate(picked) if picked else np.zeros((0, len(layout.INPUTS)))


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled(), f"the source ended on its own: {task.exception()!r}"


async def run_for(sim: SimulatorSource, emit, seconds: float) -> None:
    task = asyncio.create_task(sim.run(emit))
    try:
        await asyncio.sleep(seconds)
    finally:
        await stop(task)


async def test_history_at_once_then_live_rows_at_rate_hz(tmp_path):
    sim = source(tmp_path, turbines=3, rate_hz=20, history_s=12)
    collect = Collector(sim)
    task = asyncio.create_task(sim.run(collect))
    try:
        await asyncio.wait_for(sim.live.wait(), 2.0)
        history = collect.rows(collect.history)
        assert history == {f"turbine-{i}": 12 * 20 for i in range(3)}
        # History comes in time order per turbine, in chunks, before any live row.
        assert len(collect.history) > 1
        assert sim.started_at == pytest.approx(time.time(), abs=1.0)
        started = time.monotonic()
        await asyncio.sleep(1.0)
        elapsed = time.monotonic() - started
    finally:
        await stop(task)
    live = collect.rows(b for _, b in collect.live)
    expected = 20 * elapsed
    for turbine in sim.farm.turbine_ids:
        assert 0.7 * expected <= live[turbine] <= 1.3 * expected + 2, (turbine, live)
    assert len(set(live.values())) == 1, "every turbine gets a row each tick"


async def test_no_history_starts_live_at_once(tmp_path):
    sim = source(tmp_path, turbines=2, rate_hz=50, history_s=0)
    collect = Collector(sim)
    await run_for(sim, collect, 0.3)
    assert collect.history == []
    assert sum(collect.rows(b for _, b in collect.live).values()) >= 2 * 5


async def test_scheduled_faults_appear_in_injections(tmp_path):
    sim = source(tmp_path, turbines=4, history_s=1,
                 faults=[{"turbine": 2, "kind": "vibration", "start": 5, "end": 9},
                         {"turbine": 0, "kind": "voltage", "start": 1.5, "end": 3}])
    assert sim.injections() == [], "nothing is scheduled in wall time before the start"
    collect = Collector(sim)
    task = asyncio.create_task(sim.run(collect))
    try:
        await asyncio.wait_for(sim.live.wait(), 2.0)
    finally:
        await stop(task)
    injections = sim.injections()
    assert [(i.turbine, i.kind) for i in injections] == [("turbine-0", "voltage"),
                                                         ("turbine-2", "vibration")]
    assert injections[0].start == pytest.approx(sim.started_at + 1.5)
    assert injections[0].end == pytest.approx(sim.started_at + 3)
    assert injections[1].start == pytest.approx(sim.started_at + 5)
    assert injections[1].end == pytest.approx(sim.started_at + 9)


async def test_scheduled_fault_times_count_from_the_live_start(tmp_path):
    """A fault at 0-0.5 s must hit the first live rows, not the simulated history."""
    sim = source(tmp_path, turbines=2, rate_hz=20, history_s=5,
                 faults="1:voltage@0-0.5")
    collect = Collector(sim)
    await run_for(sim, collect, 0.3)
    history = np.concatenate([b.values[np.array(b.turbines) == "turbine-1"]
                              for b in collect.history])
    assert history[:, VOLTAGE].max() < 200, "history must be healthy"
    live = collect.values("turbine-1")
    assert len(live) >= 2
    assert (live[:, VOLTAGE] == np.floor(live[:, VOLTAGE])).all()
    assert live[:, VOLTAGE].max() > 200


async def test_inject_by_command_appears_and_changes_the_values(tmp_path):
    sim = source(tmp_path, turbines=3, rate_hz=50, history_s=0)
    collect = Collector(sim)
    task = asyncio.create_task(sim.run(collect))
    try:
        await asyncio.wait_for(sim.live.wait(), 2.0)
        await asyncio.sleep(0.3)
        healthy = collect.values("turbine-1")
        at = time.monotonic()
        sim.inject(1, "voltage", duration=10)
        await asyncio.sleep(0.5)
    finally:
        await stop(task)
    assert len(healthy) >= 5
    assert 20 < np.median(healthy[:, VOLTAGE]) < 100, "healthy voltage is ~48"

    faulty = collect.values("turbine-1", since=at)
    assert len(faulty) >= 10
    volts = faulty[:, VOLTAGE]
    assert (volts == np.floor(volts)).all(), "voltage faults are integers"
    assert ((volts >= 0) & (volts < 10000)).all()
    assert np.median(volts) > 500
    # Other turbines and other columns of this one are untouched.
    assert np.median(collect.values("turbine-0", since=at)[:, VOLTAGE]) < 100
    assert np.abs(faulty[:, layout.INPUTS.index("qw")]).max() <= 1.0

    (injection,) = sim.injections()
    assert (injection.turbine, injection.kind) == ("turbine-1", "voltage")
    assert injection.start == pytest.approx(time.time() - 0.5, abs=0.5)
    assert injection.end == pytest.approx(injection.start + 10)


def test_inject_without_duration_lasts_until_cleared(tmp_path):
    sim = source(tmp_path, turbines=2, history_s=0)
    sim.started_at = time.time()
    sim.inject(0, "rotation")
    (injection,) = sim.injections()
    assert injection.end == float("inf")
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.inject(0, "fire")


def test_config_rejects_a_fault_on_a_turbine_that_does_not_exist():
    with pytest.raises(ValidationError, match="fault on turbine 5, but there are only 3"):
        SimulatorConfig.model_validate({
            "type": "simulator", "turbines": 3,
            "faults": [{"turbine": 5, "kind": "voltage", "start": 1, "end": 2}]})
    with pytest.raises(ValidationError, match="only 2"):
        SimulatorConfig.model_validate({"type": "simulator", "turbines": 2,
                                        "faults": "2:rotation@1-2"})


def test_config_rejects_bad_faults():
    with pytest.raises(ValidationError, match="must come after start"):
        SimulatorConfig.model_validate({
            "type": "simulator",
            "faults": [{"turbine": 0, "kind": "voltage", "start": 5, "end": 2}]})
    with pytest.raises(ValidationError):
        SimulatorConfig.model_validate({
            "type": "simulator",
            "faults": [{"turbine": 0, "kind": "smoke", "start": 1, "end": 2}]})
    with pytest.raises(ValidationError, match="schedule item 1"):
        SimulatorConfig.model_validate({"type": "simulator", "faults": "2:vibration@9-3"})


def test_string_schedule_parses():
    cfg = SimulatorConfig.model_validate({
        "type": "simulator", "turbines": 5,
        "faults": "2:vibration@4-9, 3:rotation@8+5,4:voltage@12.5-17"})
    assert cfg.faults == [
        FaultSpec(turbine=2, kind="vibration", start=4, end=9),
        FaultSpec(turbine=3, kind="rotation", start=8, end=13),
        FaultSpec(turbine=4, kind="voltage", start=12.5, end=17),
    ]


def test_source_refuses_inputs_it_cannot_provide(tmp_path):
    cfg = SimulatorConfig.model_validate({"type": "simulator"})
    ctx = BuildContext(name="sources.farm", device_id="test", state_dir=tmp_path,
                       inputs=("rps", "torque"))
    with pytest.raises(ValueError, match="torque"):
        SimulatorSource(cfg, ctx)
