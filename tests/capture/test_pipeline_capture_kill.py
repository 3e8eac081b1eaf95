"""A process SIGKILLed in the middle of an upload: after a restart, every spooled record
reaches the destination exactly once (the replay rewrites the same keys)."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import textwrap

from edged.base.metrics import Counters
from edged.capture.pipeline_capture import PipelineCapture
from edged.config.capture import PipelineCaptureSpec

CHILD = textwrap.dedent("""
    import asyncio, os, signal, sys, time
    from pathlib import Path
    from edged.capture.destinations import DiskDestination
    from edged.capture.pipeline_capture import PipelineCapture
    from edged.capture.policy import Pick
    from edged.config.capture import PipelineCaptureSpec
    from edged.plugin.events import Decision, ModelRef
    from edged.base.metrics import Counters

    tmp = Path(sys.argv[1])

    class KilledMidUpload(DiskDestination):
        def write(self, objects):
            super().write(objects[:1])  # one object out of several reached the disk
            os.kill(os.getpid(), signal.SIGKILL)

    async def main():
        spec = PipelineCaptureSpec.model_validate(
            {"rate": {"every": 1}, "spool": {"fsync": "always"},
             "destination": {"type": "disk", "path": str(tmp / "out")}})
        capture = PipelineCapture("p1", spec, device="dev-1", root=tmp / "spool",
                                  counters=Counters(), clock=lambda: None,
                                  destination=KilledMidUpload(tmp / "out"))
        async with capture:
            meta = (("f",), (1.0,), {}, time.monotonic(), time.time())
            picks = [(Pick(Decision("p1", "t1", 1_700_000_000.0 + 3600 * (r % 4), (0.1,),
                                    (r % 5 == 0,), {}, ModelRef("wt", 1), rows=r),
                           ["rate"]), meta) for r in range(40)]
            await capture.write(picks)
            print("spooled", flush=True)
            await capture.upload_pending()
    asyncio.run(main())
""")


def read(root):
    objects = {}
    for path in root.rglob("*.jsonl.gz"):
        objects[path] = [json.loads(x) for x in gzip.decompress(path.read_bytes()).splitlines()]
    return objects


def test_sigkill_mid_upload_loses_and_duplicates_nothing(tmp_path):
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True,
                           text=True, timeout=30, check=False)
    assert child.returncode == -9, child.stderr
    assert child.stdout.strip() == "spooled"
    partial = read(tmp_path / "out")
    assert len(partial) == 1
    assert list((tmp_path / "spool" / "uploads").glob("*.json"))  # the intent survived

    async def restart():
        spec = PipelineCaptureSpec.model_validate(
            {"rate": {"every": 1}, "destination": {"type": "disk", "path": str(tmp_path / "out")}})
        counters = Counters()
        async with PipelineCapture("p1", spec, device="dev-1", root=tmp_path / "spool",
                                   counters=counters) as capture:
            uploader = asyncio.create_task(capture.upload_loop())
            async with asyncio.timeout(10):
                while capture.pending:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            uploader.cancel()
            await asyncio.gather(uploader, return_exceptions=True)
            return counters.get("capture_uploaded", pipeline="p1")
    assert asyncio.run(restart()) == 40
    objects = read(tmp_path / "out")
    assert set(partial) <= set(objects) and len(objects) == 4  # four hours, same keys
    rows = sorted(r["rows"] for records in objects.values() for r in records)
    assert rows == list(range(40))
    assert not list((tmp_path / "spool" / "uploads").glob("*.json"))
