"""A daemon graph with health turned on, run in-process, and a tiny stand-in for the AWS
IoT Device Shadow service on mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import aiomqtt

from edged.plugin_manager import make_plugin_manager
from edged.testing import eventually  # noqa: F401  (the tests import it from here)
from edged.testing import running_graph as daemon  # noqa: F401

_, REGISTRY = make_plugin_manager()
THING = "turbine-gw-9"

CONFIG = """\
device: {{id: {thing}}}
state_dir: {state_dir}
log: {{level: info, stats_interval_s: 0}}
sources:
  farm: {{type: simulator, turbines: {turbines}, rate_hz: 20, seed: 3, history_s: 25}}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx, model: "builtin:windturbine-v1"}}
    interval_s: 0.3
{extra}
"""


def write_config(tmp: Path, extra: str = "", turbines: int = 4) -> Path:
    path = tmp / "edged.yaml"
    path.write_text(CONFIG.format(thing=THING, state_dir=tmp / "state", turbines=turbines,
                                  extra=extra))
    return path






class ShadowService:
    """Plays the Device Shadow service for named shadows: answers every
    ``$aws/things/<thing>/shadow/name/<shadow>/update`` on ``.../accepted`` (or, with
    ``reject`` set, ``.../rejected`` with ``{"code": 400, "message": ...}``), and records
    every heartbeat published on ``heartbeats``."""

    def __init__(self, host: str, port: int, heartbeats: str = "edged/+/health") -> None:
        self.host, self.port, self.heartbeats = host, port, heartbeats
        self.updates: list[tuple[str, dict]] = []
        self.beats: list[tuple[str, dict]] = []
        self.reject = False
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> ShadowService:
        subscribed = asyncio.Event()
        self._task = asyncio.create_task(self._serve(subscribed), name="test[shadow]")
        await asyncio.wait_for(subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _serve(self, subscribed: asyncio.Event) -> None:
        async with aiomqtt.Client(self.host, self.port, identifier="shadow-service") as client:
            await client.subscribe([("$aws/things/+/shadow/name/+/update", 1),
                                    (self.heartbeats, 1)])
            subscribed.set()
            async for message in client.messages:
                topic = str(message.topic)
                body = json.loads(message.payload)
                if not topic.endswith("/update"):
                    self.beats.append((topic, body))
                    continue
                self.updates.append((topic, body))
                if self.reject:
                    reply = {"code": 400, "message": "Payload contains invalid json",
                             "clientToken": body.get("clientToken")}
                    await client.publish(f"{topic}/rejected", json.dumps(reply), qos=1)
                else:
                    reply = {"state": body["state"], "version": len(self.updates),
                             "clientToken": body.get("clientToken"),
                             "timestamp": int(time.time())}
                    await client.publish(f"{topic}/accepted", json.dumps(reply), qos=1)
