"""edged-cloud monitor: PSI and KS against independent computations, a lake with one
drifting and one silent device flagged exactly so (folder and S3 through DuckDB's httpfs on
moto's server), the HTML's plots, the DDL text and the shared queries on DuckDB."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edged_cloud import cli
from edged_cloud.monitor import sql, stats, synth
from edged_cloud.monitor.lake import Lake
from tests.support.aws import AwsServer

START = 1_790_000_000 // 3600 * 3600
HOURS = 48
NOW = START + HOURS * 3600


def fleet() -> list[synth.Device]:
    devices = [synth.Device(f"dev-{i:02d}", windows=True) for i in range(5)]
    devices[1].drift_feature, devices[1].drift = "yaw", 1.0
    devices[3].silent_from = START + 40 * 3600
    return devices


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lake")
    synth.write_lake(root, fleet(), START, HOURS)
    return root


def test_psi_matches_a_hand_computation():
    rng = np.random.default_rng(1)
    expected = rng.dirichlet(np.ones(18), size=3)
    actual = rng.integers(0, 500, size=(3, 18))
    actual[0, 4] = 0  # an empty bin: floored, not infinite
    for e, a, got in zip(expected, actual, stats.psi(expected, actual), strict=True):
        p = np.maximum(a / a.sum(), 1e-4)
        q = np.maximum(e / e.sum(), 1e-4)
        want = sum((p[i] - q[i]) * math.log(p[i] / q[i]) for i in range(18))
        assert got == pytest.approx(want, rel=1e-12)
    assert np.isnan(stats.psi(expected[:1], np.zeros((1, 18))))[0]


def test_ks_matches_a_hand_computation():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 300), rng.normal(0.3, 1, 400)
    # D by brute force over every point of both samples
    d = max(abs(np.mean(a <= x) - np.mean(b <= x)) for x in np.concatenate([a, b]))
    n = math.sqrt(300 * 400 / 700)
    lam = (n + 0.12 + 0.11 / n) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 200))
    got_d, got_p = stats.ks_2samp(a, b)
    assert got_d == pytest.approx(d, abs=1e-12)
    assert got_p == pytest.approx(p, rel=1e-9)
    assert got_p < 0.01
    same_d, same_p = stats.ks_2samp(a, rng.normal(0, 1, 400))
    assert same_p > 0.01


def test_expected_input_histograms_the_newest_rows():
    windows = np.arange(2 * 6 * 100, dtype=float).reshape(2, 6, 10, 10) / 1000 - 0.5
    rows = stats.newest_rows(windows, 10)
    assert rows.shape == (6, 20)
    assert rows[0, 0] == windows[0, 0, 9, 0] and rows[0, 10] == windows[1, 0, 9, 0]
    expected = stats.expected_input(windows, stats.DEFAULT_INPUT_EDGES)
    assert len(expected) == 6 and all(len(e) == 18 for e in expected)
    assert all(sum(e) == pytest.approx(1) for e in expected)


def run(capsys, *argv) -> tuple[int, str]:
    code = cli.main(["monitor", *map(str, argv)])
    return code, capsys.readouterr().out


def test_the_drifting_and_the_silent_device_are_flagged_exactly(lake, capsys, tmp_path):
    code, out = run(capsys, lake, "--now", NOW, "--json", "--html", tmp_path / "r.html",
                    "--fail-on", "drift,silent")
    report = json.loads(out)
    assert code == 3
    assert report["fleet"]["devices"] == 5
    assert report["fleet"]["drifted"] == ["dev-01"]
    assert report["fleet"]["silent"] == ["dev-03"]
    assert report["fleet"]["versions"] == {"1": 5}
    by_name = {d["device"]: d for d in report["devices"]}
    assert by_name["dev-01"]["drift"]["feature"] == "yaw"
    assert by_name["dev-01"]["drift"]["ks"]["feature"] == "yaw"
    assert by_name["dev-01"]["drift"]["ks"]["differs"] is True
    # its last sketch covered hour 39 and was written a second after that hour ended
    last = datetime.fromtimestamp(START + 40 * 3600 + 1, UTC).isoformat(timespec="seconds")
    assert by_name["dev-03"]["last_seen"] == last
    for d in report["devices"]:
        assert set(d) >= {"device", "model_version", "last_seen", "silent", "anomaly_rate"}
        assert set(d["drift"]) >= {"psi_max", "feature", "drifted"}
    page = (tmp_path / "r.html").read_text()
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 3
    assert "dev-01: yaw against the training distribution" in page
    code, _ = run(capsys, lake, "--now", NOW, "--fail-on", "behind")
    assert code == 0


def test_a_device_on_an_older_version_is_behind_and_a_switch_is_a_rollout(tmp_path, capsys):
    devices = [synth.Device("a"), synth.Device("b"),
               synth.Device("c", switch_at=NOW - 3600, switch_to=2)]
    devices[1].switch_at, devices[1].switch_to = START, 2
    synth.write_lake(tmp_path, devices, START, HOURS)
    code, out = run(capsys, tmp_path, "--now", NOW, "--json", "--fail-on", "behind")
    report = json.loads(out)
    assert code == 3
    assert report["fleet"]["behind"] == ["a"]
    assert report["fleet"]["versions"] == {"1": 1, "2": 2}
    assert report["fleet"]["rollout_in_progress"] is True
    assert {d["device"]: d["switching"] for d in report["devices"]} == \
        {"a": False, "b": False, "c": True}


def test_a_training_baseline_is_what_psi_compares_against(lake, tmp_path, capsys):
    rng = np.random.default_rng(3)
    windows = rng.standard_normal((400, 6, 10, 10)).astype(np.float32)
    np.savez(tmp_path / "validation.npz", inputs=windows, labels=np.array(["healthy"] * 400))
    code, out = run(capsys, lake, "--now", NOW, "--json", "--baseline", tmp_path)
    report = json.loads(out)
    assert report["fleet"]["drifted"] == ["dev-01"]
    assert {d["drift"]["baseline"] for d in report["devices"]} == {"training"}


def test_ddl_key_clauses():
    athena = sql.athena_ddl("s3://b/captures", devices=["d1", "d2"])
    assert athena.count("CREATE EXTERNAL TABLE IF NOT EXISTS") == 2
    for clause in ("'projection.enabled' = 'true'",
                   "'projection.device.type' = 'enum'", "'projection.device.values' = 'd1,d2'",
                   "'projection.model.type' = 'injected'",
                   "'projection.date.type' = 'date'", "'projection.date.format' = 'yyyy-MM-dd'",
                   "'projection.hour.type' = 'integer'", "'projection.hour.range' = '0,23'",
                   "'projection.hour.digits' = '2'", "'projection.version.type' = 'integer'",
                   "'storage.location.template' = 's3://b/captures/device=${device}/"
                   "model=${model}/version=${version}/date=${date}/hour=${hour}/'",
                   "ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'",
                   "`input_counts` array<array<bigint>>", "`window` array<array<double>>",
                   "PARTITIONED BY (\n  `device` string,\n  `model` string,\n  `version` int,"
                   "\n  `date` string,\n  `hour` int\n)"):
        assert clause in athena, clause
    assert "'projection.device.type' = 'injected'" in sql.athena_ddl("s3://b/c")
    spark = sql.spark_ddl("s3://b/captures")
    assert "USING json" in spark and "ALTER TABLE sketches RECOVER PARTITIONS;" in spark
    assert "PARTITIONED BY (`device`, `model`, `version`, `date`, `hour`)" in spark


def test_the_shared_queries_run_on_duckdb_unchanged(lake, capsys):
    con = Lake(str(lake))
    params = {"since": START, "since_date": "2026-09-21"}
    hourly = con.query(sql.HOURLY, **params)
    assert len(hourly) == 5 * HOURS - (HOURS - 40)
    assert {row[0] for row in con.query(sql.LAST_SEEN, **params)} == \
        {f"dev-{i:02d}" for i in range(5)}
    assert len(con.query(sql.LATEST_SKETCHES, **params)) == len(hourly)
    assert {row[1] for row in con.query(sql.VERSIONS, **params)} == {1}
    code, out = run(capsys, "ddl", "--engine", "athena", "--location", "s3://b/c", "--queries")
    assert code == 0 and sql.LATEST_SKETCHES in out.replace("\n\n", "\n")


def test_a_superseded_partial_hour_counts_once(tmp_path):
    rng = np.random.default_rng(4)
    device = synth.Device("x")
    partial = synth.sketch(device, 1, START, rng, decisions=100, final=False,
                           written=START + 600)
    whole = synth.sketch(device, 1, START, rng, decisions=7200, written=START + 3601)
    path = tmp_path / synth.key_of("x", 1, START)
    path.parent.mkdir(parents=True)
    import gzip
    path.write_bytes(gzip.compress(
        (json.dumps(partial) + "\n" + json.dumps(whole) + "\n").encode()))
    rows = Lake(str(tmp_path)).query(sql.HOURLY, since=START, since_date="2026-09-01")
    assert [(r[0], r[3]) for r in rows] == [("x", 7200)]


def test_mistakes_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["monitor", str(tmp_path / "nope")]) == 66
    assert "no such folder" in capsys.readouterr().err
    assert cli.main(["monitor", "ddl", "--engine", "athena"]) == 65
    assert cli.main(["monitor", "ddl", "--engine", "athena", "--location", "/tmp/x"]) == 65


def test_the_lake_on_s3_is_read_through_httpfs(lake, capsys, monkeypatch):
    with AwsServer() as aws:
        for name, value in aws.environment().items():
            monkeypatch.setenv(name, value)
        bucket = aws.create_bucket()
        s3 = aws.client()
        for path in lake.rglob("*.jsonl.gz"):
            s3.put_object(Bucket=bucket, Key="captures/" + str(path.relative_to(lake)),
                          Body=path.read_bytes())
        code, out = run(capsys, f"s3://{bucket}/captures", "--endpoint-url",
                        aws.endpoint_url, "--now", NOW, "--json")
    report = json.loads(out)
    assert code == 0
    assert report["fleet"]["drifted"] == ["dev-01"]
    assert report["fleet"]["silent"] == ["dev-03"]
