"""The replay source: a dataset-layout CSV, as fast as possible or paced by eventTime."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from edged.base.metrics import Counters
from edged.builtin.replay import ReplayConfig, ReplaySource
from edged.plugin.components import BuildContext, Readings
from edged.windturbine import layout
from edged.windturbine.simulator import WindFarm

COL = {name: i for i, name in enumerate(layout.DATASET_COLUMNS)}
INPUT_COLUMNS = [COL[name] for name in layout.INPUTS]
START = 1_700_000_000.0


def farm_records(ticks: int, turbines: int = 3, seed: int = 4) -> list[list[str]]:
    farm = WindFarm(turbines=turbines, rate_hz=20, seed=seed)
    return farm.records(farm.ticks(ticks), START)


def spoil(record: list[str], column: str, value: str) -> list[str]:
    bad = list(record)
    bad[COL[column]] = value
    return bad


# Malformed lines and the reason each is counted under.
def bad_lines(good: list[str]) -> list[tuple[list[str], str]]:
    return [
        (good[:-1], "wrong_width"),
        ([*good, "1.0"], "wrong_width"),
        (spoil(good, "rps", "fast"), "not_a_number"),
        (spoil(good, "qx", "0x1g"), "not_a_number"),
        (spoil(good, "voltage", ""), "missing_field"),
        (spoil(good, "qw", "   "), "missing_field"),
        (spoil(good, "wind_speed_rps", "nan"), "not_finite"),
        (spoil(good, "qz", "inf"), "not_finite"),
        (spoil(good, "voltage", "-Infinity"), "not_finite"),
        (spoil(good, "turbineId", ""), "no_turbine"),
    ]


def write_csv(path: Path, lines: list[list[str]], header: bool = True) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(layout.DATASET_COLUMNS)
        writer.writerows(lines)
    return path


def replay(path: Path, counters: Counters | None = None, **config) -> ReplaySource:
    cfg = ReplayConfig.model_validate({"type": "replay", "path": str(path), **config})
    ctx = BuildContext(name="sources.file", device_id="test", state_dir=path.parent,
                       counters=counters or Counters(), inputs=layout.INPUTS)
    return ReplaySource(cfg, ctx)


class Collector:
    def __init__(self) -> None:
        self.batches: list[Readings] = []
        self.times: list[float] = []

    async def __call__(self, readings: Readings) -> None:
        assert readings.values.dtype == np.float64
        assert readings.values.shape == (len(readings.turbines), len(layout.INPUTS))
        self.batches.append(readings)
        self.times.append(time.monotonic())

    def per_turbine(self) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {}
        for batch in self.batches:
            for turbine, row in zip(batch.turbines, batch.values, strict=True):
                out.setdefault(turbine, []).append(row)
        return {t: np.array(rows) for t, rows in out.items()}


def expected_per_turbine(records: list[list[str]]) -> dict[str, np.ndarray]:
    out: dict[str, list[list[float]]] = {}
    for record in records:
        out.setdefault(record[COL["turbineId"]], []).append(
            [float(record[i]) for i in INPUT_COLUMNS])
    return {t: np.array(rows) for t, rows in out.items()}


async def test_max_speed_emits_every_good_row_in_order_and_counts_bad_lines(tmp_path):
    good = farm_records(400)  # 1200 rows: more than one 500-row batch
    bad = bad_lines(good[7])
    lines = list(good)
    # Spread the bad lines through the file.
    for i, (line, _) in enumerate(bad):
        lines.insert(50 + 97 * i, line)
    counters = Counters()
    source = replay(write_csv(tmp_path / "farm.csv", lines), counters, speed="max")
    collect = Collector()
    async with source:
        await source.run(collect)

    assert len(collect.batches) >= 3
    got = collect.per_turbine()
    want = expected_per_turbine(good)
    assert sorted(got) == sorted(want) == ["turbine-0", "turbine-1", "turbine-2"]
    for turbine in want:
        np.testing.assert_array_equal(got[turbine], want[turbine], err_msg=turbine)
    assert source.rows_read == len(good)

    reasons: dict[str, int] = {}
    for _, reason in bad:
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, n in reasons.items():
        assert counters.get("rows_rejected", reason=reason, source="sources.file") == n, reason
    assert counters.total("rows_rejected") == len(bad), "the header is not a bad line"


async def test_file_without_header_keeps_its_first_row(tmp_path):
    good = farm_records(2)
    source = replay(write_csv(tmp_path / "farm.csv", good, header=False), speed="max")
    collect = Collector()
    await source.run(collect)
    assert source.rows_read == len(good) == 6
    assert collect.batches[0].turbines[0] == "turbine-0"


async def test_header_yes_skips_a_numeric_first_line(tmp_path):
    good = farm_records(2)
    source = replay(write_csv(tmp_path / "farm.csv", good, header=False), speed="max",
                    header="yes")
    await source.run(Collector())
    assert source.rows_read == len(good) - 1


async def test_loop_starts_again(tmp_path):
    good = farm_records(3)
    source = replay(write_csv(tmp_path / "farm.csv", good), speed="max", loop=True)
    collect = Collector()

    async def emit(readings: Readings) -> None:
        await collect(readings)
        if len(collect.batches) == 3:
            raise StopAsyncIteration  # a way out of an endless replay

    with pytest.raises(StopAsyncIteration):
        await source.run(emit)
    assert [b.turbines for b in collect.batches] == [collect.batches[0].turbines] * 3


async def test_realtime_pacing_follows_event_time(tmp_path):
    good = farm_records(100, turbines=2)  # 99 ticks at 20 Hz: 4.95 s of event time
    lines = list(good)
    lines.insert(10, spoil(good[3], "rps", "x"))
    source = replay(write_csv(tmp_path / "farm.csv", lines), speed=10.0)
    collect = Collector()
    started = time.monotonic()
    await source.run(collect)
    elapsed = time.monotonic() - started
    expected = 4.95 / 10
    assert elapsed >= 0.5 * expected
    assert elapsed < 5 * expected + 1.0, "speed 10 must be faster than real time"
    assert source.rows_read == len(good)
    # Rows leave one by one, roughly at their event time.
    assert len(collect.batches) == len(good)
    halfway = collect.times[len(good) // 2] - collect.times[0]
    assert halfway >= 0.5 * expected / 2


@contextlib.contextmanager
def hang_guard(seconds: float):
    """Turn an event loop that never yields into a test failure instead of a hang."""

    def fail(*_):
        raise TimeoutError(f"the event loop was blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Ticker:
    """Another task on the loop: counts how often it gets to run."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0)


