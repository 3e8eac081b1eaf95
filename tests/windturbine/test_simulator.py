"""The simulated wind farm: determinism, layout, healthy statistics, faults, schedules, records,
and the property everything else relies on: the reference model calls healthy simulated
turbines healthy and each injected fault anomalous in its own group."""

from __future__ import annotations

import math
import re
import time
from datetime import datetime

import numpy as np
import pytest

from edged.windturbine.features import WindTurbinePreprocessor, raw_features
from edged.windturbine.layout import (
    DATASET_COLUMNS,
    FAULT_KINDS,
    FEATURES,
    GROUPS,
    input_indices,
)
from edged.windturbine.simulator import Fault, WindFarm, parse_schedule

from .conftest import MODEL_DIR

COL = {name: i for i, name in enumerate(DATASET_COLUMNS)}
TEXT = [COL[c] for c in ("nanoId", "turbineId", "eventTime")]
NUMERIC = [i for i in range(len(DATASET_COLUMNS)) if i not in TEXT]
FAULT_COLUMNS = {
    "vibration": [COL[c] for c in ("qw", "qx", "qy", "qz")],
    "rotation": [COL["rps"]],
    "voltage": [COL["voltage"]],
}
RATE = 20.0


def column(rows: np.ndarray, name: str) -> np.ndarray:
    return rows[..., COL[name]]


def features(rows: np.ndarray) -> np.ndarray:
    """(..., 23) dataset rows -> (..., 6) model features."""
    return raw_features(rows[..., list(input_indices(DATASET_COLUMNS))])


# -- determinism and layout -------------------------------------------------------------------


def test_same_seed_same_farm_other_seed_other_farm():
    a = WindFarm(4, seed=7).ticks(200)
    b = WindFarm(4, seed=7).ticks(200)
    c = WindFarm(4, seed=8).ticks(200)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[:, :, NUMERIC], c[:, :, NUMERIC])


def test_ticks_equals_repeated_tick_bit_for_bit_with_faults():
    schedule = [Fault(0, "vibration", 1.0, 2.5), Fault(2, "rotation", 0.5, 4.0)]
    batched, stepped = (WindFarm(3, seed=3, faults=schedule) for _ in range(2))
    for farm in (batched, stepped):
        farm.ticks(10)
        farm.inject(1, "voltage", duration=2.0)
    whole = batched.ticks(120)
    parts = [stepped.ticks(7), stepped.ticks(0), *(stepped.tick()[None] for _ in range(50))]
    parts.append(stepped.ticks(63))
    np.testing.assert_array_equal(whole, np.concatenate(parts), strict=True)
    assert batched.time == stepped.time == 130 / RATE


def test_rows_have_dataset_layout_and_finite_numbers():
    farm = WindFarm(6, seed=1)
    row = farm.tick()
    assert row.shape == (6, len(DATASET_COLUMNS)) and row.dtype == np.float64
    rows = farm.ticks(400)
    assert rows.shape == (400, 6, len(DATASET_COLUMNS))
    assert np.isnan(rows[:, :, TEXT]).all()
    assert np.isfinite(rows[:, :, NUMERIC]).all()
    assert farm.turbine_ids == [f"turbine-{i}" for i in range(6)]
    assert farm.time == pytest.approx(401 / RATE)


def test_arduino_clock_and_free_memory_are_integers_that_behave():
    rows = WindFarm(5, seed=2).ticks(300)
    millis = column(rows, "arduino_timestamp")
    np.testing.assert_array_equal(millis, np.round(millis))
    np.testing.assert_array_equal(np.diff(millis, axis=0), 1000 / RATE)
    assert len(set(millis[0])) == 5, "each board booted at its own time"
    freemem = column(rows, "nanoFreemem")
    np.testing.assert_array_equal(freemem, np.round(freemem))
    assert freemem.min() >= 1000 and freemem.max() <= 1300


def test_rate_changes_the_clock_not_the_time_base():
    farm = WindFarm(2, rate_hz=10.0, seed=0)
    rows = farm.ticks(20)
    np.testing.assert_array_equal(np.diff(column(rows, "arduino_timestamp"), axis=0), 100.0)
    assert farm.time == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"turbines": 0}, {"turbines": 2.5}, {"rate_hz": 0}, {"rate_hz": math.nan}],
)
def test_bad_farm_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        WindFarm(**kwargs)


