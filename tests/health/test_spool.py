"""The capture spool's figures in fleet health: a pipeline with ``capture:`` to a disk
destination fills the report's (and so the heartbeat's and shadow's) ``spool`` and the
Prometheus spool metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edged.health.report import Health

from .conftest import daemon, eventually, write_config
from .test_prometheus import scrape, value

# Every decision picked, a queue of one (3 of 4 picks dropped a round), uploads held back
# for an hour: records stay in the spool and some are dropped.
CAPTURE = """\
    capture:
      rate: {{every: 1}}
      spool: {{fsync: batch, queue_size: 1}}
      upload: {{interval_s: 3600}}
      destination: {{type: disk, path: {out}}}
metrics: {{listen: "127.0.0.1:0"}}
"""


async def test_the_spool_figures_come_from_the_pipeline_capture(tmp_path: Path):
    config = write_config(tmp_path, CAPTURE.format(out=tmp_path / "out"))
    async with daemon(config) as graph:
        counters = graph.counters
        await eventually(lambda: counters.get("capture_records", pipeline="turbines") >= 2)
        report = graph.health.report()
        text = await asyncio.to_thread(scrape, graph.metrics.address)
        spooled = counters.get("capture_records", pipeline="turbines")
        dropped = counters.get("capture_dropped", pipeline="turbines", reason="queue_full")
        capture = graph.captures["turbines"]
        assert capture.pending == spooled and capture.dropped() == dropped
        # Nothing uploaded while it runs (a stopping pipeline uploads once, at the end).
        assert not list((tmp_path / "out").rglob("*.jsonl*"))
    spool = report["spool"]
    assert 0 < spool["depth"] <= spooled  # nothing uploaded: every record still spooled
    assert 0 < spool["dropped"] <= dropped
    assert spool["bytes"] > 0
    assert Health.shadow_state(report)["spool"] == spool
    assert spool["depth"] <= value(text, "edged_spool_depth") <= spooled
    assert spool["dropped"] <= value(text, "edged_spool_dropped_total") <= dropped
    assert value(text, "edged_spool_bytes") > 0


async def test_without_capture_the_spool_is_null(tmp_path: Path):
    config = write_config(tmp_path, 'metrics: {listen: "127.0.0.1:0"}\n')
    async with daemon(config) as graph:
        assert graph.health.spool is None
        assert graph.health.report()["spool"] is None
        text = await asyncio.to_thread(scrape, graph.metrics.address)
    assert "edged_spool_depth" not in text
