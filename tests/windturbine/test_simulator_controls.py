"""The simulator's controls, as the dashboard uses them: the farm's drifts started and
ended by command, and the simulator source's turbines stopped and started, their faults
and drifts switched on and off by name (``edged.dashboard.controls.FarmControl``)."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest

from edged.builtin.simulator import Injection
from edged.windturbine.layout import DATASET_COLUMNS
from edged.windturbine.simulator import DRIFT_KINDS, DRIFT_SIZES, Drift, WindFarm
from tests.builtin.test_simulator_source import Collector, source, stop
from tests.runtime.test_supervisor import until

VOLTAGE = DATASET_COLUMNS.index("voltage")

# -- WindFarm: drifts by command -----------------------------------------------------------


def twins() -> tuple[WindFarm, WindFarm]:
    """Two farms alike: rows of one differ from the other's only where a command acts."""
    return (WindFarm(turbines=3, rate_hz=20, seed=5), WindFarm(turbines=3, rate_hz=20, seed=5))


def test_a_drift_started_by_command_grows_from_the_next_row_and_ends_at_once():
    farm, plain = twins()
    farm.ticks(10), plain.ticks(10)
    assert farm.active_drifts(1) == set()
    farm.start_drift(1, "bias", ramp_s=1.0)
    assert farm.active_drifts(1) == {"bias"}
    assert farm.active_drifts(0) == farm.active_drifts(2) == set()
    rows, healthy = farm.ticks(40), plain.ticks(40)
    # Only turbine 1's voltage moves: linearly over the ramp's 20 rows, then stays.
    np.testing.assert_array_equal(np.delete(rows, 1, axis=1), np.delete(healthy, 1, axis=1))
    np.testing.assert_array_equal(np.delete(rows[:, 1], VOLTAGE, axis=1),
                                  np.delete(healthy[:, 1], VOLTAGE, axis=1))
    grown = np.minimum(np.arange(40) / 20, 1.0)
    np.testing.assert_allclose(rows[:, 1, VOLTAGE] - healthy[:, 1, VOLTAGE],
                               DRIFT_SIZES["bias"] * grown, atol=1e-9)
    farm.end_drift(1, "bias")
    assert farm.active_drifts(1) == set()
    # Mended: the rows are the healthy twin's again (a drift draws no random number).
    np.testing.assert_array_equal(farm.ticks(20), plain.ticks(20))


def test_ending_a_drift_mends_the_scheduled_ones_of_its_kind_only():
    farm = WindFarm(turbines=3, rate_hz=20, seed=5, drifts=[
        Drift(1, "bearing", 0.0, 5.0), Drift(1, "wind", 0.0, 5.0),
        Drift(1, "bias", 100.0, 200.0), Drift(2, "bias", 0.0, 5.0)])
    farm.ticks(1)
    assert farm.active_drifts(1) == {"bearing", "wind"}  # bias is scheduled, not begun
    farm.end_drift(1, "bias")
    farm.end_drift(1, "wind")
    assert farm.drifts == (Drift(1, "bearing", 0.0, 5.0), Drift(2, "bias", 0.0, 5.0))
    farm.start_drift(1, "wind")
    farm.start_drift(1, "wind")  # twice: one more drift of the kind, mended together
    assert farm.active_drifts(1) == {"bearing", "wind"}
    farm.end_drift(1, "wind")
    assert farm.active_drifts(1) == {"bearing"}