# -- healthy physics --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthy():
    """Ten minutes of 40 turbines across four seeds (different weather each)."""
    return np.concatenate([WindFarm(10, seed=s).ticks(12_000) for s in range(4)], axis=1)


def test_healthy_model_inputs_resemble_the_reference(healthy, params):
    f = features(healthy)
    mean, spread = f.reshape(-1, 6).mean(axis=0), f.reshape(-1, 6).std(axis=0)
    # Means within a fraction of the reference spread; spreads between the denoised std
    # and (for the noisy sensors) about the raw std.
    for i, name in enumerate(FEATURES):
        # Yaw follows a wind direction that wanders over minutes: its mean converges slowest.
        tolerance = 1.0 if name == "yaw" else 0.5
        assert abs(mean[i] - params.mean[i]) < tolerance * params.std[i], (name, mean[i])
    for i in (3, 4, 5):  # wind, rotor, voltage
        assert 0.7 * params.std[i] < spread[i] < 1.2 * params.raw_std[i], (FEATURES[i], spread[i])
    for i in (0, 1):  # roll, pitch: vibration around the mounting tilt
        assert 0.6 * params.raw_std[i] < spread[i] < 1.4 * params.raw_std[i], FEATURES[i]
    assert 0.1 < spread[2] < 1.5 * params.std[2], "yaw follows the wind direction, slowly"
    assert (f[..., 3:] >= 0).all(), "speeds and voltage are never negative"


def test_rotor_follows_wind_with_lag_and_voltage_follows_rotor(healthy):
    wind, rps, volts = (column(healthy, c) for c in ("wind_speed_rps", "rps", "voltage"))

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    lags = [corr(wind[: -lag or None], rps[lag:]) for lag in range(0, 60, 5)]
    assert max(lags) > 0.8
    assert int(np.argmax(lags)) > 0, "the rotor's inertia delays its response to the wind"
    assert corr(rps, volts) > 0.8  # both carry their own sensor noise
    ratio = volts.mean() / rps.mean()
    assert 25 < ratio < 35, "about 30 mV per rps, as in the reference means"


def test_orientation_is_a_unit_quaternion_that_gravity_agrees_with(healthy):
    q = healthy[..., [COL[c] for c in ("qw", "qx", "qy", "qz")]]
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-12)
    g = healthy[..., [COL[c] for c in ("gx", "gy", "gz")]]
    np.testing.assert_allclose(np.linalg.norm(g, axis=-1), 9.81, atol=0.1)
    # Gravity is computed from the simulated angles, the quaternion encodes them: the
    # reference's quaternion -> Euler conversion must give the same angles back.
    roll, pitch = features(healthy)[..., 0], features(healthy)[..., 1]
    np.testing.assert_allclose(column(healthy, "gx"), -9.81 * np.sin(pitch), atol=0.06)
    np.testing.assert_allclose(
        column(healthy, "gy"), 9.81 * np.sin(roll) * np.cos(pitch), atol=0.06
    )
    accel = healthy[..., [COL[c] for c in ("ax", "ay", "az")]]
    assert np.abs(accel.mean()) < 0.01 and 0.02 < accel.std() < 0.2


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("gearboxtemp", 25, 45),
        ("ambtemp", 15, 25),
        ("humidity", 35, 65),
        ("pressure", 1005, 1021),
        ("gas", 50, 150),
    ],
)
def test_environment_sensors_are_plausible(healthy, name, low, high):
    values = column(healthy, name)
    assert low < values.min() and values.max() < high
    assert values.std() > 0, "sensors are never frozen"


def test_gearbox_runs_warmer_on_faster_turbines(healthy):
    rps = column(healthy, "rps").mean(axis=0)
    gearbox = column(healthy, "gearboxtemp")[-1]
    assert np.corrcoef(rps, gearbox)[0, 1] > 0.3