async def test_max_speed_lets_other_tasks_run_between_batches(tmp_path):
    """A pipeline's emit does not suspend when its queue has room, so the source must
    yield itself, or a large file holds the loop (and ingest) until it is done."""
    source = replay(write_csv(tmp_path / "farm.csv", farm_records(400)), speed="max")
    ticker = Ticker()
    seen: list[int] = []

    async def emit(readings: Readings) -> None:
        seen.append(ticker.ticks)

    task = asyncio.create_task(ticker.run())
    await asyncio.sleep(0)
    await source.run(emit)
    task.cancel()
    assert len(seen) == 3
    assert seen[0] < seen[1] < seen[2]


async def test_endless_replay_stays_cancellable(tmp_path):
    source = replay(write_csv(tmp_path / "farm.csv", farm_records(3)), speed="max", loop=True)
    collect = Collector()
    with hang_guard(3.0):
        task = asyncio.create_task(source.run(collect))
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert len(collect.batches) > 3


async def test_looping_over_a_file_without_valid_rows_stops(tmp_path):
    records = [r[:-1] for r in farm_records(3)]  # every line one field short
    source = replay(write_csv(tmp_path / "farm.csv", records), speed="max", loop=True)
    collect = Collector()
    with hang_guard(3.0):
        await asyncio.wait_for(source.run(collect), timeout=2.0)
    assert collect.batches == []
    assert source.counters.total("rows_rejected") == len(records)


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        replay(tmp_path / "missing.csv")
    path = write_csv(tmp_path / "farm.csv", farm_records(1))
    with pytest.raises(ValueError, match="positive"):
        replay(path, speed=0.0)
