"""The Cloud destination against moto's S3 server over HTTP: keys and contents, an
endpoint that goes down and comes back, errors that waiting does not cure."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from edged.capture import BufferFull, CaptureStore
from edged.capture.destinations import S3Destination
from edged.metrics import Counters


def manifests(objects: dict[str, bytes]) -> dict[str, list[dict]]:
    return {key: [json.loads(line) for line in body.decode().splitlines()]
            for key, body in objects.items() if key.endswith(".jsonl")}


async def test_batches_are_uploaded_under_the_prefix(cloud_settings, s3, make_record, until):
    counters = Counters()
    settings = cloud_settings(batch_size=3, base64_embed_limit=64)
    async with CaptureStore(settings, counters=counters) as store:
        for i in range(3):
            await store.submit(make_record(i, size=64 + i))  # 64: inline; 65, 66: objects
        await until(lambda: store.status("cap-00002") == "SUCCESS")
    objects = await asyncio.to_thread(s3.objects, settings.s3_bucket)
    (key, lines), = manifests(objects).items()
    parts = key.split("/")
    assert parts[:3] == ["edge", "capture", "model-a"]
    assert len(parts) == 8 and [len(p) for p in parts[3:7]] == [4, 2, 2, 2]
    batch_id = parts[7].removesuffix(".jsonl")
    folder = key.rsplit("/", 1)[0]
    assert [line["capture_id"] for line in lines] == ["cap-00000", "cap-00001", "cap-00002"]
    inline = lines[0]["input_tensors"][0]
    assert base64.b64decode(inline["data"]) == make_record(0, size=64).input_tensors[0].data
    for i in (1, 2):
        tensor = lines[i]["input_tensors"][0]
        assert tensor["path"] == f"{batch_id}/cap-0000{i}/input-0.bin"
        assert objects[f"{folder}/{tensor['path']}"] == \
            make_record(i, size=64 + i).input_tensors[0].data
    assert sorted(objects) == sorted([key, f"{folder}/{batch_id}/cap-00001/input-0.bin",
                                      f"{folder}/{batch_id}/cap-00002/input-0.bin"])
    assert counters.get("batches_written", destination="Cloud") == 1
    assert not list((settings.spool_dir / "records").iterdir())


async def test_endpoint_down_then_back(cloud_settings, s3, make_record, until, monkeypatch):
    uploaded: list[str] = []  # manifest keys, in the order S3 acknowledged them
    real_write = S3Destination.write

    def write(self, objects):
        real_write(self, objects)
        uploaded.append(self.key(objects[-1][0]))
    monkeypatch.setattr(S3Destination, "write", write)

    counters = Counters()
    settings = cloud_settings(batch_size=2, buffer_size=8, push_period_s=0.05)
    async with CaptureStore(settings, counters=counters) as store:
        await store.submit(make_record(0))
        await until(lambda: store.status("cap-00000") == "SUCCESS")

        await asyncio.to_thread(s3.stop)
        for i in range(1, 9):
            await store.submit(make_record(i))
        with pytest.raises(BufferFull):
            await store.submit(make_record(9))
        await until(lambda: counters.get("upload_retries") >= 3)
        assert {store.status(f"cap-{i:05d}") for i in range(1, 9)} == {"IN_PROGRESS"}

        await asyncio.to_thread(s3.start)  # the same port
        await until(lambda: store.pending == 0, within=10)
        assert {store.status(f"cap-{i:05d}") for i in range(9)} == {"SUCCESS"}
        await store.submit(make_record(9))  # room again
        await until(lambda: store.pending == 0)

    objects = await asyncio.to_thread(s3.objects, settings.s3_bucket)
    by_key = manifests(objects)
    in_upload_order = [line["capture_id"] for key in uploaded for line in by_key[key]]
    assert in_upload_order == [f"cap-{i:05d}" for i in range(10)]
    assert counters.get("capture_failures") == 0


async def test_pending_captures_wait_in_the_spool_across_a_restart(
        cloud_settings, s3, make_record, until):
    settings = cloud_settings(batch_size=2)
    await asyncio.to_thread(s3.stop)
    async with CaptureStore(settings) as store:
        for i in range(3):
            await store.submit(make_record(i))
    # Stopped with the endpoint down: one attempt, then the spool keeps them.
    assert len(list((settings.spool_dir / "records").glob("*.cap"))) == 3
    await asyncio.to_thread(s3.start)
    async with CaptureStore(settings) as store:
        assert store.status("cap-00001") == "IN_PROGRESS"
        await until(lambda: store.pending == 0, within=10)
        assert {store.status(f"cap-{i:05d}") for i in range(3)} == {"SUCCESS"}
    objects = await asyncio.to_thread(s3.objects, settings.s3_bucket)
    ids = [line["capture_id"] for lines in manifests(objects).values() for line in lines]
    assert sorted(ids) == ["cap-00000", "cap-00001", "cap-00002"]


async def test_a_missing_bucket_fails_after_bounded_attempts(
        cloud_settings, make_record, until):
    counters = Counters()
    settings = cloud_settings(s3_bucket="no-such-bucket", batch_size=2, upload_attempts=3)
    async with CaptureStore(settings, counters=counters) as store:
        await store.submit(make_record(0))
        await store.submit(make_record(1))
        await until(lambda: store.status("cap-00001") == "FAILURE")
        assert store.status("cap-00000") == "FAILURE"
    assert counters.get("upload_retries") == 2
    assert counters.get("capture_failures") == 2
    assert counters.get("batches_failed", destination="Cloud") == 1
    assert not list((settings.spool_dir / "records").iterdir())
    async with CaptureStore(settings) as store:
        assert store.status("cap-00000") == "FAILURE"
