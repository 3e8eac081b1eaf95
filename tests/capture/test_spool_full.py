"""The capture spool on a full disk (issue 13, item 4), on a real filesystem: a tmpfs of
2 MiB. A full disk drops and counts records, says so in health and /metrics, and never
stops the decisions, a start, or a restart; the spool's budget counts what its files
take on disk and leaves a free-space reserve; writing resumes by itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.request
import uuid
from pathlib import Path

from conftest import fill
from structlog.testing import capture_logs

from edged.base.metrics import Counters
from edged.capture.destinations import DiskDestination
from edged.capture.uplink import CaptureUplink, UplinkSettings
from edged.testing import farm_config
from tests.support import EdgedProcess, free_port

HOUR = 1_700_000_000.0
ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
       "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
       "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


def line(i: int, size: int = 300) -> bytes:
    record = {"id": f"r{i}", "time": HOUR + i, "model_name": "wt", "model_version": 1,
              "pad": "x" * size}
    return json.dumps(record).encode() + b"\n"


def uplink(root: Path, out: Path, counters: Counters, **settings) -> CaptureUplink:
    values = {"interval_s": 3600, "max_records": 10_000, "retry_backoff_s": 0.01,
              "max_backoff_s": 0.05, "fsync": "always", **settings}
    return CaptureUplink(root, DiskDestination(out, fsync=False), UplinkSettings(**values),
                         device="dev-1", counters=counters, labels={"pipeline": "p"})


def on_disk(directory: Path) -> int:
    return sum(os.stat(p).st_blocks * 512 for p in directory.iterdir())


# -- the daemon --------------------------------------------------------------------------

def leave_a_previous_run(spool: Path) -> None:
    """What a daemon killed on this disk left: segments, an intent naming one of them, a
    torn intent and an unreadable requests file."""
    (spool / "segments").mkdir(parents=True)
    (spool / "uploads").mkdir()
    for seq in range(3):
        (spool / "segments" / f"{seq:016d}-n-2.jsonl").write_bytes(line(2 * seq) +
                                                                 line(2 * seq + 1))
    batch = str(uuid.uuid4())
    (spool / "uploads" / f"{batch}.json").write_text(json.dumps(
        {"batch_id": batch, "segments": [f"{0:016d}-n-2.jsonl"]}))
    (spool / "uploads" / f"{uuid.uuid4()}.json").write_text('{"batch_id": [[[')
    (spool / "on_demand.json").write_text('{"a":' * 5000 + "1" + "}" * 5000)


def metrics(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\S+) (\S+)$", text, re.MULTILINE)}


def decisions(figures: dict[str, float]) -> float:
    return sum(v for k, v in figures.items() if k.startswith("edged_decisions_total"))


async def watch(daemon: EdgedProcess, port: int) -> dict[str, float]:
    """Once the daemon refuses captures for a full disk, its figures a few seconds
    later, having decided all along."""
    await daemon.wait_for("graph_started", 60)
    for _ in range(300):
        figures = await asyncio.to_thread(metrics, port)
        if figures.get("edged_spool_refusing") == 1 and decisions(figures) > 0:
            break
        assert daemon.proc.poll() is None, daemon.lines[-10:]
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the spool never said it refuses: {daemon.lines[-10:]}")
    before = decisions(figures)
    await asyncio.sleep(3)
    figures = await asyncio.to_thread(metrics, port)
    assert daemon.proc.poll() is None, daemon.lines[-10:]
    assert decisions(figures) >= before + 4 * 5, "decisions stopped on the full disk"
    assert figures["edged_spool_refusing"] == 1
    return figures


async def test_a_full_spool_disk_stops_neither_the_daemon_nor_its_restart(
        tmp_path: Path, small_disk: Path):
    port = free_port()
    capture = f"""\
    capture:
      rate: {{every: 1}}
      upload: {{interval_s: 1, retry_backoff_s: 0.2, max_backoff_s: 1}}
      destination: {{type: s3, bucket: nowhere, region: us-east-1,
                     endpoint_url: "http://127.0.0.1:{free_port()}"}}
metrics: {{listen: "127.0.0.1:{port}"}}
actuators:
  operator-log: {{type: log, inputs: [turbines]}}
