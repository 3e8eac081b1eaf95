"""Capture records and the clocks: boot id, sequence numbers that order records however
the wall clock moves, and the flag on the records of the round that saw it step."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

from edged.base.metrics import Counters
from edged.capture.decision_records import BOOT_ID, boot_id, encode_record
from edged.capture.pipeline_capture import PipelineCapture
from edged.capture.policy import Pick, Sampler
from edged.config.capture import PipelineCaptureSpec
from edged.plugin.events import Decision, ModelRef
from edged.testing import eventually, running_graph

HOUR = 3600.0


def decision(rows: int, t: float) -> Decision:
    return Decision("p", "t1", t, (0.1,), (False,), {"g": False}, ModelRef("m", 1), rows=rows)


def encode(pick: Pick) -> dict:
    meta = (("f",), (1.0,), {}, 500.0, 1_700_000_010.0)
    return json.loads(encode_record(pick, meta, "p", "dev", True))


def test_boot_id_is_the_kernels():
    expected = BOOT_ID.read_text().strip() if BOOT_ID.exists() else None
    assert boot_id() == expected
    assert encode(Pick(decision(1, 1_700_000_000.0), ["rate"]))["boot_id"] == expected


def test_a_sampled_record_carries_its_rounds_stamps():
    sampler = Sampler()
    sampler.on_demand.request("*", 1e9)
    raw = np.arange(6.0).reshape(1, 2, 3)
    [pick] = sampler.select([decision(7, 1_700_000_000.0)], 400.0, None, raw, ("a", "b", "c"))
    r = encode(pick)
    assert r["seq"] == 400_000_000_000 and r["monotonic"] == 400.0
    assert r["clock_step_s"] is None and r["clock_synced"] is True
    assert r["raw_inputs"] == ["a", "b", "c"] and r["raw_rows"] == [[0, 1, 2], [3, 4, 5]]
    [stepped] = sampler.select([decision(8, 1_700_000_000.0 - HOUR)], 401.0)
    r = encode(stepped)
    assert r["clock_step_s"] == -HOUR - 1.0 and r["seq"] == 401_000_000_000
    assert "raw_rows" not in r and "raw_inputs" not in r


def test_arrays_are_written_exactly_whatever_their_layout_and_dtype():
    """numpy arrays go into the JSON as the numbers they hold: float64 as the same
    doubles, float32 as the shortest text that reads back as the same float32 (the
    model's own input and output are float32), a non-contiguous view and integers too;
    a NaN score becomes null (JSON has no NaN), the rest of the record intact."""
    rng = np.random.default_rng(3)
    window = rng.normal(size=(5, 12))[:, ::2]  # a view: not C-contiguous
    raw = rng.normal(size=(5, 3)).astype(np.float32)
    model_in, model_out = np.arange(8, dtype=np.int64).reshape(2, 4), rng.normal(size=(2, 4))
    d = Decision("p", "t1", 1_700_000_000.0, (np.float64(0.1), float("nan")),
                 (np.bool_(True), False), {"g": True}, ModelRef("m", 1), rows=3)
    pick = Pick(d, ["anomaly"], window=window, raw=raw, raw_inputs=("a", "b", "c"),
                model_io=(model_in, model_out))
    line = encode_record(pick, (("f1", "f2"), np.array([1.0, 2.0]), {}, 500.0,
                                1_700_000_010.0), "p", "dev", True)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    r = json.loads(line)
    assert r["window"] == window.tolist()
    assert np.array_equal(np.array(r["raw_rows"], dtype=np.float32), raw)
    assert r["model_input"] == model_in.tolist()
    assert r["model_output"] == model_out.tolist()
    assert r["values"] == [0.1, None] and r["flags"] == [True, False]
    assert r["thresholds"] == [1.0, 2.0] and r["features"] == ["f1", "f2"]


def test_a_hand_made_pick_falls_back_to_its_queued_round():
    r = encode(Pick(decision(1, 1_700_000_000.0), ["rate"]))
    assert r["seq"] is None and r["clock_step_s"] is None
    assert r["monotonic"] == 490.0  # queued at 500.0, decided 10 s of wall time before


# -- a running pipeline whose wall clock steps back an hour -------------------------------

def capture_section(tmp_path: Path) -> dict:
    return {"rate": {"every": 1}, "spool": {"fsync": "batch"},
            "upload": {"interval_s": 0.1},
            "destination": {"type": "disk", "path": str(tmp_path / "out")}}


def write_config(tmp_path: Path) -> Path:
    config = {
        "device": {"id": "dev-clock"},
        "log": {"level": "warning", "format": "json", "stats_interval_s": 0},
        "state_dir": str(tmp_path / "state"),
        "shutdown": {"stage_timeout_s": 5},
        "sources": {"farm": {"type": "simulator", "turbines": 3, "rate_hz": 20, "seed": 8,
                             "history_s": 25}},
        "pipelines": {"wt": {
            "inputs": ["farm"],
            "preprocessor": {"type": "windturbine"},
            "inference": {"type": "onnx", "model": "builtin:windturbine-v1"},
            "interval_s": 0.1,
            "capture": capture_section(tmp_path),
        }},
    }
    path = tmp_path / "edged.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def uploaded(root: Path) -> list[tuple[dict, str]]:
    """Every decision record at the destination, with the partition folders of its
    object (the hourly ``sketch`` records beside them are tests/capture/test_sketches)."""
    found = []
    for obj in sorted(root.rglob("*.jsonl.gz")):
        partition = str(obj.relative_to(root).parent)
        found += [(record, partition)
                  for record in map(json.loads, gzip.decompress(obj.read_bytes()).splitlines())
                  if record["kind"] == "decision"]
    return found


def test_clock_stepped_back_an_hour_mid_run(tmp_path):
    config = write_config(tmp_path)

    async def main() -> tuple[float, int]:
        async with running_graph(config) as graph:
            counters, pipeline = graph.counters, graph.pipelines["wt"]
            await eventually(lambda: counters.get("capture_uploaded", pipeline="wt") >= 15)
            stepped_at = time.monotonic()
            pipeline.wall_clock = lambda: time.time() - HOUR  # what a bad NTP step does
            before = counters.get("decisions", pipeline="wt")
            await eventually(lambda: counters.get("decisions", pipeline="wt") >= before + 15)
        # What the stop left in the spool goes out with the next start.
        spec = PipelineCaptureSpec.model_validate(capture_section(tmp_path))
        async with PipelineCapture("wt", spec, device="dev-clock",
                                   root=tmp_path / "state" / "capture" / "wt",
                                   counters=Counters()) as capture:
            uploader = asyncio.create_task(capture.upload_loop())
            await eventually(lambda: capture.pending == 0)
            uploader.cancel()
            await asyncio.gather(uploader, return_exceptions=True)
        return stepped_at, counters.get("decisions", pipeline="wt")

    stepped_at, decisions = asyncio.run(main())
    found = uploaded(tmp_path / "out")
    records = [r for r, _ in found]
    # Every decision was captured (every: 1) and every record uploaded, once.
    assert len(records) == decisions
    assert len({r["key"] for r in records}) == decisions
    # The partition stays the wall-clock time, stepped or not.
    for r, partition in found:
        wall = datetime.fromtimestamp(r["time"], UTC)
        assert partition.endswith(f"date={wall:%Y-%m-%d}/hour={wall:%H}"), partition

    assert {r["boot_id"] for r in records} == {boot_id()}
    assert all(isinstance(r["seq"], int) for r in records)
    for turbine in {r["turbine"] for r in records}:
        mine = sorted((r for r in records if r["turbine"] == turbine),
                      key=lambda r: (r["boot_id"], r["seq"]))
        # (boot_id, seq) order is the order of the decisions, and of monotonic time...
        assert [r["rows"] for r in mine] == sorted(r["rows"] for r in mine)
        monotonic = [r["monotonic"] for r in mine]
        assert monotonic == sorted(monotonic)
        # ...which the wall clock is not: it went back.
        walls = [r["time"] for r in mine]
        assert walls != sorted(walls)

    before = [r for r in records if r["monotonic"] < stepped_at]
    after = [r for r in records if r["monotonic"] > stepped_at]
    assert before and after and len(before) + len(after) == len(records)
    offset = before[0]["time"] - before[0]["monotonic"]  # wall - monotonic, unstepped
    assert all(abs(r["time"] - r["monotonic"] - offset) < 0.5 for r in before)
    assert all(abs(r["time"] - r["monotonic"] - (offset - HOUR)) < 0.5 for r in after)
    assert all(r["clock_step_s"] is None for r in before)
    # Flagged: the records of the first round after the step, each with the step; not
    # the rounds after it.
    first_round = min(r["monotonic"] for r in after)
    flagged = [r for r in records if r["clock_step_s"] is not None]
    assert flagged == [r for r in after if r["monotonic"] == first_round]
    assert all(abs(r["clock_step_s"] + HOUR) < 1.0 for r in flagged)
