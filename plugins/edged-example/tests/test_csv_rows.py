"""The csv_rows source's own tests, written with edged's plugin-author kit
(``edged.testing``): built as the daemon builds it, run until it has emitted, and run in
a small graph with the reference pipeline."""

import csv
import json
import re
from pathlib import Path

import pytest

from edged.config import parse_config
from edged.plugin.manager import make_plugin_manager
from edged.testing import build_component, collect_readings, eventually, running_graph
from edged.windturbine.layout import DATASET_COLUMNS, INPUTS
from edged.windturbine.simulator import WindFarm, parse_schedule
from edged_example.csv_rows import CsvRowsSource


def write_rows(path, rows):
    with path.open("w", newline="") as file:
        csv.writer(file).writerows([["turbine", "speed", "volts"], *rows])
    return path


def test_registered_through_its_entry_point():
    _, registry = make_plugin_manager()
    info = next(p for p in registry.plugins if p.name == "csv_rows")
    assert info.distribution == "edged-example"
    assert registry.component("source", "csv_rows").factory is CsvRowsSource


async def test_emits_each_row_with_its_turbine(tmp_path):
    path = write_rows(tmp_path / "rows.csv", [["t-1", "1.5", "230"], ["t-2", "2", "231.5"]])
    source = build_component("source", {"type": "csv_rows", "path": str(path)}, tmp_path)
    readings = await collect_readings(source)  # until the file ends
    assert [r.turbines for r in readings] == [("t-1",), ("t-2",)]
    assert [r.values.tolist() for r in readings] == [[[1.5, 230.0]], [[2.0, 231.5]]]


async def test_gives_the_pipeline_its_columns_in_its_order(tmp_path):
    path = write_rows(tmp_path / "rows.csv", [["t-1", "1.5", "230"]])
    source = build_component("source", {"type": "csv_rows", "path": str(path)}, tmp_path,
                             inputs=("volts", "speed"))
    (reading,) = await collect_readings(source)
    assert reading.values.tolist() == [[230.0, 1.5]]


async def test_skips_and_counts_a_row_that_is_not_numbers(tmp_path):
    path = write_rows(tmp_path / "rows.csv", [["t-1", "fast", "230"], ["t-1", "1", "2"]])
    source = build_component("source", {"type": "csv_rows", "path": str(path)}, tmp_path)
    readings = await collect_readings(source)
    assert [r.values.tolist() for r in readings] == [[[1.0, 2.0]]]
    assert source.counters.get("rows_rejected", source="test", reason="not_a_number") == 1


async def test_counts_each_bad_row_by_its_reason(tmp_path):
    path = write_rows(tmp_path / "rows.csv", [["t-1", "1"], ["", "1", "2"], ["t-1", "nan", "2"],
                                              ["t-1", "", "2"], ["t-2", "3", "4"]])
    source = build_component("source", {"type": "csv_rows", "path": str(path)}, tmp_path)
    readings = await collect_readings(source)
    assert [r.turbines for r in readings] == [("t-2",)]
    counted = {reason: source.counters.get("rows_rejected", source="test", reason=reason)
               for reason in ("wrong_width", "no_turbine", "not_finite", "missing_field")}
    assert counted == {"wrong_width": 1, "no_turbine": 1, "not_finite": 1, "missing_field": 1}


async def test_loops_until_stopped(tmp_path):
    path = write_rows(tmp_path / "rows.csv", [["t-1", "1", "2"]])
    source = build_component("source", {"type": "csv_rows", "path": str(path), "loop": True},
                             tmp_path)
    assert len(await collect_readings(source, rows=5)) == 5


def test_refuses_a_file_without_the_pipelines_columns(tmp_path):
    path = write_rows(tmp_path / "rows.csv", [])
    with pytest.raises(ValueError, match="no column rps"):
        build_component("source", {"type": "csv_rows", "path": str(path)}, tmp_path,
                        inputs=("speed", "rps"))


async def test_a_fault_in_the_file_is_detected_by_the_reference_pipeline(tmp_path):
    # 20 s of a simulated farm at 20 Hz, turbine-1's voltage faulty throughout.
    farm = WindFarm(turbines=2, seed=3, faults=parse_schedule("1:voltage@0-600"))
    columns = [DATASET_COLUMNS.index(name) for name in INPUTS]
    rows = [[f"turbine-{t}", *row[columns]] for tick in farm.ticks(400)
            for t, row in enumerate(tick)]
    with (tmp_path / "farm.csv").open("w", newline="") as file:
        csv.writer(file).writerows([["turbine", *INPUTS], *rows])
    config = tmp_path / "edged.yaml"
    config.write_text(f"""\
device: {{id: example}}
state_dir: {tmp_path / "state"}
log: {{level: info, stats_interval_s: 0}}
sources:
  farm: {{type: csv_rows, path: {tmp_path / "farm.csv"}, interval_s: 0.002, loop: true}}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx, model: "builtin:windturbine-v1"}}
    interval_s: 0.3
actuators:
  alarms: {{type: jsonl, inputs: [turbines], path: {tmp_path / "alarms.jsonl"}}}
""")
    alarms = tmp_path / "alarms.jsonl"

    def alarmed() -> set[str]:
        lines = alarms.read_text().splitlines() if alarms.exists() else []
        return {event["turbine"] for line in lines
                if (event := json.loads(line))["kind"] == "alarm"}

    async with running_graph(config):
        await eventually(lambda: "turbine-1" in alarmed(), 30)
    assert alarmed() == {"turbine-1"}


def test_the_readme_sample_config_validates():
    readme = Path(__file__).resolve().parents[1] / "README.md"
    (sample,) = re.findall(r"```yaml\n(.*?)```", readme.read_text(), re.DOTALL)
    config = parse_config(sample, str(readme), make_plugin_manager()[1])
    assert config.sources["recorded"].type == "csv_rows"
    assert config.actuators["alarm-file"].type == "jsonl"
