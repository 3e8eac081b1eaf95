"""Pipeline capture: sampled decisions -> segment spool -> gzip JSON lines at S3 or disk.

Real parts: the spool on disk, moto's S3 server over HTTP, the Disk destination.
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edged.base.metrics import Counters
from edged.capture.decision_records import clock_synced, manifest_hash
from edged.capture.pipeline_capture import PipelineCapture
from edged.config.capture import PipelineCaptureSpec
from edged.plugin.events import Decision, ModelRef
from tests.support.rounds import round_of

FEATURES = ("f1", "f2")
THRESHOLDS = (1.0, 1.0)
HOUR = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def decision(turbine: str, rows: int, anomalous: bool = False, t: float = HOUR,
             version: int = 3) -> Decision:
    return Decision("p1", turbine, t, (0.5, 2.0 if anomalous else 0.1),
                    (False, anomalous), {"g": anomalous}, ModelRef("wt", version),
                    primary="g" if anomalous else None, rows=rows)


def spec(dest: dict, **changes) -> PipelineCaptureSpec:
    values = {"rate": {"every": 1}, "destination": dest,
              "upload": {"interval_s": 0.05, "retry_backoff_s": 0.02, "max_backoff_s": 0.1}}
    values |= changes
    return PipelineCaptureSpec.model_validate(values)


def disk_dest(tmp_path: Path) -> dict:
    return {"type": "disk", "path": str(tmp_path / "out")}


def read_disk(root: Path) -> dict[str, list[dict]]:
    found = {}
    for path in sorted(root.rglob("*.jsonl.gz")):
        lines = gzip.decompress(path.read_bytes()).splitlines()
        found[str(path.relative_to(root))] = [json.loads(line) for line in lines]
    return found


class FakeSource:
    """What the capture reads from a pipeline: the backend (its model's manifest)."""

    def __init__(self) -> None:
        self.backend = type("B", (), {"model": ModelRef("wt", 3),
                                      "manifest": {"name": "wt", "version": 3}})()


def make(tmp_path: Path, s: PipelineCaptureSpec, counters: Counters | None = None,
         **kw) -> PipelineCapture:
    return PipelineCapture("p1", s, device="dev-1", root=tmp_path / "spool",
                           counters=counters or Counters(), clock=lambda: True, **kw)


async def until(condition) -> None:
    """Poll ``condition`` (the state under test has no event to wait on)."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def settle(capture: PipelineCapture) -> None:
    await until(capture.queue.empty)
    await asyncio.sleep(0.05)


def test_record_schema_and_key_layout_on_disk(tmp_path):
    async def main():
        source = FakeSource()
        s = spec(disk_dest(tmp_path), spool={"include_window": True})
        async with make(tmp_path, s, source=source) as capture:
            capture.on_round(round_of([decision("t1", 5), decision("t2", 6, anomalous=True)],
                                      FEATURES, THRESHOLDS,
                                      window=np.arange(8.0).reshape(2, 2, 2)))
            writer = asyncio.create_task(capture.write_loop())
            await settle(capture)
            assert await capture.upload_pending() == 2
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
    asyncio.run(main())
    objects = read_disk(tmp_path / "out")
    [(key, records)] = objects.items()
    prefix = "device=dev-1/model=wt/version=3/date=2023-11-14/hour=22/"
    assert key.startswith(prefix) and key.endswith(".jsonl.gz")
    by_turbine = {r["turbine"]: r for r in records}
    r = by_turbine["t2"]
    assert (r["schema"], r["kind"], r["pipeline"], r["device_id"]) == (1, "decision", "p1",
                                                                       "dev-1")
    assert (r["model_name"], r["model_version"], r["bundle_sha256"]) == (
        "wt", 3, manifest_hash({"name": "wt", "version": 3}))
    assert r["anomalous"] is True and r["flags"] == [False, True]
    assert r["values"] == [0.5, 2.0] and r["thresholds"] == [1.0, 1.0]
    assert r["features"] == ["f1", "f2"] and r["groups"] == {"g": True}
    assert r["reasons"] == ["rate"] and r["rows"] == 6 and r["key"] == "t2:6"
    assert r["window"] == [[4.0, 5.0], [6.0, 7.0]]
    assert r["time"] == HOUR and r["clock_synced"] is True
    assert isinstance(r["monotonic"], float)
    assert by_turbine["t1"]["window"] == [[0.0, 1.0], [2.0, 3.0]]
    assert not list((tmp_path / "spool" / "segments").iterdir())


def test_partitions_by_model_version_and_hour(tmp_path):
    async def main():
        async with make(tmp_path, spec(disk_dest(tmp_path))) as capture:
            await capture.write([(p, meta) for p, meta in _items(capture, [
                decision("t1", 1), decision("t1", 2, t=HOUR + 3600),
                decision("t1", 3, version=4)])])
            await capture.upload_pending()
    asyncio.run(main())
    keys = sorted(k.rsplit("/", 1)[0] for k in read_disk(tmp_path / "out"))
    assert keys == ["device=dev-1/model=wt/version=3/date=2023-11-14/hour=22",
                    "device=dev-1/model=wt/version=3/date=2023-11-14/hour=23",
                    "device=dev-1/model=wt/version=4/date=2023-11-14/hour=22"]


def _items(capture, decisions):
    from edged.capture.policy import Pick
    meta = (FEATURES, THRESHOLDS, {}, time.monotonic(), time.time())
    return [(Pick(d, ["rate"]), meta) for d in decisions]


def test_requests_on_demand_are_resumed_from_their_saved_deadlines(tmp_path):
    """Deadlines are saved in wall-clock time beside the spool: a capture opened on the
    same spool resumes the requests still running, capped at 24 h; expired ones stay
    ended. An unreadable file is counted and logged, and the capture runs without it."""
    s = spec(disk_dest(tmp_path))
    path = tmp_path / "spool" / "on_demand.json"

    async def first():
        async with make(tmp_path, s) as capture:
            capture.request("t1", 600)
            capture.request("t2", 1)
            capture.request("t1", 5)  # never shortens a request
    asyncio.run(first())
    saved = json.loads(path.read_text())["requests"]
    assert set(saved) == {"t1", "t2"} and saved["t1"] - time.time() == pytest.approx(600, abs=5)
    saved["t2"] = time.time() - 1  # ran out while the daemon was down
    saved["t3"] = time.time() + 30 * 86400  # a wall clock stepped back meanwhile
    path.write_text(json.dumps({"schema": 1, "requests": saved}))

    async def second():
        async with make(tmp_path, s) as capture:
            on_demand = capture.sampler.on_demand
            now = time.monotonic()
            picked = on_demand.select([decision(t, 1) for t in ("t1", "t2", "t3")], now)
            remaining = on_demand.deadlines(now, 0.0)
            return picked, remaining
    picked, remaining = asyncio.run(second())
    assert picked == [0, 2]
    assert remaining["t1"] == pytest.approx(600, abs=5)
    assert remaining["t3"] == pytest.approx(86400, abs=5)

    async def third(counters: Counters) -> None:
        async with make(tmp_path, s, counters) as capture:
            assert capture.sampler.on_demand.deadlines(time.monotonic(), 0.0) == {}
            capture.request("t4", 10)  # and new requests are saved over it

    for bad in (b"{torn", b"[]", b'{"schema": 2, "requests": {}}',
                b'{"schema": 1, "requests": {"t1": "soon"}}'):
        path.write_bytes(bad)
        counters = Counters()
        asyncio.run(third(counters))
        assert counters.get("capture_on_demand_unreadable", pipeline="p1") == 1
        assert set(json.loads(path.read_text())["requests"]) == {"t4"}


def test_full_queue_drops_without_blocking_and_counts(tmp_path):
    """The decision path is a plain call: it cannot wait for the writer, so a full queue
    can only drop (and count) what does not fit."""
    counters = Counters()
    s = spec(disk_dest(tmp_path), spool={"queue_size": 10})

    async def main():
        async with make(tmp_path, s, counters) as capture:
            assert not inspect.iscoroutinefunction(capture.on_round)
            for round_ in range(3):
                # Returns None, not an awaitable: nothing of it runs later.
                decisions = [decision(f"t{i}", round_) for i in range(1000)]
                assert capture.on_round(round_of(decisions, FEATURES, THRESHOLDS)) is None
                assert capture.queue.qsize() == 10  # at its bound, never beyond
            kept = [capture.queue.get_nowait()[0].decision for _ in range(10)]
            assert [(d.turbine, d.rows) for d in kept] == [(f"t{i}", 0) for i in range(10)]
    asyncio.run(main())
    assert counters.get("capture_dropped", pipeline="p1", reason="queue_full") == 3000 - 10


def test_budget_drops_oldest_non_anomalous_first(tmp_path):
    counters = Counters()
    # ~0.5 KiB a record, one record a segment: each takes one block on disk, which is
    # what the budget counts; it holds three.
    block = os.statvfs(tmp_path).f_frsize
    s = spec(disk_dest(tmp_path), spool={"budget_mb": 3 * block / 2**20})

    async def main():
        async with make(tmp_path, s, counters) as capture:
            await capture.write(_items(capture, [decision("t1", 0, anomalous=True)]))
            for r in range(1, 20):
                await capture.write(_items(capture, [decision("t1", r)]))
            assert 0 < capture.pending_bytes <= 3 * block
            assert capture.pending == 3
            assert capture.uplink.waiting == capture.pending
            await capture.upload_pending()
    asyncio.run(main())
    records = [r for rs in read_disk(tmp_path / "out").values() for r in rs]
    rows = sorted(r["rows"] for r in records)
    assert rows[0] == 0  # the anomaly survived
    assert rows[-1] == 19  # the newest survived
    dropped = counters.get("capture_dropped", pipeline="p1", reason="budget")
    assert dropped == 20 - len(rows) and dropped > 0
    assert counters.get("capture_dropped", pipeline="p1", reason="budget_anomaly") == 0


def test_spool_is_replayed_after_a_restart(tmp_path):
    async def first():
        async with make(tmp_path, spec(disk_dest(tmp_path))) as capture:
            await capture.write(_items(capture, [decision("t1", r) for r in range(5)]))

    async def second():
        async with make(tmp_path, spec(disk_dest(tmp_path))) as capture:
            await capture.upload_pending()
    asyncio.run(first())
    assert read_disk(tmp_path / "out") == {}
    asyncio.run(second())
    rows = sorted(r["rows"] for rs in read_disk(tmp_path / "out").values() for r in rs)
    assert rows == [0, 1, 2, 3, 4]


def test_writer_flushes_queue_and_reservoir_on_cancel(tmp_path):
    s = spec(disk_dest(tmp_path), rate=None, reservoir={"size": 2, "window_s": 3600})

    async def main():
        async with make(tmp_path, s) as capture:
            capture.on_round(round_of([decision(f"t{i}", 1) for i in range(10)], FEATURES,
                                      THRESHOLDS))
            writer = asyncio.create_task(capture.write_loop())
            await asyncio.sleep(0.05)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await capture.upload_pending()
    asyncio.run(main())
    records = [r for rs in read_disk(tmp_path / "out").values() for r in rs]
    assert len(records) == 2 and all(r["reasons"] == ["reservoir"] for r in records)
    assert all(r["features"] == ["f1", "f2"] for r in records)


class StuckDestination:
    """Writes its first object, then hangs: a process killed in mid-upload."""

    name = "Stuck"

    def __init__(self, inner) -> None:
        self.inner = inner
        self.release = threading.Event()
        self.entered = threading.Event()

    def open(self) -> None:
        self.inner.open()

    def write(self, objects) -> None:
        self.inner.write(objects[:1])
        self.entered.set()
        self.release.wait(5)
        raise RuntimeError("killed")

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("fsync", ["always", "batch", "never"])
def test_killed_mid_upload_replays_same_keys_and_loses_nothing(tmp_path, fsync):
    from edged.capture.destinations import DiskDestination
    s = spec(disk_dest(tmp_path), spool={"fsync": fsync})
    decisions = [decision("t1", r, t=HOUR + 3600 * (r % 3)) for r in range(30)]

    async def first():
        stuck = StuckDestination(DiskDestination(tmp_path / "out"))
        async with make(tmp_path, s, destination=stuck) as capture:
            capture.on_round(round_of(decisions, FEATURES, THRESHOLDS))
            writer = asyncio.create_task(capture.write_loop())
            await settle(capture)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            uploader = asyncio.create_task(capture.upload_loop())
            await asyncio.to_thread(stuck.entered.wait, 5)
            uploader.cancel()  # the kill: the upload never finished
            await asyncio.gather(uploader, return_exceptions=True)
            stuck.release.set()
        return len(read_disk(tmp_path / "out"))

    async def second():
        async with make(tmp_path, s) as capture:
            uploader = asyncio.create_task(capture.upload_loop())
            await until(lambda: capture.pending == 0)
            uploader.cancel()
            await asyncio.gather(uploader, return_exceptions=True)

    partial = asyncio.run(first())
    assert partial >= 1
    keys_before = set(read_disk(tmp_path / "out"))
    asyncio.run(second())
    objects = read_disk(tmp_path / "out")
    assert keys_before <= set(objects)  # the replay overwrote, not duplicated
    rows = sorted(r["rows"] for rs in objects.values() for r in rs)
    assert rows == list(range(30))


def test_s3_down_then_back_loses_nothing(tmp_path, s3, monkeypatch):
    from edged.capture.destinations import S3Destination

    acknowledged: list[str] = []  # object keys, in the order S3 acknowledged them
    real_write = S3Destination.write

    def write(self, objects):
        real_write(self, objects)
        acknowledged.extend(self.key(key) for key, _ in objects)
    monkeypatch.setattr(S3Destination, "write", write)

    bucket = s3.create_bucket()
    counters = Counters()
    s = spec({"type": "s3", "bucket": bucket, "prefix": "cap",
              "endpoint_url": s3.endpoint_url})

    async def main():
        async with make(tmp_path, s, counters) as capture:
            s3.stop()
            uploader = asyncio.create_task(capture.upload_loop())
            writer = asyncio.create_task(capture.write_loop())
            for r in range(20):
                capture.on_round(round_of([decision("t1", r), decision("t2", r, r % 7 == 0)],
                                          FEATURES, THRESHOLDS))
                await asyncio.sleep(0.01)
            await until(lambda: counters.get("capture_upload_failures", pipeline="p1") >= 2)
            s3.start()
            await until(lambda: counters.get("capture_uploaded", pipeline="p1") >= 40)
            for task in (writer, uploader):
                task.cancel()
            await asyncio.gather(writer, uploader, return_exceptions=True)
            assert capture.pending == 0 and capture.uplink.waiting == 0
    asyncio.run(asyncio.wait_for(main(), 20))
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == sorted(acknowledged)
    assert all(k.startswith("cap/device=dev-1/model=wt/version=3/date=2023-11-14/hour=22/")
               for k in keys)
    rows = []  # in upload order
    for key in acknowledged:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        rows += [(r["turbine"], r["rows"]) for r in map(json.loads,
                                                         gzip.decompress(body).splitlines())]
    assert sorted(rows) == sorted((t, r) for t in ("t1", "t2") for r in range(20))
    # Order kept per turbine (t1's decisions are never anomalous: one kind of segment).
    assert [r for t, r in rows if t == "t1"] == list(range(20))


def test_clock_synced_reads_the_kernel():
    assert clock_synced() in (True, False, None)


def test_config_is_strict():
    with pytest.raises(ValueError):
        PipelineCaptureSpec.model_validate({"destination": {"type": "ftp"}})
    with pytest.raises(ValueError):
        PipelineCaptureSpec.model_validate({"destination": {"type": "disk", "path": "x"},
                                            "rate": {"every": 0}})
    with pytest.raises(ValueError):
        PipelineCaptureSpec.model_validate({"destination": {"type": "disk", "path": "x"},
                                            "surprise": 1})
