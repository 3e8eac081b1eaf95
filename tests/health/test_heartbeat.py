"""Heartbeats and the named shadow from a running daemon graph, over mosquitto, answered
by a stand-in for the Device Shadow service."""

from __future__ import annotations

import json
from pathlib import Path

from edged.health.report import SHADOW_STATE_LIMIT
from tests.support import Mosquitto, free_port

from .conftest import THING, ShadowService, daemon, eventually, write_config


def cloud(port: int, health: str = "{interval_s: 0.2}") -> str:
    return (f"cloud:\n  broker: {{host: 127.0.0.1, port: {port}, reconnect_min_s: 0.1, "
            f"reconnect_max_s: 0.5}}\n  health: {health}\n")


async def test_heartbeats_and_shadow_updates_reach_the_cloud(tmp_path: Path):
    with Mosquitto(tmp_path) as broker:
        async with ShadowService(broker.host, broker.port) as shadow, \
                daemon(write_config(tmp_path, cloud(broker.port))) as graph:
            await eventually(lambda: any(
                b["pipelines"]["turbines"]["decisions"] > 0 for _, b in shadow.beats))
            await eventually(lambda: graph.counters.get(
                "health_shadow_updates", result="accepted") >= 2)
    topic, beat = shadow.beats[-1]
    assert topic == f"edged/{THING}/health"
    assert beat["schema"] == 1 and beat["thing"] == THING and beat["starts"] == 1
    assert beat["version"] and beat["uptime_s"] > 0
    turbines = beat["pipelines"]["turbines"]
    assert turbines["model"] == "windturbine" and turbines["version"] == 1
    assert set(turbines["latency_ms"]) == {"p50", "p95", "p99"}
    assert turbines["turbines"] == 4 and beat["turbines"]["count"] == 4
    assert len(beat["turbines"]["stalest"]) == 4
    assert beat["spool"] is None
    topic, update = shadow.updates[-1]
    assert topic == f"$aws/things/{THING}/shadow/name/edged-health/update"
    assert update["clientToken"].startswith("edged-")
    reported = update["state"]["reported"]
    assert reported["pipelines"]["turbines"]["model"] == "windturbine"
    assert "stalest" not in reported and "counters" not in reported  # summary figures only
    assert len(json.dumps(update["state"])) < SHADOW_STATE_LIMIT
    assert graph.counters.get("health_heartbeats", result="sent") >= 2


async def test_rejected_shadow_updates_are_counted(tmp_path: Path):
    with Mosquitto(tmp_path) as broker:
        async with ShadowService(broker.host, broker.port) as shadow:
            shadow.reject = True
            async with daemon(write_config(tmp_path, cloud(
                    broker.port, '{interval_s: 0.2, shadow: health2, topic: "hb/{thing}"}'))
                    ) as graph:
                await eventually(lambda: graph.counters.get(
                    "health_shadow_updates", result="rejected") >= 2)
    assert shadow.updates[0][0] == f"$aws/things/{THING}/shadow/name/health2/update"
    assert shadow.beats == []  # the topic was changed away from edged/+/health
    assert graph.counters.get("health_shadow_updates", result="accepted") == 0


async def test_heartbeats_while_offline_are_counted_and_skipped(tmp_path: Path):
    async with daemon(write_config(tmp_path, cloud(free_port()))) as graph:
        await eventually(lambda: graph.counters.get(
            "health_heartbeats", result="offline") >= 2)
        assert graph.counters.get("decisions", pipeline="turbines") >= 0
    assert graph.counters.get("health_heartbeats", result="sent") == 0


async def test_only_its_own_shadow_updates_are_counted_as_accepted(tmp_path: Path):
    """``update/accepted`` goes to every subscriber of the shadow: another client's
    update (a fleet tool, a second daemon) is told apart by its clientToken."""
    import aiomqtt

    shadow_topic = f"$aws/things/{THING}/shadow/name/edged-health/update"
    with Mosquitto(tmp_path) as broker:
        async with ShadowService(broker.host, broker.port) as shadow, \
                daemon(write_config(tmp_path, cloud(broker.port, "{interval_s: 3600}"))
                       ) as graph, \
                aiomqtt.Client(broker.host, broker.port, identifier="fleet-tool") as tool:
            counters = graph.counters
            await eventually(lambda: counters.get("health_shadow_updates",
                                                  result="accepted") == 1)
            for n in range(3):
                await tool.publish(shadow_topic, json.dumps(
                    {"state": {"reported": {"note": n}}, "clientToken": f"tool-{n}"}), qos=1)
            await eventually(lambda: counters.get("health_shadow_updates",
                                                  result="not_ours") == 3)
            assert counters.get("health_shadow_updates", result="accepted") == 1
            shadow.reject = True
            await tool.publish(shadow_topic, json.dumps(
                {"state": {"reported": {}}, "clientToken": "tool-x"}), qos=1)
            await eventually(lambda: counters.get("health_shadow_updates",
                                                  result="not_ours") == 4)
            assert counters.get("health_shadow_updates", result="rejected") == 0


async def test_a_figure_no_longer_reported_is_deleted_from_the_shadow(tmp_path: Path):
    """In a shadow, ``null`` deletes a reported key and a key left out keeps its old
    value: what the device stops reporting (a pipeline gone after a reload, a spool
    turned off, the per-pipeline figures swapped for totals) is sent as null, so the
    shadow never shows a stale figure; nothing it reports is null but to delete."""
    from edged.base.metrics import Counters
    from edged.cloud.heartbeat import Heartbeat
    from edged.config.cloud import HealthConfig

    from .conftest import merge_reported

    states = [
        {"schema": 1, "spool": {"bytes": 10}, "budget": None,
         "pipelines": {"a": {"version": 1, "p95_ms": 3.0}, "b": {"version": 1}}},
        {"schema": 1, "spool": None, "budget": None,
         "pipelines": {"a": {"version": 2}}},
        {"schema": 1, "pipelines_count": 1, "decisions": 9},
    ]

    class Link:
        connected = True
        sent: list[tuple[str, dict]] = []

        async def publish(self, topic, payload, qos, priority):
            self.sent.append((topic, json.loads(payload)))

    class Figures:
        state: dict = {}

        def report(self) -> dict:
            return {"schema": 1}

        def shadow_state(self, report) -> dict:
            return self.state

    link, figures = Link(), Figures()
    beat = Heartbeat(HealthConfig(), link=link, thing=THING, health=figures,
                     counters=Counters())
    document: dict = {}
    for state in states:
        figures.state = state
        await beat.beat()
        update = link.sent[-1][1]
        document = merge_reported(document, update["state"]["reported"])
        assert document == {k: v for k, v in state.items() if v is not None} | (
            {"pipelines": {name: {k: v for k, v in p.items() if v is not None}
                           for name, p in state["pipelines"].items()}}
            if "pipelines" in state else {})
