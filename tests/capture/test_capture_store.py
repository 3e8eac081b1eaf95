"""The capture store's contract: statuses, buffer, triggers, duplicates, restarts."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest

from edged.capture import BufferFull, CaptureError, CaptureStore, DuplicateCaptureId
from edged.metrics import Counters


def manifests(root):
    return sorted(p for p in root.rglob("*.jsonl") if ".spool" not in p.parts)


def manifest_ids(root) -> list[str]:
    return [json.loads(line)["capture_id"] for path in manifests(root)
            for line in path.read_text().splitlines()]


async def test_submit_status_lifecycle(disk_settings, make_record, until):
    counters = Counters()
    async with CaptureStore(disk_settings(), counters=counters) as store:
        await store.submit(make_record(1))
        assert store.status("cap-00001") == "IN_PROGRESS"
        assert store.status("never-submitted") == "NOT_FOUND"
        assert store.pending == 1
        await until(lambda: store.status("cap-00001") == "SUCCESS")
        assert store.pending == 0
    assert counters.get("captures_submitted") == 1
    assert counters.get("captures_written") == 1
    assert counters.get("batches_written", destination="Disk") == 1


async def test_buffer_full_at_buffer_size(disk_settings, make_record):
    counters = Counters()
    settings = disk_settings(buffer_size=5, batch_size=10, push_period_s=60)
    async with CaptureStore(settings, counters=counters) as store:
        await asyncio.gather(*(store.submit(make_record(i)) for i in range(5)))
        with pytest.raises(BufferFull):
            await store.submit(make_record(5))
        assert store.status("cap-00005") == "NOT_FOUND"
        assert store.pending == 5
    assert counters.get("captures_rejected", reason="buffer_full") == 1


async def test_batch_size_triggers_a_batch(disk_settings, make_record, until):
    settings = disk_settings(batch_size=3, push_period_s=60)
    async with CaptureStore(settings) as store:
        started = time.monotonic()
        for i in range(5):
            await store.submit(make_record(i))
        await until(lambda: store.status("cap-00002") == "SUCCESS", within=2)
        assert time.monotonic() - started < 2
        await asyncio.sleep(0.3)
        assert [store.status(f"cap-{i:05d}") for i in (3, 4)] == ["IN_PROGRESS"] * 2
        assert manifest_ids(settings.disk_path) == ["cap-00000", "cap-00001", "cap-00002"]


async def test_push_period_triggers_a_batch(disk_settings, make_record, until):
    settings = disk_settings(batch_size=10, push_period_s=0.4)
    async with CaptureStore(settings) as store:
        started = time.monotonic()
        await store.submit(make_record(0))
        await asyncio.sleep(0.1)
        await store.submit(make_record(1))
        assert store.status("cap-00000") == "IN_PROGRESS"
        await until(lambda: store.status("cap-00001") == "SUCCESS")
        # One batch, flushed by the oldest capture's age, not the newest's.
        assert 0.4 <= time.monotonic() - started < 0.9
        assert len(manifests(settings.disk_path)) == 1


async def test_models_are_batched_separately(disk_settings, make_record, until):
    settings = disk_settings(batch_size=2, push_period_s=60)
    async with CaptureStore(settings) as store:
        for i in range(4):
            await store.submit(make_record(i, model="model-a" if i % 2 else "model-b"))
        await until(lambda: store.pending == 0)
    assert sorted(p.relative_to(settings.disk_path).parts[0]
                  for p in manifests(settings.disk_path)) == ["model-a", "model-b"]


async def test_duplicate_capture_id_rejected(disk_settings, make_record, until):
    counters = Counters()
    async with CaptureStore(disk_settings(), counters=counters) as store:
        await store.submit(make_record(1))
        with pytest.raises(DuplicateCaptureId):
            await store.submit(make_record(2, capture_id="cap-00001"))
        await until(lambda: store.status("cap-00001") == "SUCCESS")
        with pytest.raises(ValueError, match="already known"):
            await store.submit(make_record(3, capture_id="cap-00001"))
    assert counters.get("captures_rejected", reason="duplicate") == 2
    assert manifest_ids(disk_settings().disk_path) == ["cap-00001"]


@pytest.mark.parametrize(("change", "message"), [
    ({"model": "bad name"}, "model name"),
    ({"capture_id": ""}, "capture id"),
])
async def test_invalid_records_rejected(disk_settings, make_record, change, message):
    counters = Counters()
    async with CaptureStore(disk_settings(), counters=counters) as store:
        with pytest.raises(ValueError, match=message):
            await store.submit(make_record(1, **change))
        assert store.pending == 0
    assert counters.get("captures_rejected", reason="invalid") == 1


async def test_tensor_size_must_match_shape(disk_settings, make_record):
    from dataclasses import replace

    from edged.capture import TensorData

    bad = replace(make_record(1), output_tensors=[TensorData("y", "float32", [2], b"1234")])
    async with CaptureStore(disk_settings()) as store:
        with pytest.raises(ValueError, match="needs 8"):
            await store.submit(bad)


async def test_statuses_survive_a_restart(disk_settings, make_record, until):
    settings = disk_settings()
    async with CaptureStore(settings) as store:
        for i in range(3):
            await store.submit(make_record(i))
        await until(lambda: store.pending == 0)
    async with CaptureStore(settings) as store:
        assert [store.status(f"cap-{i:05d}") for i in range(3)] == ["SUCCESS"] * 3
        assert store.status("cap-00003") == "NOT_FOUND"
        with pytest.raises(DuplicateCaptureId):
            await store.submit(make_record(0))


async def test_status_index_is_bounded(disk_settings, make_record, until):
    settings = disk_settings(status_keep=3, batch_size=1)
    async with CaptureStore(settings) as store:
        for i in range(10):
            await store.submit(make_record(i))
            await until(lambda i=i: store.status(f"cap-{i:05d}") == "SUCCESS")
        assert store.status("cap-00006") == "NOT_FOUND"
    log_lines = (settings.spool_dir / "status.jsonl").read_text().splitlines()
    assert len(log_lines) <= 2 * 3
    async with CaptureStore(settings) as store:
        assert [store.status(f"cap-{i:05d}") for i in range(10)] == (
            ["NOT_FOUND"] * 7 + ["SUCCESS"] * 3)


async def test_stopping_flushes_what_is_pending(disk_settings, make_record):
    settings = disk_settings(batch_size=10, push_period_s=60)
    async with CaptureStore(settings) as store:
        for i in range(3):
            await store.submit(make_record(i))
    assert manifest_ids(settings.disk_path) == ["cap-00000", "cap-00001", "cap-00002"]
    assert not list((settings.spool_dir / "records").iterdir())


async def test_one_store_per_spool(disk_settings):
    async with CaptureStore(disk_settings()):
        with pytest.raises(CaptureError, match="in use"):
            async with CaptureStore(disk_settings()):
                pass


async def test_submit_needs_a_running_store(disk_settings, make_record):
    with pytest.raises(CaptureError, match="not running"):
        await CaptureStore(disk_settings()).submit(make_record(1))


async def test_a_corrupt_spool_file_is_set_aside(disk_settings, make_record, until):
    settings = disk_settings(batch_size=10, push_period_s=60, fsync=False)
    records = settings.spool_dir / "records"
    records.mkdir(parents=True)
    (records / f"{7:016d}.cap").write_bytes(b"EDGEDCAP1\n\x00\x00\x00\x05torn")
    counters = Counters()
    async with CaptureStore(settings, counters=counters) as store:
        assert store.pending == 0
        await store.submit(make_record(1))
    assert (settings.spool_dir / "corrupt" / f"{7:016d}.cap").is_file()
    assert counters.get("capture_failures") == 1
    assert manifest_ids(settings.disk_path) == ["cap-00001"]


async def test_cloud_without_boto3_is_a_clear_error(disk_settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)
    settings = disk_settings(destination="Cloud", s3_bucket="some-bucket")
    with pytest.raises(CaptureError, match=r"pip install 'edged\[s3\]'"):
        async with CaptureStore(settings):
            pass


def test_settings_defaults_and_checks(tmp_path):
    from pydantic import ValidationError

    from edged.capture import CaptureSettings

    settings = CaptureSettings(destination="Disk", disk_path=tmp_path, device_name="d")
    assert settings.spool_dir == tmp_path / ".spool"
    assert (settings.buffer_size, settings.batch_size, settings.push_period_s,
            settings.base64_embed_limit) == (30, 10, 4.0, 3072)
    with pytest.raises(ValidationError, match="s3_bucket"):
        CaptureSettings(destination="Cloud", disk_path=tmp_path, device_name="d")
    with pytest.raises(ValidationError, match="less than or equal to 3072"):
        CaptureSettings(destination="Disk", disk_path=tmp_path, device_name="d",
                        base64_embed_limit=4096)
    with pytest.raises(ValidationError, match=r"'\.\.'"):
        CaptureSettings(destination="Disk", disk_path=tmp_path, device_name="d",
                        folder_prefix="../escape")


async def test_a_half_cleaned_batch_is_finished_not_redelivered(disk_settings, make_record):
    """A crash while deleting a delivered batch's records: its intent names a record that
    is gone, so the batch was delivered; the start finishes the clean-up."""
    from edged.capture.spool import BatchIntent, Spool

    settings = disk_settings(fsync=False)
    spool = Spool(settings.spool_dir, fsync=False)
    spool.open()
    spool.write_record(0, make_record(0), time.time())
    intent = BatchIntent("b-1", "model-a", time.time(), (0, 1))  # record 1 already deleted
    spool.write_intent(intent)
    spool.close()
    (settings.spool_dir / "status.jsonl").write_text(
        '{"id": "cap-00000", "status": "SUCCESS"}\n{"id": "cap-00001", "status": "SUCCESS"}\n')
    async with CaptureStore(settings) as store:
        assert store.pending == 0
        assert store.status("cap-00000") == "SUCCESS"
    assert not list((settings.spool_dir / "records").iterdir())
    assert not list((settings.spool_dir / "batches").iterdir())
    assert manifests(settings.disk_path) == []


async def test_a_torn_status_line_is_skipped(disk_settings, make_record, until):
    settings = disk_settings()
    settings.spool_dir.mkdir(parents=True)
    (settings.spool_dir / "status.jsonl").write_text(
        '{"id": "old", "status": "SUCCESS"}\n{"id": "torn", "sta')
    async with CaptureStore(settings) as store:
        assert store.status("old") == "SUCCESS"
        assert store.status("torn") == "NOT_FOUND"
        await store.submit(make_record(1))
        await until(lambda: store.pending == 0)
    async with CaptureStore(settings) as store:
        assert store.status("cap-00001") == "SUCCESS"
        assert store.status("old") == "SUCCESS"
