"""The capture store's contract: statuses, buffer, triggers, duplicates, restarts."""

from __future__ import annotations

import asyncio
import sys

import pytest

from edged.base.metrics import Counters
from edged.capture import BufferFull, CaptureError, CaptureStore, DuplicateCaptureId
from edged.capture.segments import read_object


def objects(root) -> list:
    """The uploaded objects under a Disk destination, oldest key first."""
    return sorted(p for p in root.rglob("*.jsonl.gz") if ".spool" not in p.parts)


def uploaded(root) -> list[dict]:
    return [record for path in objects(root)
            for record in read_object(path.relative_to(root).as_posix(), path.read_bytes())]


def uploaded_ids(root) -> list[str]:
    return [record["capture_id"] for record in uploaded(root)]


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
        with pytest.raises(BufferFull, match="buffer_size 5"):
            await store.submit(make_record(5))
        assert store.status("cap-00005") == "NOT_FOUND"
        assert store.pending == 5
    assert counters.get("captures_rejected", reason="buffer_full") == 1


async def test_batch_size_triggers_an_upload(disk_settings, make_record, until):
    """With a push period far away, only full batches go: the first three captures, not
    the two after them."""
    settings = disk_settings(batch_size=3, push_period_s=3600)
    async with CaptureStore(settings) as store:
        for i in range(5):
            await store.submit(make_record(i))
        await until(lambda: store.status("cap-00002") == "SUCCESS")
        assert [store.status(f"cap-{i:05d}") for i in (3, 4)] == ["IN_PROGRESS"] * 2
        assert store.uplink.waiting == 2
        assert uploaded_ids(settings.disk_path) == ["cap-00000", "cap-00001", "cap-00002"]


async def test_push_period_uploads_a_partial_batch(disk_settings, make_record, until):
    settings = disk_settings(batch_size=10, push_period_s=0.1)
    async with CaptureStore(settings) as store:
        await store.submit(make_record(0))
        await store.submit(make_record(1))
        await until(lambda: store.pending == 0)
        assert {store.status("cap-00000"), store.status("cap-00001")} == {"SUCCESS"}
    assert uploaded_ids(settings.disk_path) == ["cap-00000", "cap-00001"]


async def test_models_go_to_their_own_partitions(disk_settings, make_record, until):
    settings = disk_settings(batch_size=4, push_period_s=3600)
    async with CaptureStore(settings) as store:
        for i in range(4):
            await store.submit(make_record(i, model="model-a" if i % 2 else "model-b"))
        await until(lambda: store.pending == 0)
    found = sorted((r["partition"]["model"], r["capture_id"])
                   for r in uploaded(settings.disk_path))
    assert found == [("model-a", "cap-00001"), ("model-a", "cap-00003"),
                     ("model-b", "cap-00000"), ("model-b", "cap-00002")]


async def test_concurrent_submits_share_one_commit(disk_settings, make_record):
    """Group commit: submits waiting together are written as one segment (one fsync)."""
    counters = Counters()
    settings = disk_settings(buffer_size=20, batch_size=20, push_period_s=3600)
    async with CaptureStore(settings, counters=counters) as store:
        await asyncio.gather(*(store.submit(make_record(i)) for i in range(12)))
        segments = list((settings.spool_dir / "segments").glob("*.jsonl"))
        assert len(segments) < 12
        assert sum(len(p.read_bytes().splitlines()) for p in segments) == 12
        assert store.pending == 12
    assert counters.get("captures_submitted") == 12


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
    assert uploaded_ids(disk_settings().disk_path) == ["cap-00001"]


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
    settings = disk_settings(batch_size=10, push_period_s=3600)
    async with CaptureStore(settings) as store:
        for i in range(3):
            await store.submit(make_record(i))
    assert uploaded_ids(settings.disk_path) == ["cap-00000", "cap-00001", "cap-00002"]
    assert not list((settings.spool_dir / "segments").iterdir())
    async with CaptureStore(settings) as store:
        assert {store.status(f"cap-{i:05d}") for i in range(3)} == {"SUCCESS"}


async def test_one_store_per_spool(disk_settings):
    async with CaptureStore(disk_settings()):
        with pytest.raises(CaptureError, match="in use"):
            async with CaptureStore(disk_settings()):
                pass


async def test_submit_needs_a_running_store(disk_settings, make_record):
    with pytest.raises(CaptureError, match="not running"):
        await CaptureStore(disk_settings()).submit(make_record(1))


async def test_a_torn_spool_line_is_counted_and_skipped(disk_settings, make_record,
                                                        until):
    settings = disk_settings(batch_size=10, push_period_s=0.05, fsync=False)
    segments = settings.spool_dir / "segments"
    segments.mkdir(parents=True)
    (segments / f"{7:016d}-n-1.jsonl").write_bytes(b'{"schema": 1, "id": "to')
    counters = Counters()
    async with CaptureStore(settings, counters=counters) as store:
        assert store.pending == 0  # nothing with an id to report on
        await store.submit(make_record(1))
        await until(lambda: store.pending == 0)
    assert counters.get("capture_corrupt", source="agent") == 1
    assert uploaded_ids(settings.disk_path) == ["cap-00001"]


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
            settings.upload_attempts) == (30, 10, 4.0, 5)
    with pytest.raises(ValidationError, match="s3_bucket"):
        CaptureSettings(destination="Cloud", disk_path=tmp_path, device_name="d")
    with pytest.raises(ValidationError, match="base64_embed_limit"):  # gone: always inline
        CaptureSettings(destination="Disk", disk_path=tmp_path, device_name="d",
                        base64_embed_limit=3072)
    with pytest.raises(ValidationError, match=r"'\.\.'"):
        CaptureSettings(destination="Disk", disk_path=tmp_path, device_name="d",
                        folder_prefix="../escape")


async def test_captures_pending_at_a_restart_keep_their_status(disk_settings, make_record,
                                                               until):
    """A capture spooled by the last run is IN_PROGRESS again, counts against the
    buffer, is a duplicate if resubmitted, and is uploaded."""
    settings = disk_settings(batch_size=10, push_period_s=3600)
    down = disk_settings(batch_size=10, push_period_s=3600, upload_attempts=1)
    store = CaptureStore(settings)
    async with store:
        await store.submit(make_record(0))
        await store.submit(make_record(1))
        store.uplink.flush = _nothing  # a crash: no flush on the way out
    counters = Counters()
    async with CaptureStore(down, counters=counters) as store:
        assert store.pending == 2
        assert store.status("cap-00001") == "IN_PROGRESS"
        with pytest.raises(DuplicateCaptureId):
            await store.submit(make_record(1))
        await store.uplink.upload_pending()
        assert store.status("cap-00001") == "SUCCESS"
    assert counters.get("captures_replayed") == 2
    assert uploaded_ids(settings.disk_path) == ["cap-00000", "cap-00001"]


async def _nothing() -> int:
    return 0


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
