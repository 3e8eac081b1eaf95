"""Capture on demand over the cloud link: a daemon graph in-process, mosquitto, and a
client playing the fleet service that sends requests and reads the responses."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import yaml

from edged.plugin.manager import make_plugin_manager
from edged.runtime.graph import Graph
from edged.testing import eventually
from edged.testing import running_graph as daemon
from tests.support import Mosquitto, MqttPeer

_, REGISTRY = make_plugin_manager()
THING = "turbine-gw-3"
REQUEST = f"edged/{THING}/capture/request"
RESPONSE = f"edged/{THING}/capture/response"


def write_config(tmp: Path, port: int, **cloud_extra: object) -> Path:
    config = {
        "device": {"id": THING},
        "log": {"level": "info", "stats_interval_s": 0},
        "state_dir": str(tmp / "state"),
        "shutdown": {"stage_timeout_s": 2},
        "sources": {"farm": {"type": "simulator", "turbines": 4, "rate_hz": 20, "seed": 3,
                             "history_s": 25}},
        "pipelines": {
            "turbines": {
                "inputs": ["farm"],
                "preprocessor": {"type": "windturbine"},
                "inference": {"type": "onnx", "model": "builtin:windturbine-v1"},
                "interval_s": 0.1,
                "capture": {
                    # p = 1e-6 per decision, seeded: captures nothing by itself.
                    "rate": {"every": 1_000_000, "mode": "random", "seed": 1},
                    "upload": {"interval_s": 0.1},
                    "destination": {"type": "disk", "path": str(tmp / "out")},
                },
            },
            "plain": {
                "inputs": ["farm"],
                "preprocessor": {"type": "windturbine"},
                "inference": {"type": "onnx", "model": "builtin:windturbine-v1"},
                "interval_s": 0.5,
            },
        },
        "cloud": {"broker": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.1,
                             "reconnect_max_s": 0.5}, **cloud_extra},
    }
    path = tmp / "edged.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path






class Fleet(MqttPeer):
    """The cloud side: sends requests, keeps every response by request id."""

    def __init__(self, broker: Mosquitto) -> None:
        super().__init__(broker.host, broker.port, [RESPONSE], identifier="fleet-service")
        self.responses: dict[str | None, dict] = {}

    async def handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        body = json.loads(payload)
        self.responses[body.get("request_id")] = body

    async def send(self, payload: bytes | dict) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload).encode()
        await self.client.publish(REQUEST, payload, qos=1)

    async def ask(self, payload: dict) -> dict:
        await self.send(payload)
        await eventually(lambda: payload["request_id"] in self.responses)
        return self.responses[payload["request_id"]]


def captured(root: Path) -> list[dict]:
    """The decision records uploaded (not the hourly sketches beside them)."""
    return [record for path in sorted(root.rglob("*.jsonl.gz"))
            for record in map(json.loads, gzip.decompress(path.read_bytes()).splitlines())
            if record["kind"] == "decision"]


async def subscribed(graph: Graph) -> None:
    await eventually(lambda: graph.cloud.link.connected)
    await asyncio.sleep(0.3)  # the subscription follows the connection


@contextlib.asynccontextmanager
async def fleet_and_daemon(tmp_path: Path) -> AsyncIterator[tuple[Fleet, Graph]]:
    """mosquitto, the fleet service and a daemon graph subscribed to its requests."""
    with Mosquitto(tmp_path) as broker:
        async with Fleet(broker) as fleet, \
                daemon(write_config(tmp_path, broker.port)) as graph:
            await subscribed(graph)
            yield fleet, graph


async def test_a_request_captures_one_turbine_for_its_duration(tmp_path: Path):
    out = tmp_path / "out"
    async with fleet_and_daemon(tmp_path) as (fleet, graph):
        await asyncio.sleep(0.5)
        assert graph.counters.get("capture_records", pipeline="turbines") == 0
        sent = time.time()
        reply = await fleet.ask({"pipeline": "turbines", "turbine": "turbine-2",
                                 "duration_s": 2, "request_id": "r-1"})
        assert reply["status"] == "accepted" and "reason" not in reply
        assert sent + 1.5 < reply["until"] < time.time() + 2.5
        await eventually(lambda: graph.counters.get(
            "capture_uploaded", pipeline="turbines") >= 5)
        await asyncio.sleep(2.5)  # past the request: nothing more is captured
        done = graph.counters.get("capture_records", pipeline="turbines")
        await asyncio.sleep(1.0)
        assert graph.counters.get("capture_records", pipeline="turbines") == done
        await eventually(lambda: graph.counters.get(
            "capture_uploaded", pipeline="turbines") == done)
    records = captured(out)
    assert len(records) == done >= 5
    assert {r["turbine"] for r in records} == {"turbine-2"}
    assert all(r["reasons"] == ["on_demand"] for r in records)
    assert all(r["pipeline"] == "turbines" for r in records)
    times = sorted(r["time"] for r in records)
    assert times[-1] - times[0] <= 2.5
    assert graph.counters.get("capture_requests", result="accepted") == 1


async def test_a_request_goes_on_after_the_daemon_restarts(tmp_path: Path):
    """A restart (or a reload, which rebuilds the capture the same way) does not end a
    capture on demand: the next graph resumes it from the deadline saved beside the
    spool, and captures the turbine without being asked again."""
    async with fleet_and_daemon(tmp_path) as (fleet, graph):
        reply = await fleet.ask({"pipeline": "turbines", "turbine": "turbine-3",
                                 "duration_s": 60, "request_id": "r-long"})
        assert reply["status"] == "accepted"
        await eventually(lambda: graph.counters.get(
            "capture_records", pipeline="turbines") > 0)
    first = len(captured(tmp_path / "out"))
    # No broker: the second run is asked nothing.
    async with daemon(write_config(tmp_path, 1)) as graph:
        await eventually(lambda: graph.counters.get(
            "capture_uploaded", pipeline="turbines") >= 3)
    records = captured(tmp_path / "out")
    assert len(records) >= first + 3
    assert {r["turbine"] for r in records} == {"turbine-3"}
    assert all(r["reasons"] == ["on_demand"] for r in records)
    saved = json.loads((tmp_path / "state/capture/turbines/on_demand.json").read_text())
    assert abs(saved["requests"]["turbine-3"] - reply["until"]) < 1.0


async def test_bad_requests_are_rejected_with_a_reason_and_counted(tmp_path: Path):
    async with fleet_and_daemon(tmp_path) as (fleet, graph):
        reply = await fleet.ask({"pipeline": "turbines", "turbine": "turbine-1",
                                 "duration_s": 100_000, "request_id": "too-long"})
        assert reply["status"] == "rejected" and "until" not in reply
        assert reply["reason"].startswith("duration_s: ")
        assert "86400" in reply["reason"]
        reply = await fleet.ask({"pipeline": "turbines", "turbine": "x" * 200,
                                 "duration_s": 5, "request_id": "long-name",
                                 "extra": 1})
        assert "turbine: " in reply["reason"] and "extra: " in reply["reason"]
        reply = await fleet.ask({"pipeline": "nacelles", "turbine": "*",
                                 "duration_s": 5, "request_id": "unknown"})
        assert reply["status"] == "rejected"
        assert reply["reason"].startswith("pipeline: ") and "nacelles" in reply["reason"]
        reply = await fleet.ask({"pipeline": "plain", "turbine": "*",
                                 "duration_s": 5, "request_id": "no-capture"})
        assert reply["status"] == "rejected" and "'plain'" in reply["reason"]
        await fleet.send(b"{not json")
        await eventually(lambda: None in fleet.responses)
        assert fleet.responses[None]["reason"].startswith("request: not JSON")
        # Which turbine is meant? Neither: a key given twice is refused, not resolved.
        fleet.responses.pop(None)
        await fleet.send(b'{"pipeline": "turbines", "turbine": "turbine-1", "turbine": "*", '
                         b'"duration_s": 5, "request_id": "twice"}')
        await eventually(lambda: None in fleet.responses)
        assert fleet.responses[None]["reason"] == \
            "request: key 'turbine' appears twice in one object"
        # The link and the graph carry on: a good request still works.
        reply = await fleet.ask({"pipeline": "turbines", "turbine": "*",
                                 "duration_s": 1, "request_id": "good"})
        assert reply["status"] == "accepted"
        assert graph.counters.get("capture_requests", result="rejected") == 6
        assert graph.counters.get("capture_requests", result="accepted") == 1
        assert graph.counters.get("decisions", pipeline="turbines") > 0


async def test_requests_can_be_turned_off(tmp_path: Path):
    with Mosquitto(tmp_path) as broker:
        async with daemon(write_config(tmp_path, broker.port,
                                       capture_requests=False)) as graph:
            assert [type(s).__name__ for s in graph.cloud.services] == []
