"""``capture.spool.include_rows``: each record carries the raw source rows its window was
built from, exactly as the source sent them. Through a running graph: a replay source
(a CSV whose every row the test knows) -> windturbine + onnx -> capture -> disk."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from edged.testing import eventually, running_graph
from edged.windturbine import layout
from edged.windturbine.simulator import WindFarm
from tests.support import lake

TURBINES = ("T-a", "T-b", "T-c")
ROWS = 800  # per turbine; the windturbine history is 500


def write_replay(path: Path) -> dict[str, list[list[float]]]:
    """A CSV in the dataset layout, ticks in order; returns each turbine's input rows
    (the pipeline's inputs, in its order) as the file holds them."""
    ticks = WindFarm(turbines=len(TURBINES), rate_hz=20, seed=4).ticks(ROWS)
    columns = [layout.DATASET_COLUMNS.index(name) for name in layout.INPUTS]
    sent: dict[str, list[list[float]]] = {t: [] for t in TURBINES}
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(layout.DATASET_COLUMNS)
        for tick in ticks:
            for turbine, row in zip(TURBINES, tick, strict=True):
                fields = ["0"] * len(layout.DATASET_COLUMNS)
                fields[layout.DATASET_COLUMNS.index("turbineId")] = turbine
                fields[layout.DATASET_COLUMNS.index("eventTime")] = "2024-01-01T00:00:00"
                values = [float(row[c]) for c in columns]
                for c, value in zip(columns, values, strict=True):
                    fields[c] = repr(value)
                sent[turbine].append(values)
                out.writerow(fields)
    return sent


def write_config(tmp_path: Path, include_rows: bool | None) -> Path:
    spool = {"fsync": "never", "include_window": True}
    if include_rows is not None:
        spool["include_rows"] = include_rows
    config = {
        "device": {"id": "dev-raw"},
        "log": {"level": "warning", "format": "json", "stats_interval_s": 0},
        "state_dir": str(tmp_path / "state"),
        "shutdown": {"stage_timeout_s": 5},
        "sources": {"csv": {"type": "replay", "path": str(tmp_path / "rows.csv"),
                            "speed": "max"}},
        "pipelines": {"wt": {
            "inputs": ["csv"],
            "preprocessor": {"type": "windturbine"},
            "inference": {"type": "onnx", "model": "builtin:windturbine-v1"},
            "interval_s": 0.1,
            "capture": {"rate": {"every": 1}, "spool": spool,
                        "upload": {"interval_s": 0.1},
                        "destination": {"type": "disk", "path": str(tmp_path / "out")}},
        }},
    }
    path = tmp_path / "edged.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def captured(tmp_path: Path, include_rows: bool | None) -> tuple[list[dict], object]:
    """Run the graph until the whole file is ingested and every decision so far is
    uploaded; the records and the pipeline."""
    config = write_config(tmp_path, include_rows)

    async def main():
        async with running_graph(config) as graph:
            counters = graph.counters

            def done() -> bool:
                decisions = counters.get("decisions", pipeline="wt")
                return (counters.get("rows_accepted", pipeline="wt") == ROWS * len(TURBINES)
                        and decisions >= len(TURBINES)
                        and counters.get("capture_uploaded", pipeline="wt") == decisions)

            await eventually(done)
            return graph.pipelines["wt"]

    pipeline = asyncio.run(main())
    return lake.records(tmp_path / "out"), pipeline


def test_records_carry_exactly_the_rows_the_source_sent(tmp_path):
    sent = write_replay(tmp_path / "rows.csv")
    records, pipeline = captured(tmp_path, include_rows=True)
    history = pipeline.preprocessor.history
    assert {r["turbine"] for r in records} == set(TURBINES)
    for r in records:
        assert r["raw_inputs"] == list(layout.INPUTS)
        # The rows behind this decision: the turbine's last `history` up to its newest.
        assert r["raw_rows"] == sent[r["turbine"]][r["rows"] - history:r["rows"]], r["key"]
        assert len(r["window"]) == history
        # And the window beside them was computed from those very rows.
        np.testing.assert_allclose(
            r["window"], pipeline.preprocessor.row_features(np.array(r["raw_rows"])))


@pytest.mark.parametrize("include_rows", [None, False])
def test_off_by_default_and_absent_from_records(tmp_path, include_rows):
    write_replay(tmp_path / "rows.csv")
    records, pipeline = captured(tmp_path, include_rows)
    assert records
    assert not pipeline.buffers.keeps_raw  # no second ring, nothing copied into one
    for r in records:
        assert "raw_rows" not in r and "raw_inputs" not in r
