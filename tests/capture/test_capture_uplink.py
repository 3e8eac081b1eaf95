"""The one capture path: agent CaptureData records and pipeline decision records leave
through the same uplink, as objects of one layout that one reader reads; the data budget
hook; uploads the destination refuses for good."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from test_pipeline_capture import FEATURES, THRESHOLDS, _items, decision, disk_dest, make, spec

from edged.base.metrics import Counters
from edged.capture import CaptureSettings, CaptureStore
from edged.capture.segments import SegmentSpool, Upload, parse_key, read_object
from edged.testing import eventually
from tests.support.rounds import round_of


class DailyBudget:
    """A data budget as the uplink sees it: an allowance in bytes, raised by the test
    where a real one would reset at midnight."""

    def __init__(self, allowance: int) -> None:
        self.allowance = allowance
        self.asked: list[tuple[str, int]] = []
        self.charged: list[tuple[str, int]] = []

    def allows(self, priority: str, nbytes: int) -> bool:
        self.asked.append((priority, nbytes))
        return sum(n for _, n in self.charged) + nbytes <= self.allowance

    def charge(self, priority: str, nbytes: int) -> None:
        self.charged.append((priority, nbytes))

    def seconds_until_reset(self) -> float:
        return 0.05


def disk_objects(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*.jsonl.gz"))}


@pytest.mark.parametrize("where", ["disk", "s3"])
async def test_agent_and_pipeline_records_take_one_path(tmp_path, where, request,
                                                        make_record):
    """Both record kinds, each from its own spool, end up as gzip JSON-lines objects
    under the same partitioned keys, read back by one reader."""
    if where == "s3":
        s3 = request.getfixturevalue("s3")
        bucket = s3.create_bucket()
        dest = {"type": "s3", "bucket": bucket, "prefix": "fleet",
                "endpoint_url": s3.endpoint_url, "region": "us-east-1"}
        agent_dest = {"destination": "Cloud", "s3_bucket": bucket, "folder_prefix": "fleet",
                      "s3_endpoint_url": s3.endpoint_url, "s3_region": "us-east-1"}
    else:
        dest = {"type": "disk", "path": str(tmp_path / "out" / "fleet")}
        agent_dest = {"destination": "Disk", "folder_prefix": "fleet"}
    settings = CaptureSettings(disk_path=tmp_path / "out", device_name="dev-1",
                               spool_dir=tmp_path / "agent-spool", batch_size=2,
                               **agent_dest)
    async with CaptureStore(settings) as store:
        await store.submit(make_record(0))
        await store.submit(make_record(1, model="model-b"))
        await eventually(lambda: store.pending == 0)
    async with make(tmp_path, spec(dest)) as capture:
        await capture.write(_items(capture, [decision("t1", 1), decision("t2", 2, True)]))
        assert await capture.upload_pending() == 2

    if where == "s3":
        objects = await asyncio.to_thread(s3.objects, bucket, "fleet/")
    else:
        objects = {f"fleet/{k}": v for k, v in disk_objects(tmp_path / "out" / "fleet").items()}
    records = [r for key, body in objects.items() for r in read_object(key, body)]
    assert all(key.startswith("fleet/device=dev-1/model=") for key in objects)
    partitions = sorted((r["kind"], r["partition"]["model"],
                         r["partition"]["version"]) for r in records)
    assert partitions == [("agent", "model-a", "unknown"), ("agent", "model-b", "unknown"),
                          ("decision", "wt", "3"), ("decision", "wt", "3")]
    for record in records:
        assert (record["partition"]["date"], record["partition"]["hour"]) == (
            "2023-11-14", "22")
        assert record["device_id"] == "dev-1" and record["model_name"] == \
            record["partition"]["model"]
    assert sorted(r["id"] for r in records if r["kind"] == "agent") == [
        "cap-00000", "cap-00001"]
    assert sorted(r["turbine"] for r in records if r["kind"] == "decision") == ["t1", "t2"]


def test_parse_key_names_what_is_wrong():
    assert parse_key("p/device=d/model=m/version=1/date=2024-01-02/hour=03/x.jsonl.gz") == {
        "device": "d", "model": "m", "version": "1", "date": "2024-01-02", "hour": "03"}
    with pytest.raises(ValueError, match="expected model="):
        parse_key("device=d/modell=m/version=1/date=2024-01-02/hour=03/x.jsonl.gz")
    with pytest.raises(ValueError, match="not a capture object key"):
        parse_key("m/2024/01/02/03/batch.jsonl")


async def test_budget_defers_pipeline_uploads_until_it_allows_them(tmp_path):
    counters = Counters()
    budget = DailyBudget(allowance=0)
    s = spec(disk_dest(tmp_path))
    async with make(tmp_path, s, counters, budget=budget) as capture:
        await capture.write(_items(capture, [decision("t1", r) for r in range(5)]))
        uploader = asyncio.create_task(capture.upload_loop())
        try:
            await eventually(lambda: len(budget.asked) >= 3)  # asked again, still no
            assert counters.get("capture_upload_deferred", pipeline="p1") == 1
            assert capture.pending == 5 and budget.charged == []
            assert disk_objects(tmp_path / "out") == {}
            budget.allowance = 1 << 20  # the day's allowance renewed
            await eventually(lambda: capture.pending == 0)
        finally:
            uploader.cancel()
            await asyncio.gather(uploader, return_exceptions=True)
    objects = disk_objects(tmp_path / "out")
    assert budget.charged == [("capture", sum(len(body) for body in objects.values()))]
    assert all(priority == "capture" for priority, _ in budget.asked)
    assert counters.get("capture_upload_deferred", pipeline="p1") == 1


async def test_budget_holds_agent_captures_in_progress(disk_settings, make_record):
    counters = Counters()
    budget = DailyBudget(allowance=0)
    settings = disk_settings(batch_size=2, push_period_s=0.05)
    async with CaptureStore(settings, counters=counters, budget=budget) as store:
        await store.submit(make_record(0))
        await store.submit(make_record(1))
        await eventually(lambda: len(budget.asked) >= 2)
        assert counters.get("capture_upload_deferred", source="agent") == 1
        assert store.status("cap-00000") == "IN_PROGRESS"
        budget.allowance = 1 << 20
        await eventually(lambda: store.status("cap-00001") == "SUCCESS")
    assert len(budget.charged) == 1


async def test_a_refused_pipeline_upload_is_set_aside_and_the_rest_go_on(tmp_path):
    """The disk destination's folder replaced by a file: every write fails for good.
    After ``attempts`` the upload moves to failed/ with its reason; once the folder is
    back, later records are uploaded."""
    counters = Counters()
    out = tmp_path / "out"
    s = spec(disk_dest(tmp_path), upload={"interval_s": 0.05, "retry_backoff_s": 0.01,
                                          "max_backoff_s": 0.02, "attempts": 3})
    async with make(tmp_path, s, counters) as capture:
        out.rmdir()
        out.write_text("not a folder")
        await capture.write(_items(capture, [decision("t1", 1), decision("t1", 2, True)]))
        assert await capture.upload_pending() == 0
        assert capture.pending == 0  # nothing blocks the spool
        assert counters.get("capture_upload_failures", pipeline="p1") == 3
        assert counters.get("capture_failed", pipeline="p1") == 2
        [folder] = (tmp_path / "spool" / "failed").iterdir()
        assert "Not a directory" in (folder / "error.txt").read_text()
        kept = [line for p in folder.glob("*.jsonl") for line in p.read_bytes().splitlines()]
        assert len(kept) == 2
        out.unlink()
        await capture.write(_items(capture, [decision("t1", 3)]))
        assert await capture.upload_pending() == 1
    rows = [r["rows"] for key, body in disk_objects(out).items()
            for r in read_object(key, body)]
    assert rows == [3]


async def test_transient_failures_are_retried_without_limit(tmp_path, s3):
    """An endpoint down for longer than ``attempts`` tries: nothing is set aside."""
    counters = Counters()
    bucket = s3.create_bucket()
    s = spec({"type": "s3", "bucket": bucket, "endpoint_url": s3.endpoint_url,
              "region": "us-east-1"},
             upload={"interval_s": 0.05, "retry_backoff_s": 0.01, "max_backoff_s": 0.02,
                     "attempts": 2})
    async with make(tmp_path, s, counters) as capture:
        await asyncio.to_thread(s3.stop)
        capture.on_round(round_of([decision("t1", 1)], FEATURES, THRESHOLDS))
        writer = asyncio.create_task(capture.write_loop())
        uploader = asyncio.create_task(capture.upload_loop())
        try:
            await eventually(lambda: counters.get("capture_upload_failures",
                                                  pipeline="p1") >= 5)
            assert capture.pending == 1
            await asyncio.to_thread(s3.start)
            await eventually(lambda: capture.pending == 0)
        finally:
            for task in (writer, uploader):
                task.cancel()
            await asyncio.gather(writer, uploader, return_exceptions=True)
    assert counters.get("capture_failed", pipeline="p1") == 0
    assert not (tmp_path / "spool" / "failed").exists() or not any(
        (tmp_path / "spool" / "failed").iterdir())


async def test_a_half_cleaned_upload_is_finished_not_replayed(tmp_path):
    """Killed while deleting an acknowledged upload's segments: a replay of what is left
    would overwrite its objects (same keys) with fewer records. The start finishes the
    clean-up instead; the objects stay whole."""
    s = spec(disk_dest(tmp_path))
    async with make(tmp_path, s) as capture:
        await capture.write(_items(capture, [decision("t1", 1)]))
        await capture.write(_items(capture, [decision("t1", 2)]))
        assert await capture.upload_pending() == 2
    [(key, body)] = disk_objects(tmp_path / "out").items()
    # Put the spool back as a kill in the middle of the clean-up left it: the intent and
    # the second segment, the first one already deleted.
    lines = [line for _, line in capture._encode(_items(capture, [decision("t1", 3),
                                                                   decision("t1", 4)]))]
    spool = SegmentSpool(tmp_path / "spool")
    spool.open()
    first = spool.write_segment(0, False, lines[:1])
    second = spool.write_segment(2, False, lines[1:])
    spool.write_upload(Upload(str(uuid.uuid4()), (first.name, second.name)))
    spool.delete_segments([first.name])
    spool.close()
    async with make(tmp_path, s) as capture:
        assert capture.pending == 0  # settled, not pending
        assert await capture.upload_pending() == 0
    assert disk_objects(tmp_path / "out") == {key: body}
    assert not list((tmp_path / "spool" / "segments").iterdir())
    assert not list((tmp_path / "spool" / "uploads").iterdir())
