"""Pipeline capture wired into a running graph: simulator -> onnx -> capture -> disk."""

from __future__ import annotations

import asyncio
import time

import yaml

from edged.app.assembly import build_graph
from edged.config import load_config
from edged.plugin.manager import make_plugin_manager
from tests.support import lake


def config_text(tmp_path) -> str:
    config = {
        "device": {"id": "dev-7"},
        "log": {"level": "warning", "format": "json", "stats_interval_s": 0},
        "state_dir": str(tmp_path / "state"),
        "shutdown": {"stage_timeout_s": 2},
        "sources": {"farm": {"type": "simulator", "turbines": 3, "rate_hz": 20, "seed": 3,
                             "history_s": 25, "faults": "1:voltage@0-600"}},
        "pipelines": {"wt": {
            "inputs": ["farm"],
            "preprocessor": {"type": "windturbine"},
            "inference": {"type": "onnx", "model": "builtin:windturbine-v1"},
            "interval_s": 0.1,
            "capture": {
                "rate": {"every": 5},
                "anomalies": {"before": 2, "after": 2},
                "spool": {"include_window": True, "fsync": "batch"},
                "upload": {"interval_s": 0.1},
                "destination": {"type": "disk", "path": str(tmp_path / "out")},
            },
        }},
    }
    return yaml.safe_dump(config, sort_keys=False)


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + 15
    while not condition():  # noqa: ASYNC110
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_graph_captures_decisions_to_disk(tmp_path):
    path = tmp_path / "edged.yaml"
    path.write_text(config_text(tmp_path))
    _, registry = make_plugin_manager()
    config = load_config(path, registry)
    graph = build_graph(config, registry)

    async def main():
        run = asyncio.create_task(graph.run())
        await until(lambda: graph.counters.get("capture_uploaded", pipeline="wt") >= 10,
                    "uploads")
        graph.stop()
        await asyncio.wait_for(run, 15)
    asyncio.run(main())
    assert all("device=dev-7/model=" in str(obj) for obj in (tmp_path / "out").rglob("*.gz"))
    records = lake.records(tmp_path / "out")
    assert len(records) >= 10
    assert any(r["anomalous"] for r in records)  # turbine 1 has a voltage fault
    assert any("before" in r["reasons"] or "after" in r["reasons"] for r in records)
    r = records[0]
    assert r["pipeline"] == "wt" and r["device_id"] == "dev-7"
    assert r["bundle_sha256"] and len(r["window"][0]) == len(r["features"])
    # Whatever was captured and not uploaded at the stop stays in the spool for next time.
    segments = (tmp_path / "state" / "capture" / "wt" / "segments").glob("*.jsonl")
    spooled = sum(int(p.stem.rsplit("-", 1)[1]) for p in segments)
    # Decisions and the shutdown's partial sketch alike.
    uploaded = lake.records(tmp_path / "out", kind=None)
    assert graph.counters.get("capture_records", pipeline="wt") == len(uploaded) + spooled
    assert graph.counters.get("capture_uploaded", pipeline="wt") == len(uploaded)


def test_captures_upload_within_the_data_budget(tmp_path):
    """With ``cloud.data_budget`` the graph's captures ask that budget before uploading."""
    from edged.config import parse_config

    config = yaml.safe_load(config_text(tmp_path))
    config["cloud"] = {"broker": {"host": "127.0.0.1"}, "data_budget": {"daily_mb": 5}}
    _, registry = make_plugin_manager()
    parsed = parse_config(yaml.safe_dump(config), str(tmp_path / "edged.yaml"), registry)
    graph = build_graph(parsed, registry)
    assert graph.budget is not None
    assert graph.captures["wt"].uplink.budget is graph.budget
