"""Captures are a partitioned table as they lie: DuckDB reads the objects both record
kinds leave (a running graph's decisions and the agent's CaptureData) with Hive
partitioning and no ETL, and the answers match the records."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from test_pipeline_capture_graph import config_text

from edged.capture import CaptureSettings, CaptureStore
from edged.capture.segments import parse_key
from edged.testing import eventually, running_graph

duckdb = pytest.importorskip("duckdb")

PARTITIONS = {"device", "model", "version", "date", "hour"}


async def capture_both_kinds(tmp_path: Path, make_record) -> Path:
    """A graph capturing to ``out/`` (turbine-1 has a voltage fault), then two agent
    captures into the same folder; returns the folder."""
    path = tmp_path / "edged.yaml"
    path.write_text(config_text(tmp_path))
    async with running_graph(path) as graph:
        await eventually(lambda: graph.counters.get("capture_uploaded", pipeline="wt") >= 20)
    settings = CaptureSettings(destination="Disk", disk_path=tmp_path / "out",
                               device_name="dev-7", batch_size=2)
    async with CaptureStore(settings) as store:
        await store.submit(make_record(0))
        await store.submit(make_record(1))
        await eventually(lambda: store.pending == 0)
    return tmp_path / "out"


def read_all(root: Path) -> list[tuple[dict, dict]]:
    """Every record with its object's partition, read without DuckDB."""
    found = []
    for obj in root.rglob("*.jsonl.gz"):
        partition = parse_key(obj.relative_to(root).as_posix())
        found += [(json.loads(line), partition)
                  for line in gzip.decompress(obj.read_bytes()).splitlines()]
    return found


async def test_duckdb_reads_the_captures_as_a_partitioned_table(tmp_path, make_record):
    root = await capture_both_kinds(tmp_path, make_record)
    records = read_all(root)
    # Spark and Athena refuse a table whose data columns repeat a partition column.
    assert not {key for record, _ in records for key in record} & PARTITIONS

    table = (f"read_json_auto('{root}/**/*.jsonl.gz', hive_partitioning = true, "
             "union_by_name = true)")
    db = duckdb.connect()
    columns = {row[0] for row in db.execute(f"DESCRIBE SELECT * FROM {table}").fetchall()}
    assert PARTITIONS | {"kind", "turbine", "anomalous", "capture_id", "seq"} <= columns

    decisions = [(r, p) for r, p in records if r["kind"] == "decision"]
    [model] = {p["model"] for _, p in decisions}
    expected = {}
    for record, _ in decisions:
        seen, anomalous = expected.get(record["turbine"], (0, 0))
        expected[record["turbine"]] = (seen + 1, anomalous + record["anomalous"])
    rows = db.execute(
        f"SELECT turbine, count(*), sum(anomalous::INT) FROM {table} "
        "WHERE kind = 'decision' AND device = 'dev-7' AND model = ? AND version = 1 "
        "GROUP BY turbine", [model]).fetchall()
    assert {t: (n, a) for t, n, a in rows} == expected
    assert expected["turbine-1"][1] > 0 and expected["turbine-0"][1] == 0

    agent = db.execute(f"SELECT capture_id, model, version FROM {table} "
                       "WHERE kind = 'agent' ORDER BY capture_id").fetchall()
    assert agent == [("cap-00000", "model-a", "unknown"), ("cap-00001", "model-a", "unknown")]
