"""edged-cloud data: synth, import and from-captures give one prepared form, built by the
device's own code, and users' mistakes are one-line errors with an exit status."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.capture.segments import build_objects, partition
from edged.model.package import read_manifest, resolve_model_path
from edged.testing import build_component, collect_readings
from edged.windturbine.layout import DATASET_COLUMNS, FAULT_KINDS, INPUTS
from edged_cloud.cli import main
from edged_cloud.data import dataset as ds
from edged_cloud.data.captures import from_captures
from edged_cloud.data.csv_import import import_csv
from edged_cloud.errors import BadInput
from edged_cloud.train import prepare
from tests.support.servers import S3Server

BUILTIN = resolve_model_path("builtin:windturbine-v1")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", "-o", str(out), "--turbines", "2", "--seconds", "90",
                 "--fault-seconds", "5", "--seed", "3"]) == 0
    return out


def test_synth_writes_a_labelled_farm_in_the_dataset_layout(synth):
    with (synth / "dataset.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == list(DATASET_COLUMNS)
    labels = (synth / "dataset.labels.csv").read_text().split()
    assert labels[0] == "label" and len(labels) == len(rows) == 2 * 90 * 20 + 1
    assert set(labels[1:]) == {"healthy", *FAULT_KINDS}
    meta = json.loads((synth / "dataset.json").read_text())
    assert meta["source"] == "synth" and meta["turbines"] == ["turbine-0", "turbine-1"]
    assert set(meta["labels"]) == {"healthy", *FAULT_KINDS}
    dataset = ds.load(synth)
    assert dataset.features.shape == (2 * 90 * 20, 6)
    assert len(dataset.ends) == meta["decisions"]
    # A fault row is labelled with its kind: the simulator overwrote its readings.
    faulty = dataset.labels == "voltage"
    assert np.all(dataset.features[faulty, 5] == np.floor(dataset.features[faulty, 5]))


def test_synth_is_deterministic(synth, tmp_path):
    assert main(["data", "synth", "-o", str(tmp_path), "--turbines", "2", "--seconds", "90",
                 "--fault-seconds", "5", "--seed", "3"]) == 0
    assert (tmp_path / "dataset.csv").read_bytes() == (synth / "dataset.csv").read_bytes()


async def test_a_prepared_window_is_what_the_device_pipeline_computes(synth, tmp_path):
    """The replay source reads the CSV, the windturbine preprocessor turns rows into the
    model's input: the window the training prepares for the same buffer is identical."""
    manifest = read_manifest(BUILTIN).model_dump()
    source = build_component("source", {"type": "replay", "path": str(synth / "dataset.csv"),
                                        "speed": "max"}, tmp_path, inputs=INPUTS)
    stage = build_component("preprocessor", {"type": "windturbine"}, tmp_path,
                            manifest=manifest)
    batches = await collect_readings(source)
    turbines = np.concatenate([np.asarray(b.turbines) for b in batches])
    values = np.concatenate([b.values for b in batches])
    dataset = ds.load(synth)
    params = stage.params
    checked = 0
    for turbine in ("turbine-0", "turbine-1"):
        history = stage.row_features(values[turbines == turbine])
        segment = int(np.flatnonzero(dataset.turbines == turbine)[0])
        ours = np.flatnonzero(dataset.segment_of() == segment)
        for decision in ours[[0, len(ours) // 2, -1]]:
            end = dataset.ends[decision] - dataset.segments[segment]
            device = stage.model_input(history[None, end - params.buffer:end])
            prepared = prepare.windows(dataset, np.array([decision]), params)
            np.testing.assert_array_equal(prepared, device.astype(np.float32))
            checked += 1
    assert checked == 6


def test_import_takes_a_label_column_and_names_bad_rows(synth, tmp_path):
    rows = (synth / "dataset.csv").read_text().splitlines()
    labels = (synth / "dataset.labels.csv").read_text().splitlines()
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("\n".join(f"{r},{lab}" for r, lab in zip(rows, labels, strict=True)))
    imported = import_csv(labelled)
    reference = ds.load(synth)
    np.testing.assert_array_equal(imported.features, reference.features)
    np.testing.assert_array_equal(imported.decision_labels, reference.decision_labels)

    broken = tmp_path / "broken.csv"
    bad = rows[7].split(",")
    bad[DATASET_COLUMNS.index("rps")] = "fast"
    broken.write_text("\n".join([*rows[:7], ",".join(bad), *rows[8:]]))
    with pytest.raises(BadInput, match=r"broken.csv, line 8: not_a_number: rps"):
        import_csv(broken)
    skipped = import_csv(broken, skip_bad=True)
    assert skipped.meta["rejected"] == {"not_a_number": 1}


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["data", "import", "{tmp}/nope.csv"], 66, "nope.csv: no such file"),
    (["data", "import", "{tmp}/empty.csv"], 65, "empty.csv: empty file"),
    (["data", "import", "{tmp}/header-only.csv"], 65, "no data rows"),
    (["data", "import", "{tmp}/columns.csv"], 65, "line 1: wrong columns (missing voltage"),
    (["data", "import", "{tmp}/short.csv"], 65, "no turbine has 500 consecutive rows"),
    (["data", "synth", "--faults", "0:wobble@1-2"], 65, "unknown fault kind 'wobble'"),
    (["data", "synth", "--turbines", "1", "--faults", "3:voltage@1-2"], 65,
     "turbine 3 out of range"),
    (["data", "from-captures", "{tmp}/no-such-dir"], 66, "no such folder"),
])
def test_users_mistakes_are_one_line_errors(argv, status, message, tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    header = ",".join(DATASET_COLUMNS)
    (tmp_path / "header-only.csv").write_text(header + "\n")
    (tmp_path / "columns.csv").write_text(header.replace(",voltage", "") + "\n1,2\n")
    row = "farm,t1,1,1,2021-01-13T12:00:00+00:00,1.6,47,1,0,0,0,0,0,9.8,0,0,0,30,20,50,1013,100,2"
    (tmp_path / "short.csv").write_text(header + "\n" + "\n".join([row] * 20) + "\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "out")]
    assert main(argv) == status
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.fuzz
@given(st.lists(st.lists(st.sampled_from(["1", "-2.5", "", "x", "nan", "1e999", "t", '"', "label",
                                          "healthy", "voltage"]), max_size=26),
                max_size=30),
       st.sampled_from(["", ",".join(DATASET_COLUMNS), ",".join([*DATASET_COLUMNS, "label"])]))
def test_import_of_any_csv_is_a_dataset_or_bad_input(tmp_path_factory, rows, header):
    path = tmp_path_factory.mktemp("fuzz") / "rows.csv"
    path.write_text("\n".join([header, *(",".join(r) for r in rows)]))
    try:
        dataset = import_csv(path, skip_bad=True)
    except BadInput as exc:
        assert "rows.csv" in str(exc)  # names the file it refused
        return
    assert len(dataset.ends) >= 1


def _decision(turbine: str, k: int, *, anomalous: bool, features: np.ndarray | None,
              raw: np.ndarray | None = None) -> dict:
    record = {"schema": 1, "kind": "decision", "id": str(uuid.uuid4()), "key": f"{turbine}:{k}",
              "pipeline": "turbines", "device_id": "dev-1", "turbine": turbine,
              "model_name": "windturbine", "model_version": 1, "time": 1_700_000_000.0 + k,
              "anomalous": anomalous, "primary": "vibration" if anomalous else None,
              "window": None if features is None else features.tolist()}
    if raw is not None:
        record["raw_inputs"] = list(INPUTS)
        record["raw_rows"] = raw.tolist()
    return record


def _write_objects(records: list[dict]) -> list[tuple[str, bytes]]:
    lines = [(partition(r, "dev-1"), json.dumps(r).encode() + b"\n") for r in records]
    return build_objects(str(uuid.uuid4()), lines)


@pytest.fixture(scope="module")
def captured(synth):
    """Records as a device writes them: healthy decisions with their window, one with raw
    rows only, one anomalous, one captured twice, one without a buffer."""
    dataset = ds.load(synth)
    with (synth / "dataset.csv").open() as handle:
        rows = [r for r in csv.reader(handle)][1:]
    raw = np.array([[float(r[DATASET_COLUMNS.index(n)]) for n in INPUTS] for r in rows
                    if r[1] == "turbine-0"])
    healthy = np.flatnonzero(dataset.decision_labels == "healthy")[:4]
    records = [_decision("turbine-0", k, anomalous=False, features=dataset.buffers([d])[0])
               for k, d in enumerate(healthy)]
    records.append(_decision("turbine-0", 99, anomalous=False, features=None, raw=raw[:500]))
    records.append(_decision("turbine-0", 100, anomalous=True,
                             features=dataset.buffers([healthy[0]])[0]))
    records.append(records[0])  # captured twice: reservoir and rate
    records.append(_decision("turbine-1", 101, anomalous=False, features=None))
    return records, dataset, healthy


def test_from_captures_reads_a_local_capture_folder(captured, tmp_path):
    records, dataset, healthy = captured
    for key, body in _write_objects(records):
        path = tmp_path / "captures" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    got = from_captures(tmp_path / "captures")
    assert got.meta["skipped"] == {"anomalous": 1, "duplicate": 1, "no_buffer": 1}
    assert list(got.decision_labels) == ["healthy"] * 5
    # The buffers are the device's features, whether from the window or the raw rows.
    for k, decision in enumerate(healthy):
        np.testing.assert_array_equal(got.buffers([k])[0], dataset.buffers([decision])[0])
    np.testing.assert_allclose(got.buffers([4])[0], dataset.features[:500], rtol=0, atol=0)
    labelled = from_captures(tmp_path / "captures", anomalies="label")
    assert sorted(labelled.meta["labels"].items()) == [("healthy", 5), ("vibration", 1)]


def test_from_captures_reads_s3(captured, tmp_path, monkeypatch):
    records, _, _ = captured
    for name, value in S3Server.CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    with S3Server() as s3:
        bucket = s3.create_bucket()
        client = boto3.client("s3", endpoint_url=s3.endpoint_url)
        for key, body in _write_objects(records):
            client.put_object(Bucket=bucket, Key=f"captures/{key}", Body=body)
        assert main(["data", "from-captures", f"s3://{bucket}/captures", "-o",
                     str(tmp_path / "out"), "--endpoint-url", s3.endpoint_url]) == 0
        assert ds.load(tmp_path / "out").meta["decisions"] == 5
        assert main(["data", "from-captures", "s3://no-such-bucket-c1/x", "-o",
                     str(tmp_path / "out2"), "--endpoint-url", s3.endpoint_url]) == 66
