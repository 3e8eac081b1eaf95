"""Nothing acknowledged is lost, nothing is delivered twice: a store process killed with
SIGKILL right after submit() returned (before, during or right after an upload) and a
fresh store on the same spool. (Pipeline records: test_pipeline_capture_kill.py.)"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edged.capture import CaptureSettings, CaptureStore
from edged.capture.segments import read_object

HERE = Path(__file__).resolve().parent

CHILD = """
import asyncio, os, signal, sys
sys.path.insert(0, {here!r})
from conftest import record
from edged.capture import CaptureSettings, CaptureStore
from edged.capture import store as store_module

settings = CaptureSettings.model_validate_json(sys.argv[1])
count, crash_after_delivery = int(sys.argv[2]), sys.argv[3] == "1"
if crash_after_delivery:
    async def _settled(self, *args, **kwargs):
        # The upload is at its destination; die before its statuses or clean-up.
        os.kill(os.getpid(), signal.SIGKILL)
    store_module.CaptureStore._settled = _settled

async def main():
    async with CaptureStore(settings) as store:
        for i in range(count):
            await store.submit(record(i, size=100 + i % 7))
            print(f"ok cap-{{i:05d}}", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


def run_and_kill(settings: CaptureSettings, count: int, *,
                 crash_after_delivery: bool = False) -> list[str]:
    """Acknowledged capture ids; the child is SIGKILLed after the last one (or kills
    itself once a batch is delivered)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(here=str(HERE)), settings.model_dump_json(),
         str(count), "1" if crash_after_delivery else "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    acked: list[str] = []
    # A thread reads the lines: select() on the pipe would miss lines already in the
    # file object's buffer once the child went quiet.
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in child.stdout:
            lines.put(line)
        lines.put(None)  # it died (crash_after_delivery), or was killed
    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 20
    try:
        while len(acked) < count:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith("ok "):  # not a log line
                acked.append(line.split()[1])
        if crash_after_delivery:
            child.wait(timeout=10)
        elif child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    return acked


def delivered_disk(settings: CaptureSettings) -> list[str]:
    root = settings.disk_path
    return [record["capture_id"] for path in sorted(root.rglob("*.jsonl.gz"))
            for record in read_object(path.relative_to(root).as_posix(), path.read_bytes())]


def delivered_cloud(s3, settings: CaptureSettings) -> list[str]:
    return [record["capture_id"]
            for key, body in s3.objects(settings.s3_bucket).items()
            for record in read_object(key, body)]


async def replay_all(settings: CaptureSettings, until, ids: list[str]) -> None:
    async with CaptureStore(settings) as store:
        await until(lambda: store.pending == 0, within=10)
        assert {store.status(i) for i in ids} == {"SUCCESS"}


@pytest.mark.parametrize("when", ["before_flush", "while_flushing"])
async def test_kill_9_loses_nothing_on_disk(disk_settings, until, when):
    count = 60
    settings = disk_settings(buffer_size=count, batch_size=count, push_period_s=60) \
        if when == "before_flush" else \
        disk_settings(buffer_size=count, batch_size=7, push_period_s=0.01)
    acked = run_and_kill(settings, count)
    assert len(acked) == count
    before = delivered_disk(settings)
    if when == "before_flush":
        assert before == []
    print(f"delivered before the kill: {len(before)} of {count}")
    await replay_all(settings, until, acked)
    delivered = delivered_disk(settings)
    assert sorted(delivered) == sorted(acked)  # all of them, each once
    assert len(delivered) == len(set(delivered))


async def test_kill_9_loses_nothing_in_the_cloud(cloud_settings, s3, until):
    count = 40
    settings = cloud_settings(buffer_size=count, batch_size=5, push_period_s=0.01)
    acked = run_and_kill(settings, count)
    assert len(acked) == count
    await replay_all(settings, until, acked)
    delivered = delivered_cloud(s3, settings)
    assert sorted(delivered) == sorted(acked)


@pytest.mark.parametrize("destination", ["Disk", "Cloud"])
async def test_a_crash_after_delivery_redelivers_the_same_batch(
        disk_settings, cloud_settings, s3, until, destination):
    make = disk_settings if destination == "Disk" else cloud_settings
    settings = make(batch_size=5, buffer_size=5, push_period_s=60)
    acked = run_and_kill(settings, 5, crash_after_delivery=True)
    assert len(acked) == 5
    delivered = delivered_disk if destination == "Disk" else (
        lambda settings: delivered_cloud(s3, settings))
    assert sorted(delivered(settings)) == acked  # delivered, then the crash
    await replay_all(settings, until, acked)
    # Replayed under the same batch id: the objects were rewritten, not duplicated.
    assert sorted(delivered(settings)) == acked
