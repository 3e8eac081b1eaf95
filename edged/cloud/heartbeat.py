"""Heartbeats over the cloud link, and the thing's named shadow (docs/health.md).

A cloud service (:class:`edged.cloud.link.CloudService`): every ``cloud.health.interval_s``,
and at once on every connection, the health report goes QoS 1 to the heartbeat topic and
its summary to ``$aws/things/<thing>/shadow/name/<shadow>/update`` as
``{"state": {"reported": ...}, "clientToken": ...}`` (the AWS IoT Device Shadow MQTT
contract). The shadow service answers on ``.../update/accepted`` or ``.../update/rejected``
(``{"code": 400, "message": ...}``); both are counted.

A heartbeat is a picture of now: one that cannot go out (offline, the broker slow to
acknowledge) is counted and skipped, never queued, and nothing here waits on a decision
or makes one wait. With a data budget, the heartbeat and its shadow update are asked for
together as ``heartbeat`` priority; a refusal is counted as
``health_heartbeats{result=over_budget}`` and skipped the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import aiomqtt
import structlog

from edged.base import strict_json
from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.cloud.budget import DataBudget
from edged.config.cloud import HealthConfig
from edged.health.report import Health, to_json
from edged.mqtt.link import BrokerLink, publish_size

log = structlog.get_logger("edged.cloud.heartbeat")

#: Longest wait for the broker's PUBACK of one heartbeat or shadow update.
PUBLISH_TIMEOUT_S = 5.0


class Heartbeat:
    def __init__(self, config: HealthConfig, *, link: BrokerLink, thing: str,
                 health: Health, counters: Counters, budget: DataBudget | None = None
                 ) -> None:
        self.config = config
        self.budget = budget
        self.link = link
        self.health = health
        self.counters = counters
        self.topic = config.topic.format(thing=thing)
        self.shadow_topic = (None if config.shadow is None else
                             f"$aws/things/{thing}/shadow/name/{config.shadow}/update")
        self._token = secrets.token_hex(4)  # tells this daemon's updates from others'
        self._sent = 0
        self._wake = asyncio.Event()
        self._rate_limit = RateLimit()

    async def subscribe(self, client: aiomqtt.Client) -> None:
        if self.shadow_topic is not None:
            await client.subscribe([(f"{self.shadow_topic}/accepted", 1),
                                    (f"{self.shadow_topic}/rejected", 1)])
        self._wake.set()  # a heartbeat right away: the fleet sees the device is back

    def dispatch(self, message: aiomqtt.Message) -> None:
        if self.shadow_topic is None:
            return
        topic = str(message.topic)
        if topic == f"{self.shadow_topic}/accepted":
            self.counters.inc("health_shadow_updates", result="accepted")
        elif topic == f"{self.shadow_topic}/rejected":
            self.counters.inc("health_shadow_updates", result="rejected")
            try:
                error = strict_json.loads(bytes(message.payload), max_bytes=8192,
                                          max_depth=8, repeated_keys=True)
            except (TypeError, strict_json.JsonError):
                error = {}
            if not isinstance(error, dict):
                error = {}
            self._rate_limit.warning(log, "shadow_update_rejected", code=error.get("code"),
                                     message=error.get("message"))

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.interval_s):
                    await self._wake.wait()
            self._wake.clear()
            await self.beat()

    async def beat(self) -> None:
        """Send one heartbeat and shadow update now, or count why not."""
        if not self.link.connected:
            self.counters.inc("health_heartbeats", result="offline")
            return
        report = self.health.report()
        beat = to_json(report)
        size = publish_size(self.topic, beat, 1)
        shadow = None
        if self.shadow_topic is not None:
            shadow = (self.shadow_topic, to_json(
                {"state": {"reported": Health.shadow_state(report)},
                 "clientToken": f"edged-{self._token}-{self._sent + 1}"}))
            size += publish_size(*shadow, 1)
        if self.budget is not None and not self.budget.allows("heartbeat", size):
            self.counters.inc("health_heartbeats", result="over_budget")
            return
        self._sent += 1
        if not await self._publish(self.topic, beat):
            self.counters.inc("health_heartbeats", result="failed")
            return
        self.counters.inc("health_heartbeats", result="sent")
        if shadow is not None and not await self._publish(*shadow):
            self.counters.inc("health_shadow_updates", result="failed")

    async def _publish(self, topic: str, payload: bytes) -> bool:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self.link.publish(topic, payload, qos=1, priority="heartbeat")
        except (aiomqtt.MqttError, TimeoutError) as exc:
            self._rate_limit.warning(log, "heartbeat_publish_failed", topic=topic,
                                     error=repr(exc))
            return False
        return True
