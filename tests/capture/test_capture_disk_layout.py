"""The agent record kind at the Disk destination: the object keys, every field of a
record, the bytes of tensors and auxiliary data."""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import replace
from datetime import UTC, datetime

from edged.capture import AuxData, CaptureRecord, CaptureStore, TensorData
from edged.capture.segments import parse_key


def capture(capture_id: str, input_size: int, *, seconds: int = 1_700_000_000,
            version: int | None = 7) -> CaptureRecord:
    return CaptureRecord(
        model_name="turbine-7",
        model_version=version,
        capture_id=capture_id,
        inference_timestamp=(seconds, 5),
        input_tensors=[TensorData("window", "uint8", [input_size], bytes(range(input_size))),
                       TensorData("mask", "int16", [2, 2], b"\x01\x00" * 4)],
        output_tensors=[TensorData("score", "float32", [1], b"\x00\x00\x80\x3f")],
        inputs=[AuxData("meta", "JSON", b'{"site": "north"}')],
        outputs=[AuxData("table", "CSV", b"a,b\n1,2\n")],
    )


def read_disk(root) -> dict[str, list[dict]]:
    return {path.relative_to(root).as_posix():
            [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
            for path in sorted(root.rglob("*.jsonl.gz"))}


async def test_agent_records_on_disk(disk_settings, until):
    settings = disk_settings(batch_size=3, folder_prefix="fleet-a/captures",
                             fleet_name="fleet-a")
    before = datetime.now(UTC)
    async with CaptureStore(settings) as store:
        await store.submit(capture("c-1", 200))
        await store.submit(capture("odd/id with space", 3))
        await store.submit(capture("c-unversioned", 1, version=None))
        await until(lambda: store.pending == 0)
    after = datetime.now(UTC)

    objects = read_disk(settings.disk_path / "fleet-a" / "captures")
    assert {k.rsplit("/", 1)[0] for k in objects} == {
        "device=dev-1/model=turbine-7/version=7/date=2023-11-14/hour=22",
        "device=dev-1/model=turbine-7/version=unknown/date=2023-11-14/hour=22"}
    for key in objects:
        assert parse_key(key)["device"] == "dev-1"
    records = {r["capture_id"]: r for rs in objects.values() for r in rs}
    assert set(records) == {"c-1", "odd/id with space", "c-unversioned"}

    r = records["c-1"]
    assert (r["schema"], r["kind"], r["id"]) == (1, "agent", "c-1")
    assert (r["device_id"], r["fleet_name"]) == ("dev-1", "fleet-a")
    assert (r["model_name"], r["model_version"]) == ("turbine-7", 7)
    assert r["inference_timestamp"] == {"seconds": 1_700_000_000, "nanos": 5}
    assert r["inference_time"] == "2023-11-14T22:13:20.000000005Z"
    assert r["time"] == 1_700_000_000 + 5e-9
    received = datetime.fromisoformat(r["received_time"].replace("Z", "+00:00"))
    assert before <= received <= after

    window, mask = r["input_tensors"]
    assert {k: window[k] for k in ("name", "dtype", "shape")} == {
        "name": "window", "dtype": "uint8", "shape": [200]}
    assert base64.b64decode(window["data"]) == bytes(range(200))  # inline, any size
    assert base64.b64decode(mask["data"]) == b"\x01\x00" * 4
    assert mask["shape"] == [2, 2] and mask["dtype"] == "int16"
    assert base64.b64decode(r["output_tensors"][0]["data"]) == b"\x00\x00\x80\x3f"
    assert r["inputs"] == [{"name": "meta", "encoding": "JSON",
                            "data": base64.b64encode(b'{"site": "north"}').decode()}]
    assert r["outputs"][0]["encoding"] == "CSV"
    assert base64.b64decode(r["outputs"][0]["data"]) == b"a,b\n1,2\n"
    assert records["c-unversioned"]["model_version"] is None


async def test_without_an_inference_timestamp_the_hour_is_when_it_was_received(
        disk_settings, until):
    settings = disk_settings(batch_size=1)
    record = replace(capture("c-0", 1), inference_timestamp=(0, 0))
    async with CaptureStore(settings) as store:
        before = datetime.now(UTC)
        await store.submit(record)
        await until(lambda: store.pending == 0)
        after = datetime.now(UTC)
    [(key, [line])] = read_disk(settings.disk_path).items()
    hour = parse_key(key)
    assert (hour["date"], hour["hour"]) in {(f"{t:%Y-%m-%d}", f"{t:%H}")
                                            for t in (before, after)}
    assert line["inference_time"] == "1970-01-01T00:00:00.000000000Z"