@pytest.mark.parametrize(("call", "message"), [
    (lambda f: f.start_drift(1, "voltage"), "unknown drift kind 'voltage' (expected "
                                            + ", ".join(DRIFT_KINDS)),
    (lambda f: f.end_drift(1, "biass"), "unknown drift kind 'biass'"),
    (lambda f: f.start_drift(3, "bias"), "turbine 3 out of range 0..2"),
    (lambda f: f.end_drift(-1, "bias"), "turbine -1 out of range 0..2"),
    (lambda f: f.active_drifts(7), "turbine 7 out of range 0..2"),
    (lambda f: f.start_drift(1, "bias", ramp_s=0), "must end after it starts"),
])
def test_bad_drift_commands_are_refused_by_name(call, message):
    farm = WindFarm(turbines=3, rate_hz=20, seed=5)
    with pytest.raises(ValueError) as refused:
        call(farm)
    assert message in str(refused.value)
    assert farm.drifts == ()


# -- SimulatorSource: the dashboard's controls ---------------------------------------------


async def test_a_stopped_turbine_sends_nothing_until_started(tmp_path):
    sim = source(tmp_path, turbines=3, rate_hz=20, history_s=2)
    sim.set_running("turbine-1", False)
    assert not sim.running("turbine-1") and sim.running("turbine-0")
    collect = Collector(sim)
    task = asyncio.create_task(sim.run(collect))
    try:
        await asyncio.wait_for(sim.live.wait(), 5)
        # Its history is left out, the others' comes whole; its values are the others'
        # own (every row in a batch lines up with its turbine).
        assert collect.rows(collect.history) == {"turbine-0": 40, "turbine-2": 40}
        await until(lambda: collect.rows(b for _, b in collect.live)["turbine-0"] >= 5)
        assert collect.rows(b for _, b in collect.live)["turbine-1"] == 0
        started = time.monotonic()
        sim.set_running("turbine-1", True)
        await until(lambda: len(collect.values("turbine-1", since=started)) >= 3)
        sim.set_running("turbine-0", False)
        stopped = time.monotonic()
        await until(lambda: len(collect.values("turbine-2", since=stopped)) >= 3)
    finally:
        await stop(task)
    # From the next batch on, turbine-0 sent nothing more.
    later = [b for at, b in collect.live if at > stopped]
    assert later and all("turbine-0" not in b.turbines for b in later)


async def test_stopped_rows_are_left_out_of_a_batch_row_for_row(tmp_path):
    """The rows sent are exactly the running turbines' rows, each with its own turbine:
    the history of a farm with two stopped is its twin's with their rows taken out."""
    sent = {}
    for stopped in ((), ("turbine-1", "turbine-3")):
        sim = source(tmp_path, turbines=4, rate_hz=20, history_s=6)
        for turbine in stopped:
            sim.set_running(turbine, False)
        collect = Collector(sim)
        task = asyncio.create_task(sim.run(collect))
        try:
            await asyncio.wait_for(sim.live.wait(), 5)
        finally:
            await stop(task)
        assert len(collect.history) > 1  # in chunks, each cut alike
        sent[stopped] = (sum((list(b.turbines) for b in collect.history), []),
                         np.concatenate([b.values for b in collect.history]))
    (whole, all_values), (kept, kept_values) = sent.values()
    running = [t in ("turbine-0", "turbine-2") for t in whole]
    assert kept == [t for t, ok in zip(whole, running, strict=True) if ok]
    assert kept[:4] == ["turbine-0", "turbine-2"] * 2
    np.testing.assert_array_equal(kept_values, all_values[running])


async def test_a_fault_switched_on_and_off_by_name(tmp_path):
    sim = source(tmp_path, turbines=3, rate_hz=20, history_s=0)
    task = asyncio.create_task(sim.run(Collector(sim)))
    try:
        await asyncio.wait_for(sim.live.wait(), 5)
        assert sim.active("turbine-2") == ([], [])
        before = time.time()
        sim.set_fault("turbine-2", "vibration", True)
        sim.set_fault("turbine-2", "vibration", True)  # already on: nothing more
        assert sim.active("turbine-2") == (["vibration"], [])
        assert sim.active("turbine-1") == ([], [])
        (injection,) = sim.injections()
        assert (injection.turbine, injection.kind, injection.end) == (
            "turbine-2", "vibration", math.inf)
        assert before <= injection.start <= time.time()
        await asyncio.sleep(0.2)  # rows with the fault go out
        sim.set_fault("turbine-2", "vibration", False)
        ended = time.time()
        assert sim.active("turbine-2") == ([], [])
        (cleared,) = sim.injections()
        assert cleared == Injection("turbine-2", "vibration", injection.start, cleared.end)
        assert injection.start < cleared.end <= ended
        sim.set_fault("turbine-2", "vibration", False)  # already off: nothing changes
        assert sim.injections() == [cleared]
    finally:
        await stop(task)


