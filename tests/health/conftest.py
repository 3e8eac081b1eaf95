"""A daemon graph with health turned on, run in-process, and a tiny stand-in for the AWS
IoT Device Shadow service on mosquitto."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiomqtt

from edged.plugin.manager import make_plugin_manager
from edged.testing import (
    eventually,  # noqa: F401  (the tests import it from here)
    farm_config,
)
from edged.testing import running_graph as daemon  # noqa: F401
from tests.support import MqttPeer

_, REGISTRY = make_plugin_manager()
THING = "turbine-gw-9"

def write_config(tmp: Path, extra: str = "", turbines: int = 4) -> Path:
    path = tmp / "edged.yaml"
    path.write_text(farm_config(THING, tmp / "state", turbines=turbines, extra=extra))
    return path






def merge_reported(document: dict, reported: dict) -> dict:
    """A shadow's reported state after an update reporting ``reported``, as AWS merges
    it: keys set, nested objects merged, a key reported ``null`` deleted."""
    merged = dict(document)
    for key, value in reported.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_reported(merged[key], value)
        else:
            merged[key] = value
    return merged


class ShadowService(MqttPeer):
    """Plays the Device Shadow service for named shadows: answers every
    ``$aws/things/<thing>/shadow/name/<shadow>/update`` on ``.../accepted`` (or, with
    ``reject`` set, ``.../rejected`` with ``{"code": 400, "message": ...}``), to every
    subscriber as AWS does, keeps each shadow's reported state as AWS merges it
    (``documents``, by update topic), and records every heartbeat published on
    ``heartbeats``."""

    def __init__(self, host: str, port: int, heartbeats: str = "edged/+/health") -> None:
        super().__init__(host, port, ["$aws/things/+/shadow/name/+/update", heartbeats],
                         identifier="shadow-service")
        self.updates: list[tuple[str, dict]] = []
        self.beats: list[tuple[str, dict]] = []
        self.documents: dict[str, dict] = {}
        self.reject = False

    async def handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        body = json.loads(payload)
        if not topic.endswith("/update"):
            self.beats.append((topic, body))
            return
        self.updates.append((topic, body))
        if self.reject:
            reply = {"code": 400, "message": "Payload contains invalid json",
                     "clientToken": body.get("clientToken")}
            await client.publish(f"{topic}/rejected", json.dumps(reply), qos=1)
        else:
            self.documents[topic] = merge_reported(self.documents.get(topic, {}),
                                                   body["state"]["reported"])
            reply = {"state": body["state"], "version": len(self.updates),
                     "clientToken": body.get("clientToken"),
                     "timestamp": int(time.time())}
            await client.publish(f"{topic}/accepted", json.dumps(reply), qos=1)