"""
    config = tmp_path / "edged.yaml"
    config.write_text(farm_config("dev-full", small_disk, interval_s=0.2,
                                  faults="2:voltage@2-600") + capture)
    leave_a_previous_run(small_disk / "capture" / "turbines")
    fill(small_disk)

    with EdgedProcess(config, ENV, cwd=tmp_path) as daemon:
        figures = await watch(daemon, port)
        # The fault injected on the full disk is detected and acted on all the same.
        assert (await daemon.wait_for("turbine_alarm", 30))["turbine"] == "turbine-2"
        replay = await daemon.wait_for("capture_replay")
        assert daemon.stop() == 0
    assert replay["segments"] == 3 and replay["uploads"] == 1
    assert figures['edged_capture_dropped_total{pipeline="turbines",reason="disk_full"}'] > 0
    assert figures['edged_capture_intents_corrupt_total{pipeline="turbines"}'] == 1
    assert figures['edged_capture_on_demand_unreadable_total{pipeline="turbines"}'] == 1
    assert daemon.events("capture_spool_refusing")

    # Started again on the disk still full: it comes up, decides and stops cleanly.
    with EdgedProcess(config, ENV, cwd=tmp_path) as again:
        figures = await watch(again, port)
        assert (await again.wait_for("turbine_alarm", 30))["turbine"] == "turbine-2"
        assert again.stop() == 0
    assert figures['edged_capture_dropped_total{pipeline="turbines",reason="disk_full"}'] > 0
    assert not list((small_disk / "capture" / "turbines" / "segments").glob(".*.tmp"))


# -- the budget and the reserve ----------------------------------------------------------

async def test_the_budget_counts_the_blocks_the_segments_take(tmp_path: Path):
    counters = Counters()
    root = tmp_path / "spool"
    async with uplink(root, tmp_path / "out", counters) as up:
        for i in range(200):
            await up.write([(False, line(i, size=50))])
        logical = sum(p.stat().st_size for p in (root / "segments").iterdir())
        assert up.pending_bytes == on_disk(root / "segments")
        assert up.pending_bytes >= 10 * logical  # a block each, ~0.1 KiB of records

    # A restart counts the same.
    async with uplink(root, tmp_path / "out", counters) as up:
        assert up.pending_bytes == on_disk(root / "segments")


async def test_the_reserve_keeps_free_space_and_writing_resumes_once(
        tmp_path: Path, small_disk: Path):
    counters = Counters()
    reserve = 1 << 20
    async with uplink(small_disk / "spool", tmp_path / "out", counters,
                      min_free_bytes=reserve) as up:
        kept = up.write([(True, line(-1))])  # kept longer: never dropped for others
        assert await kept
        for i in range(600):  # 2.4 MB of blocks onto a 2 MiB disk
            await up.write([(False, line(i))])
            vfs = os.statvfs(small_disk)
            assert vfs.f_bavail * vfs.f_frsize >= reserve - 4096
        assert counters.get("capture_dropped", pipeline="p", reason="disk_space") > 0
        assert up.refusing is None
        assert (small_disk / "spool" / "segments" / f"{0:016d}-a-1.jsonl").exists()

        filler = fill(small_disk)  # someone else takes the disk
        with capture_logs() as logs:
            for i in range(600, 620):
                await up.write([(False, line(i))])
            assert up.refusing == "disk_full"
            assert counters.get("capture_dropped", pipeline="p", reason="disk_full") > 0
            filler.unlink()  # and gives it back
            for i in range(620, 630):
                assert await up.write([(False, line(i))])
        assert up.refusing is None
        assert [e["event"] for e in logs].count("capture_spool_writing_again") == 1
        assert up.pending_bytes == on_disk(small_disk / "spool" / "segments")


async def test_by_default_a_small_disk_of_its_own_keeps_a_share_free_and_captures(
        tmp_path: Path, small_disk: Path):
    # No min_free_mb: 32 MiB would be more than this 2 MiB disk holds; 15% of it is kept.
    counters = Counters()
    async with uplink(small_disk / "spool", tmp_path / "out", counters,
                      min_free_bytes=None) as up:
        for i in range(600):
            await up.write([(False, line(i))])
        vfs = os.statvfs(small_disk)
        free, size = vfs.f_bavail * vfs.f_frsize, vfs.f_blocks * vfs.f_frsize
        assert 0.15 * size - 4096 <= free <= 0.15 * size + 8 * 4096
        assert up.refusing is None
        assert counters.get("capture_dropped", pipeline="p", reason="disk_space") > 0
        assert len(list((small_disk / "spool" / "segments").iterdir())) > 300


async def test_a_write_the_disk_refuses_is_dropped_and_leaves_nothing_behind(
        tmp_path: Path, small_disk: Path, monkeypatch):
    counters = Counters()
    root = small_disk / "spool"
    async with uplink(root, tmp_path / "out", counters, fsync="batch",
                      min_free_bytes=0) as up:
        assert await up.write([(False, line(i)) for i in range(5)])
        fill(small_disk)
        # statvfs wrong (another writer raced it): the write itself meets ENOSPC.
        monkeypatch.setattr(up.spool, "space", lambda: (1 << 30, 4096, 1 << 31))
        assert await up.write([(False, line(i, size=20_000)) for i in range(5, 10)]) == []
        assert up.refusing == "disk_full"
        assert counters.get("capture_dropped", pipeline="p", reason="disk_full") == 5
        assert not list((root / "segments").glob(".*.tmp"))  # its space given back
        # Too full for an intent: the upload goes without one and frees the disk.
        assert await up.upload_pending() == 5
    assert counters.get("capture_upload_without_intent", pipeline="p") == 1
    assert not list((root / "segments").iterdir())


async def test_the_agents_captures_are_refused_on_a_full_disk_then_taken_again(
        small_disk: Path, disk_settings, make_record):
    from edged.capture import CaptureStore
    from edged.capture.store import CaptureError

    counters = Counters()
    settings = disk_settings(spool_dir=small_disk / "spool", min_free_mb=0)
    async with CaptureStore(settings, counters=counters) as store:
        await store.submit(make_record(0))
        filler = fill(small_disk)
        try:
            await store.submit(make_record(1, size=8192))
        except CaptureError as exc:
            assert "disk_full" in str(exc)
        else:
            raise AssertionError("a capture was taken on a full disk")
        assert counters.get("captures_rejected", reason="disk_full") == 1
        assert store.status("cap-00001") == "NOT_FOUND"
        filler.unlink()
        await store.submit(make_record(2))
        assert store.status("cap-00002") in ("IN_PROGRESS", "SUCCESS")