def test_nacelle_angles_stay_near_the_reference_and_never_wrap():
    f = features(WindFarm(200, seed=4).ticks(50))
    assert np.abs(f[..., 0] + 0.008).max() < 0.15 and np.abs(f[..., 1] - 0.0012).max() < 0.15
    assert np.abs(f[..., 2] + 0.107).max() < np.pi / 2, "yaw stays far from +-pi"


# -- faults -----------------------------------------------------------------------------------


def fault_rows(farm: WindFarm, clean: WindFarm, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n ticks from a farm with faults and its fault-free twin (same seed)."""
    return farm.ticks(n), clean.ticks(n)


def assert_fault_pattern(faulty, clean, expected):
    """Exactly the cells in expected (n, T, kinds) bool differ, within the reference ranges."""
    changed = faulty != clean
    changed[:, :, TEXT] = False
    want = np.zeros_like(changed)
    for k, kind in enumerate(FAULT_KINDS):
        for c in FAULT_COLUMNS[kind]:
            want[:, :, c] |= expected[:, :, k]
    np.testing.assert_array_equal(changed, want)
    for k, kind in enumerate(FAULT_KINDS):
        values = faulty[:, :, FAULT_COLUMNS[kind]][expected[:, :, k]]
        high = 10000 if kind == "voltage" else 100
        assert values.size and (values >= 0).all() and (values < high).all()
        if kind == "voltage":
            np.testing.assert_array_equal(values, np.floor(values))
        else:
            assert (values != np.floor(values)).any(), "uniform reals, not integers"
        if values.size > 50:
            assert values.mean() == pytest.approx(high / 2, rel=0.25)


def test_scheduled_faults_replace_exactly_their_columns_while_active():
    schedule = [
        Fault(0, "vibration", 1.0, 2.0),
        Fault(1, "rotation", 0.5, 3.25),
        Fault(2, "voltage", 2.0, 2.5),
        Fault(1, "voltage", 3.0, 4.0),  # overlaps the rotation fault by one tick
    ]
    faulty, clean = fault_rows(WindFarm(4, seed=9, faults=schedule), WindFarm(4, seed=9), 100)
    t = np.arange(100) / RATE
    expected = np.zeros((100, 4, 3), dtype=bool)
    for f in schedule:
        expected[:, f.turbine, FAULT_KINDS.index(f.kind)] |= (f.start <= t) & (t < f.end)
    assert_fault_pattern(faulty, clean, expected)


def test_inject_with_duration_and_clear():
    farm, clean = WindFarm(3, seed=5), WindFarm(3, seed=5)
    fault_rows(farm, clean, 10)
    farm.inject(0, "rotation", duration=1.0)
    farm.inject(2, "vibration")
    farm.inject(2, "voltage")
    assert farm.active_faults(0) == {"rotation"}
    assert farm.active_faults(2) == {"vibration", "voltage"}
    assert farm.active_faults(1) == set()
    first, clean_first = fault_rows(farm, clean, 30)
    farm.clear(2, "voltage")
    assert farm.active_faults(2) == {"vibration"} and farm.active_faults(0) == set()
    second, clean_second = fault_rows(farm, clean, 10)
    farm.clear(2)
    assert farm.active_faults(2) == set()
    third, clean_third = fault_rows(farm, clean, 10)

    expected = np.zeros((50, 3, 3), dtype=bool)
    expected[:20, 0, FAULT_KINDS.index("rotation")] = True  # 1 s at 20 Hz
    expected[:40, 2, FAULT_KINDS.index("vibration")] = True
    expected[:30, 2, FAULT_KINDS.index("voltage")] = True
    assert_fault_pattern(
        np.concatenate([first, second, third]),
        np.concatenate([clean_first, clean_second, clean_third]),
        expected,
    )
    assert farm.faults == ()


def test_clear_keeps_later_scheduled_faults_and_cancels_unstarted_injections():
    farm = WindFarm(2, seed=0, faults=[Fault(1, "voltage", 5.0, 6.0)])
    farm.inject(1, "voltage")
    farm.clear(1)  # before any row: the injection never happened
    assert farm.faults == (Fault(1, "voltage", 5.0, 6.0),)
    rows = farm.ticks(100)
    assert (column(rows, "voltage")[:, 1] < 200).all()
    rows = farm.ticks(20)
    assert (column(rows, "voltage")[:, 1] == np.floor(column(rows, "voltage")[:, 1])).all()
    assert farm.faults == ()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: f.inject(3, "rotation"), "out of range"),
        (lambda f: f.inject(-1, "rotation"), "out of range"),
        (lambda f: f.inject(0, "noise"), "unknown fault kind"),
        (lambda f: f.inject(0, "voltage", duration=0), "duration"),
        (lambda f: f.clear(0, "noise"), "unknown fault kind"),
        (lambda f: f.active_faults(5), "out of range"),
    ],
)
def test_bad_fault_commands_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call(WindFarm(3, seed=0))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, "smoke", 0.0, 1.0), "unknown fault kind"),
        ((-1, "voltage", 0.0, 1.0), "turbine"),
        ((0, "voltage", 2.0, 2.0), "after start"),
        ((0, "voltage", -1.0, 2.0), "start"),
    ],
)
def test_bad_faults_are_rejected(args, message):
    with pytest.raises(ValueError, match=message):
        Fault(*args)


def test_farm_rejects_scheduled_fault_on_missing_turbine():
    with pytest.raises(ValueError, match="out of range"):
        WindFarm(2, faults=[Fault(2, "voltage", 0.0, 1.0)])


# -- schedules --------------------------------------------------------------------------------


def test_parse_schedule_forms():
    text = "2:vibration@5-12, 3:rotation@10-16 ,4:voltage@15+5,0 : voltage @ 0.5 + .25"
    assert parse_schedule(text) == [
        Fault(2, "vibration", 5.0, 12.0),
        Fault(3, "rotation", 10.0, 16.0),
        Fault(4, "voltage", 15.0, 20.0),
        Fault(0, "voltage", 0.5, 0.75),
    ]
    assert parse_schedule("") == [] and parse_schedule("  ") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2:vibration", r"item 1 '2:vibration': expected TURBINE:KIND@START-END"),
        ("vibration@5-12", r"item 1 .*expected TURBINE:KIND"),
        ("1:rotation@1-2,x:rotation@5-12", r"item 2 'x:rotation@5-12': turbine 'x'"),
        ("-1:rotation@5-12", r"turbine '-1' is not a non-negative integer"),
        ("1:smoke@5-12", r"unknown fault kind 'smoke'"),
        ("1:voltage@5", r"times '5' are not START-END or START\+DURATION"),
        ("1:voltage@a-b", r"times 'a-b'"),
        ("1:voltage@12-5", r"ends at 5 s, not after it starts at 12 s"),
        ("1:voltage@5+0", r"duration must be positive"),
        ("1:voltage@5+1,", r"item 2 '': empty"),
    ],
)
def test_parse_schedule_errors_name_the_item_and_the_reason(text, message):
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


# -- records ----------------------------------------------------------------------------------

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


def test_records_are_the_dataset_columns_as_strings():
    farm = WindFarm(3, seed=1, farm_id="nano-7", faults=[Fault(1, "voltage", 0.0, 1.0)])
    rows = farm.tick()
    wall = 1610539262.123
    records = farm.records(rows, wall)
    assert len(records) == 3
    for turbine, record in enumerate(records):
        assert len(record) == len(DATASET_COLUMNS)
        assert all(isinstance(v, str) for v in record)
        assert record[COL["nanoId"]] == "nano-7"
        assert record[COL["turbineId"]] == f"turbine-{turbine}"
        assert ISO.match(record[COL["eventTime"]])
        assert record[COL["eventTime"]] == "2021-01-13T12:01:02.123+00:00"
        for name in ("arduino_timestamp", "nanoFreemem"):
            assert re.fullmatch(r"\d+", record[COL[name]])
            assert int(record[COL[name]]) == rows[turbine, COL[name]]
        numbers = np.array([float(record[i]) for i in NUMERIC])
        np.testing.assert_allclose(numbers, rows[turbine, NUMERIC], rtol=1e-6, atol=1e-12)
        assert all(len(record[i]) <= 14 for i in NUMERIC), "compact, not 17 digits of noise"
    assert re.fullmatch(r"\d+", records[1][COL["voltage"]]), "integer fault values stay integers"


def test_records_of_several_ticks_are_stamped_a_period_apart():
    farm = WindFarm(2, seed=1)
    records = farm.records(farm.ticks(3), 1_000_000.0)
    assert [r[COL["turbineId"]] for r in records] == ["turbine-0", "turbine-1"] * 3
    stamps = [datetime.fromisoformat(r[COL["eventTime"]]).timestamp() for r in records[::2]]
    assert stamps == pytest.approx([1_000_000.0, 1_000_000.05, 1_000_000.1])
    with pytest.raises(ValueError, match="expected"):
        farm.records(np.zeros((3, 23)), 0.0)


# -- cost -------------------------------------------------------------------------------------


def test_a_thousand_turbines_tick_well_within_their_period():
    farm = WindFarm(1000, seed=0)
    farm.tick()
    costs = []
    for _ in range(20):
        start = time.perf_counter()
        farm.tick()
        costs.append(time.perf_counter() - start)
    # 10% of a core at 20 Hz is 5 ms a tick; about 0.5 ms here, generous for slow CI machines.
    assert np.median(costs) < 0.025


# -- the reference model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def decide(request):
    """Reference decisions on simulated rows: (n, T, 23) -> buffer ends and (D, T, 6) errors."""
    if not (MODEL_DIR / "model.onnx").is_file():
        pytest.skip(f"the reference model is not committed at {MODEL_DIR}")
    params = request.getfixturevalue("params")
    model_fn = request.getfixturevalue("model_fn")
    pre = WindTurbinePreprocessor(params)

    def run(rows: np.ndarray, every: int = 10) -> tuple[np.ndarray, np.ndarray]:
        f = features(rows)
        ends = np.arange(params.buffer, len(rows) + 1, every)
        buffers = np.concatenate([f[e - params.buffer : e].transpose(1, 0, 2) for e in ends])
        x = pre.windows(buffers)
        errors = pre.errors(x, model_fn(x), len(buffers))
        return ends, errors.reshape(len(ends), rows.shape[1], 6) / params.thresholds

    return run


@pytest.mark.parametrize("seed", [11, 12])
def test_reference_model_finds_healthy_turbines_healthy(decide, seed):
    _, ratio = decide(WindFarm(10, seed=seed).ticks(1200))  # one minute
    worst = ratio.max(axis=(0, 1))
    assert (worst < 0.6).all(), dict(zip(FEATURES, worst.round(3), strict=True))


def test_reference_model_flags_each_fault_in_its_own_group(decide):
    start, length = 30.0, 5.0
    kinds = [*FAULT_KINDS, *FAULT_KINDS, *FAULT_KINDS, None]  # the last turbine stays healthy
    schedule = [
        Fault(i, kind, start + 0.35 * i, start + 0.35 * i + length)
        for i, kind in enumerate(kinds)
        if kind
    ]
    ends, ratio = decide(WindFarm(len(kinds), seed=21, faults=schedule).ticks(1200))
    flagged = ratio > 1
    assert not flagged[:, -1].any(), "the healthy neighbour is untouched"
    for f in schedule:
        first, last = round(f.start * RATE), round(f.end * RATE)
        own = flagged[:, f.turbine, list(GROUPS[f.kind])].any(axis=-1)
        assert not flagged[ends <= first, f.turbine].any(), f
        # The first decision whose window (rows -110..-10) holds >= 30 faulty rows.
        overlap = np.minimum(ends - 10, last) - np.maximum(ends - 110, first)
        due = np.flatnonzero(overlap >= 30)[0]
        assert own[due], f"{f} not flagged {ends[due] - first} ticks after it started"
        # Every group lights up (the autoencoder couples its channels), but the fault's own
        # group stands out most, which is what attributes it.
        assert FEATURES[int(np.argmax(ratio[due, f.turbine]))] in [
            FEATURES[i] for i in GROUPS[f.kind]
        ], f
        assert own[due:][: (last - first) // 10].all(), f"{f} flag flickered"
        # The denoiser smears a fault over neighbouring rows, so flags outlive it a little.
        assert not flagged[ends > last + 200, f.turbine].any(), f"{f} flagged long after end"
