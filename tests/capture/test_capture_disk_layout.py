"""The Disk destination's layout: folders, manifest lines, inline vs separate data."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from edged.capture import AuxData, CaptureRecord, CaptureStore, TensorData

LIMIT = 64


def capture(capture_id: str, input_size: int, aux_output: bytes) -> CaptureRecord:
    return CaptureRecord(
        model_name="turbine-7",
        capture_id=capture_id,
        inference_timestamp=(1_700_000_000, 5),
        input_tensors=[TensorData("window", "uint8", [input_size], bytes(range(input_size))),
                       TensorData("mask", "int16", [2, 2], b"\x01\x00" * 4)],
        output_tensors=[TensorData("score", "float32", [1], b"\x00\x00\x80\x3f")],
        inputs=[AuxData("meta", "JSON", b'{"site": "north"}')],
        outputs=[AuxData("table", "CSV", aux_output)],
    )


async def test_disk_layout(disk_settings, until):
    settings = disk_settings(batch_size=3, folder_prefix="fleet-a/captures",
                             base64_embed_limit=LIMIT, fleet_name="fleet-a")
    before = datetime.now(UTC)
    async with CaptureStore(settings) as store:
        # At the limit: embedded; one byte over: a file of its own.
        await store.submit(capture("c-at-limit", LIMIT, b"a,b\n1,2\n"))
        await store.submit(capture("c-over-limit", LIMIT + 1, b"x" * (LIMIT + 1)))
        await store.submit(capture("odd/id with space", 3, b"1"))
        await until(lambda: store.pending == 0)
    after = datetime.now(UTC)

    root = settings.disk_path / "fleet-a" / "captures" / "turbine-7"
    (manifest,) = [p for p in root.rglob("*.jsonl")]
    hour = manifest.parent.relative_to(root).parts
    assert hour in {(f"{t:%Y}", f"{t:%m}", f"{t:%d}", f"{t:%H}") for t in (before, after)}
    batch_id = manifest.stem
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [line["capture_id"] for line in lines] == [
        "c-at-limit", "c-over-limit", "odd/id with space"]

    at, over, odd = lines
    assert at["model_name"] == "turbine-7"
    assert at["device_name"] == "dev-1"
    assert at["fleet_name"] == "fleet-a"
    assert at["batch_id"] == batch_id
    assert at["inference_timestamp"] == {"seconds": 1_700_000_000, "nanos": 5}
    assert at["inference_time"] == "2023-11-14T22:13:20.000000005Z"
    received = datetime.fromisoformat(at["received_time"].replace("Z", "+00:00"))
    assert before <= received <= after

    window, mask = at["input_tensors"]
    assert {k: window[k] for k in ("name", "dtype", "shape", "size")} == {
        "name": "window", "dtype": "uint8", "shape": [LIMIT], "size": LIMIT}
    assert base64.b64decode(window["data"]) == bytes(range(LIMIT))
    assert "path" not in window
    assert base64.b64decode(mask["data"]) == b"\x01\x00" * 4
    assert mask["shape"] == [2, 2] and mask["dtype"] == "int16"
    assert base64.b64decode(at["output_tensors"][0]["data"]) == b"\x00\x00\x80\x3f"
    assert at["inputs"] == [{"name": "meta", "encoding": "JSON", "size": 17,
                             "data": base64.b64encode(b'{"site": "north"}').decode()}]
    assert base64.b64decode(at["outputs"][0]["data"]) == b"a,b\n1,2\n"

    big = over["input_tensors"][0]
    assert "data" not in big
    assert big["path"] == f"{batch_id}/c-over-limit/input-0.bin"
    assert (manifest.parent / big["path"]).read_bytes() == bytes(range(LIMIT + 1))
    table = over["outputs"][0]
    assert table["path"] == f"{batch_id}/c-over-limit/aux-output-0.csv"
    assert (manifest.parent / table["path"]).read_bytes() == b"x" * (LIMIT + 1)

    # Separate files live in the batch's folder next to the manifest, nowhere else.
    files = sorted(p.relative_to(manifest.parent).as_posix()
                   for p in manifest.parent.rglob("*") if p.is_file())
    assert files == sorted([f"{batch_id}.jsonl", big["path"], table["path"]])
    assert "path" not in odd["input_tensors"][0]


async def test_embed_limit_zero_writes_every_byte_to_files(disk_settings, until):
    settings = disk_settings(batch_size=1, base64_embed_limit=0)
    async with CaptureStore(settings) as store:
        await store.submit(capture("c1", 1, b"1"))
        await until(lambda: store.pending == 0)
    (manifest,) = list((settings.disk_path / "turbine-7").rglob("*.jsonl"))
    line = json.loads(manifest.read_text())
    paths = [item["path"] for kind in ("input_tensors", "output_tensors", "inputs", "outputs")
             for item in line[kind]]
    assert len(paths) == 5
    assert all((manifest.parent / p).is_file() for p in paths)


async def test_unsafe_capture_ids_get_a_digest_folder(disk_settings, until):
    settings = disk_settings(batch_size=1, base64_embed_limit=0)
    async with CaptureStore(settings) as store:
        await store.submit(capture("../../etc", 1, b"1"))
        await until(lambda: store.pending == 0)
    (manifest,) = list((settings.disk_path / "turbine-7").rglob("*.jsonl"))
    path = json.loads(manifest.read_text())["input_tensors"][0]["path"]
    assert ".." not in path and path.split("/")[1].startswith("id-")
    assert (manifest.parent / path).resolve().is_relative_to(manifest.parent)