async def test_a_scheduled_fault_switched_off_ends_where_the_verdict_judges_it(tmp_path):
    """Cleared from the page, a fault of the config's schedule ends then, in the farm and
    in injections() (which the demo's verdict judges detections against)."""
    sim = source(tmp_path, turbines=3, rate_hz=20, history_s=0,
                 faults="1:rotation@0-600,2:voltage@300-600")
    task = asyncio.create_task(sim.run(Collector(sim)))
    try:
        await asyncio.wait_for(sim.live.wait(), 5)
        scheduled = sim.injections()
        assert [(i.turbine, i.kind, i.end - i.start) for i in scheduled] == [
            ("turbine-1", "rotation", 600.0), ("turbine-2", "voltage", 300.0)]
        await asyncio.sleep(0.2)
        assert sim.active("turbine-1") == (["rotation"], [])
        sim.set_fault("turbine-1", "rotation", False)
        ended = time.time()
        assert sim.active("turbine-1") == ([], [])
        rotation, voltage = sim.injections()
        assert rotation.start == scheduled[0].start and rotation.end <= ended
        assert voltage == scheduled[1]  # not begun: still to come, as in the farm
    finally:
        await stop(task)


def test_a_drift_switched_on_and_off_by_name(tmp_path):
    sim = source(tmp_path, turbines=3, history_s=0)
    sim.set_drift("turbine-0", "bearing", True)
    sim.set_drift("turbine-0", "bias", True)
    sim.set_drift("turbine-0", "bias", True)  # already on: not started twice
    assert sim.active("turbine-0") == ([], ["bearing", "bias"])
    assert sum(d.kind == "bias" for d in sim.farm.drifts) == 1
    sim.set_drift("turbine-0", "bearing", False)
    assert sim.active("turbine-0") == ([], ["bias"])
    assert sim.active("turbine-1") == ([], [])


@pytest.mark.parametrize("call", [
    lambda s: s.running("turbine-9"),
    lambda s: s.active("turbine-9"),
    lambda s: s.set_running("turbine-9", False),
    lambda s: s.set_fault("turbine-9", "vibration", True),
    lambda s: s.set_drift("turbine-9", "bias", True),
])
def test_an_unknown_turbine_is_a_key_error_naming_it(tmp_path, call):
    sim = source(tmp_path, turbines=3, history_s=0)
    with pytest.raises(KeyError, match="no turbine 'turbine-9' in this simulator"):
        call(sim)
    assert sim.running("turbine-0") and sim.active("turbine-0") == ([], [])


def test_the_simulators_controls_name_its_turbines_and_kinds(tmp_path):
    sim = source(tmp_path, turbines=3, history_s=0)
    assert list(sim.turbine_ids()) == ["turbine-0", "turbine-1", "turbine-2"]
    assert sim.fault_kinds == ("vibration", "rotation", "voltage")
    assert sim.drift_kinds == DRIFT_KINDS
    with pytest.raises(ValueError, match="unknown fault kind 'fire'"):
        sim.set_fault("turbine-0", "fire", True)
    with pytest.raises(ValueError, match="unknown drift kind 'rust'"):
        sim.set_drift("turbine-0", "rust", True)
    with pytest.raises(ValueError, match="unknown drift kind 'rust'"):
        sim.set_drift("turbine-0", "rust", False)
