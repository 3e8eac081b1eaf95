"""Sketches' paths that a short daemon run never takes, driven with a stepped wall clock
(tests/support/clock.py) through the real capture writer, spool and Disk destination:
the hour's end writes the final record (with or without another round), a model swap
writes the old version's partial, stale turbine-seconds are split at the hour's end."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from pathlib import Path

import numpy as np

from edged.base.metrics import Counters
from edged.capture.pipeline_capture import PipelineCapture
from edged.capture.sketches import Bins, Sketcher
from edged.config.capture import PipelineCaptureSpec
from edged.plugin.events import Decision, Event, ModelRef, Round
from tests.support.clock import FakeClock

FEATURES = ("f1", "f2")
HOUR = 1_700_002_800.0  # 2023-11-14 23:00:00 UTC, the start of an hour
assert HOUR % 3600 == 0


class Source:
    """What the capture reads from its pipeline: the backend (model, manifest) and the
    preprocessor (groups, step)."""

    def __init__(self, version: int = 3) -> None:
        self.swap(version)
        self.preprocessor = type("P", (), {"groups": {"g": ["f2"]}, "features": FEATURES,
                                           "params": type("S", (), {"step": 2})()})()

    def swap(self, version: int) -> None:
        """The backend of model ``version`` (what an update or a rollback loads)."""
        self.backend = type("B", (), {"model": ModelRef("wt", version),
                                      "manifest": {"name": "wt", "version": version}})()


def a_round(t: float, turbines: int = 2, version: int = 3, anomalous: int = 0) -> Round:
    """``turbines`` decisions at wall-clock ``t``, the first ``anomalous`` of them
    anomalous in f2 (group g); each with model input of 4 rows of 2 features."""
    flags = np.zeros((turbines, 2), dtype=bool)
    flags[:anomalous, 1] = True
    values = np.where(flags, 2.0, 0.5)
    decisions = [Decision("p1", f"t-{i}", t, tuple(values[i]), tuple(flags[i]),
                          {"g": bool(flags[i, 1])}, ModelRef("wt", version))
                 for i in range(turbines)]
    model_input = np.zeros((turbines, 1, 2, 4))  # (decisions, windows, features, rows)
    return Round("p1", decisions, FEATURES, (1.0, 1.0), t, 0.0,
                 model_io=(model_input, np.zeros((turbines, 1))), values=values,
                 anomalous=flags, group_flags=flags[:, 1:])


def make(tmp_path: Path, clock: FakeClock, counters: Counters,
         source: Source | None = None) -> PipelineCapture:
    spec = PipelineCaptureSpec.model_validate({
        "rate": {"every": 1000}, "destination": {"type": "disk", "path": str(tmp_path / "out")}})
    capture = PipelineCapture("p1", spec, device="dev-1", root=tmp_path / "spool",
                              counters=counters, source=source or Source(),
                              clock=lambda: True)
    capture.wall_clock = clock
    return capture


def sketches(tmp_path: Path) -> list[tuple[str, dict]]:
    """Every uploaded sketch record with its partition, oldest first."""
    root = tmp_path / "out"
    found = [(str(path.relative_to(root).parent), json.loads(line))
             for path in root.rglob("*.jsonl.gz")
             for line in gzip.decompress(path.read_bytes()).splitlines()]
    return sorted(((p, r) for p, r in found if r["kind"] == "sketch"),
                  key=lambda item: item[1]["time"])


async def until(condition) -> None:
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def writing(capture: PipelineCapture):
    """The capture's writer running; on leaving, stopped as at shutdown (its partials
    written) and everything spooled uploaded."""
    writer = asyncio.create_task(capture.write_loop())
    try:
        yield
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await capture.upload_pending()


def sketch_records(counters: Counters, final: str) -> int:
    return counters.get("sketch_records", pipeline="p1", final=final)


async def test_the_hours_end_writes_the_final_record_without_another_round(tmp_path):
    clock, counters = FakeClock(HOUR + 3000), Counters()
    async with make(tmp_path, clock, counters) as capture:
        capture.on_round(a_round(HOUR + 3000, anomalous=1))
        capture.on_round(a_round(HOUR + 3001))
        assert capture.sketch_totals()["decisions"] == 4
        clock.advance(601)  # past the hour's end; no round comes
        async with writing(capture):
            await until(lambda: sketch_records(counters, "true"))
            assert capture.sketch_totals() is None  # nothing open any more
    [(where, record)] = sketches(tmp_path)
    assert record["final"] is True and sketch_records(counters, "false") == 0
    assert record["time"] == record["period_end"] == HOUR + 3600
    assert record["period_start"] == HOUR and where.endswith("date=2023-11-14/hour=23")
    assert (record["decisions"], record["anomalous"], record["turbines"]) == (4, 1, 2)
    assert record["groups"] == {"g": 1}
    # Each decision's newest `step` (2) rows of both features, all 0: the bin [0, 0.5).
    zero_bin = record["input_edges"].index(0.0) + 1
    assert [row[zero_bin] for row in record["input_counts"]] == [8, 8]
    assert [sum(row) for row in record["input_counts"]] == [8, 8]
    assert record["error_counts"][1][record["error_edges"].index(2.0) + 1] == 1


async def test_a_round_after_the_hour_closes_it_and_the_new_hour_is_partial_at_shutdown(
        tmp_path):
    clock, counters = FakeClock(HOUR + 3599), Counters()
    async with make(tmp_path, clock, counters) as capture, writing(capture):
        capture.on_round(a_round(HOUR + 3599))
        clock.advance(2)
        capture.on_round(a_round(HOUR + 3601, turbines=3))
        await until(lambda: sketch_records(counters, "true"))
        assert capture.sketch_totals()["decisions"] == 3
        assert capture.sketch_totals()["period_start"] == HOUR + 3600
    (first_at, first), (second_at, second) = sketches(tmp_path)
    assert (first["final"], first["decisions"], first["period_start"]) == (True, 2, HOUR)
    assert (second["final"], second["decisions"]) == (False, 3)
    assert second["period_start"] == HOUR + 3600 and second["time"] == HOUR + 3601
    assert (first_at[-7:], second_at[-7:]) == ("hour=23", "hour=00")
    # The open hour is saved for the next start to continue.
    saved = json.loads((tmp_path / "spool" / "sketches.json").read_bytes())
    assert list(saved["sketches"]) == [second["key"]]


async def test_a_model_swap_writes_the_old_versions_partial_then_both_finals(tmp_path):
    clock, counters = FakeClock(HOUR + 10), Counters()
    source = Source(3)
    async with make(tmp_path, clock, counters, source) as capture, writing(capture):
        capture.on_round(a_round(HOUR + 10, version=3))
        capture.on_round(a_round(HOUR + 11, version=3, anomalous=2))
        source.swap(4)  # the update lands
        capture.on_round(a_round(HOUR + 20, version=4))
        await until(lambda: sketch_records(counters, "false"))
        assert capture.sketch_totals()["model_version"] == 4
        assert capture.sketch_totals()["decisions"] == 2
        clock.advance(3600)
        capture.on_round(a_round(HOUR + 3610, version=4))
        await until(lambda: sketch_records(counters, "true") == 2)
    found = sketches(tmp_path)
    swap = found[0][1]
    assert (swap["model_version"], swap["final"], swap["decisions"]) == (3, False, 4)
    assert swap["time"] == HOUR + 20 and swap["anomalous"] == 2
    assert found[0][0].startswith("device=dev-1/model=wt/version=3/")
    finals = {r["model_version"]: r for _, r in found if r["final"]}
    # The old version's final supersedes its partial (same key, later time).
    assert finals[3]["key"] == swap["key"] and finals[3]["time"] > swap["time"]
    assert (finals[3]["decisions"], finals[4]["decisions"]) == (4, 2)
    assert finals[3]["bundle_sha256"] != finals[4]["bundle_sha256"]
    # The new hour's round: version 4's partial at shutdown.
    assert [(r["model_version"], r["final"], r["decisions"]) for _, r in found[3:]] == [
        (4, False, 2)]


def stale(kind: str, t: float, turbines: int = 1) -> Event:
    return Event(kind, "p1", "*" if turbines > 1 else "t-0", t,
                 detail={"turbines": turbines} if turbines > 1 else None)


def test_stale_turbine_seconds_are_counted_and_split_at_the_hours_end():
    sketcher = Sketcher("p1", "dev-1", ("g",))
    sketcher.observe(a_round(HOUR + 10), bins=Bins(), step=2, sha=None)
    sketcher.on_event(stale("sensor_stale", HOUR + 100))  # one turbine...
    sketcher.on_event(stale("sensor_stale", HOUR + 200, turbines=3))  # ...then four
    sketcher.on_event(stale("sensor_recovered", HOUR + 300, turbines=3))  # one again
    [partial] = sketcher.partial(HOUR + 400)
    assert partial["stale_s"] == 100 + 4 * 100 + 100
    [final] = sketcher.roll(HOUR + 3700)  # the one stays stale across the hour's end
    assert final["stale_s"] == 100 + 400 + (3600 - 300)
    sketcher.observe(a_round(HOUR + 3650), bins=Bins(), step=2, sha=None)
    sketcher.on_event(stale("sensor_recovered", HOUR + 3800))
    sketcher.on_event(stale("sensor_recovered", HOUR + 3900))  # more than were stale
    [partial] = sketcher.partial(HOUR + 4000)
    # The new hour counts from its start, not from the roll.
    assert partial["stale_s"] == 200


def test_totals_report_psi_against_the_manifests_expected_distribution():
    edges = [-1.0, 1.0]
    expected = [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1]]
    bins = Bins.from_manifest({"monitoring": {"input_edges": edges,
                                              "expected_input": expected}}, 2)
    sketcher = Sketcher("p1", "dev-1", ("g",))
    assert sketcher.totals() is None
    sketcher.observe(a_round(HOUR), bins=bins, step=2, sha=None)
    totals = sketcher.totals()
    # Every value 0: all in the middle bin, against 0.8 expected there.
    a, e = np.array([1e-4, 1.0, 1e-4]), np.array(expected[0])
    assert totals["psi_max"] == np.sum((a - e) * np.log(a / e))
    assert (totals["decisions"], totals["anomalous"]) == (2, 0)
    without = Sketcher("p1", "dev-1", ("g",))
    without.observe(a_round(HOUR), bins=Bins(), step=2, sha=None)
    assert without.totals()["psi_max"] is None


async def test_an_unreadable_state_file_is_counted_and_the_hour_starts_afresh(tmp_path):
    clock, counters = FakeClock(HOUR + 10), Counters()
    (tmp_path / "spool").mkdir()
    key = f"p1:3:{HOUR:.0f}"
    (tmp_path / "spool" / "sketches.json").write_text(json.dumps(
        {"schema": 1, "sketches": {key: {"kind": "sketch", "decisions": -5}}}))
    async with make(tmp_path, clock, counters) as capture:
        capture.on_round(a_round(HOUR + 10))
        assert capture.sketch_totals()["decisions"] == 2
    assert counters.get("sketch_state_unreadable", pipeline="p1") == 1
