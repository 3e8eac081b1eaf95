"""The agent's captures at the Cloud destination, against moto's S3 server over HTTP: keys
and contents, an endpoint that goes down and comes back, errors that waiting does not
cure."""

from __future__ import annotations

import asyncio
import base64

import pytest

from edged.base.metrics import Counters
from edged.capture import BufferFull, CaptureStore
from edged.capture.destinations import S3Destination
from edged.capture.segments import read_object

AGENT = {"source": "agent"}


def uploaded(objects: dict[str, bytes]) -> dict[str, list[dict]]:
    return {key: read_object(key, body) for key, body in objects.items()}


def spooled(settings) -> int:
    return sum(len(p.read_bytes().splitlines())
               for p in (settings.spool_dir / "segments").glob("*.jsonl"))


async def test_captures_are_uploaded_under_the_prefix(cloud_settings, s3, make_record,
                                                      until):
    counters = Counters()
    settings = cloud_settings(batch_size=3)
    async with CaptureStore(settings, counters=counters) as store:
        for i in range(3):
            await store.submit(make_record(i, size=5000 + i))
        await until(lambda: store.status("cap-00002") == "SUCCESS")
    objects = await asyncio.to_thread(s3.objects, settings.s3_bucket)
    [(key, records)] = uploaded(objects).items()
    assert key.startswith("edge/capture/device=dev-1/model=model-a/version=unknown/"
                          "date=2023-11-14/hour=22/") and key.endswith(".jsonl.gz")
    assert [r["capture_id"] for r in records] == ["cap-00000", "cap-00001", "cap-00002"]
    for i, r in enumerate(records):
        assert base64.b64decode(r["input_tensors"][0]["data"]) == \
            make_record(i, size=5000 + i).input_tensors[0].data
    assert counters.get("batches_written", destination="Cloud") == 1
    assert counters.get("capture_uploaded", **AGENT) == 3
    assert spooled(settings) == 0


async def test_endpoint_down_then_back(cloud_settings, s3, make_record, until, monkeypatch):
    acknowledged: list[str] = []  # object keys, in the order S3 acknowledged them
    real_write = S3Destination.write

    def write(self, objects):
        real_write(self, objects)
        acknowledged.extend(self.key(key) for key, _ in objects)
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
        await until(lambda: counters.get("capture_upload_failures", **AGENT) >= 3)
        assert {store.status(f"cap-{i:05d}") for i in range(1, 9)} == {"IN_PROGRESS"}

        await asyncio.to_thread(s3.start)  # the same port
        await until(lambda: store.pending == 0, within=10)
        assert {store.status(f"cap-{i:05d}") for i in range(9)} == {"SUCCESS"}
        await store.submit(make_record(9))  # room again
        await until(lambda: store.pending == 0)

    by_key = uploaded(await asyncio.to_thread(s3.objects, settings.s3_bucket))
    in_upload_order = [r["capture_id"] for key in dict.fromkeys(acknowledged)
                       for r in by_key[key]]
    assert in_upload_order == [f"cap-{i:05d}" for i in range(10)]
    assert counters.get("capture_failures") == 0
    assert counters.get("capture_failed", **AGENT) == 0


async def test_pending_captures_wait_in_the_spool_across_a_restart(
        cloud_settings, s3, make_record, until):
    settings = cloud_settings(batch_size=2)
    await asyncio.to_thread(s3.stop)
    async with CaptureStore(settings) as store:
        for i in range(3):
            await store.submit(make_record(i))
    # Stopped with the endpoint down: one attempt, then the spool keeps them.
    assert spooled(settings) == 3
    await asyncio.to_thread(s3.start)
    async with CaptureStore(settings) as store:
        assert store.status("cap-00001") == "IN_PROGRESS"
        await until(lambda: store.pending == 0, within=10)
        assert {store.status(f"cap-{i:05d}") for i in range(3)} == {"SUCCESS"}
    objects = await asyncio.to_thread(s3.objects, settings.s3_bucket)
    ids = [r["capture_id"] for records in uploaded(objects).values() for r in records]
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
        assert store.pending == 0  # room for more: the spool is not blocked
    assert counters.get("capture_upload_failures", **AGENT) == 3
    assert counters.get("capture_failures") == 2
    assert counters.get("capture_failed", **AGENT) == 2
    assert counters.get("batches_failed", destination="Cloud") == 1
    assert spooled(settings) == 0
    # Kept for a human, with the reason.
    [folder] = (settings.spool_dir / "failed").iterdir()
    assert "NoSuchBucket" in (folder / "error.txt").read_text()
    assert sum(len(p.read_bytes().splitlines()) for p in folder.glob("*.jsonl")) == 2
    async with CaptureStore(settings) as store:
        assert store.status("cap-00000") == "FAILURE"


async def test_a_refused_upload_does_not_block_the_ones_after_it(
        cloud_settings, s3, make_record, until):
    """The bucket is missing for the first upload, then created: that upload is set
    aside after its attempts, and the next captures go through."""
    bucket = "created-later"
    settings = cloud_settings(s3_bucket=bucket, batch_size=2, upload_attempts=2)
    async with CaptureStore(settings) as store:
        await store.submit(make_record(0))
        await store.submit(make_record(1))
        await until(lambda: store.status("cap-00001") == "FAILURE")
        await asyncio.to_thread(s3.create_bucket, bucket)
        await store.submit(make_record(2))
        await store.submit(make_record(3))
        await until(lambda: store.status("cap-00003") == "SUCCESS")
    objects = await asyncio.to_thread(s3.objects, bucket)
    ids = sorted(r["capture_id"] for records in uploaded(objects).values() for r in records)
    assert ids == ["cap-00002", "cap-00003"]
