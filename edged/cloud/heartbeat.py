"""Heartbeats over the cloud link, and the thing's named shadow (docs/health.md).

A cloud service (:class:`edged.cloud.link.CloudService`): every ``cloud.health.interval_s``,
and at once on every connection, the health report goes QoS 1 to the heartbeat topic and
its summary to ``$aws/things/<thing>/shadow/name/<shadow>/update`` as
``{"state": {"reported": ...}, "clientToken": ...}`` (the AWS IoT Device Shadow MQTT
contract). The shadow service answers on ``.../update/accepted`` or ``.../update/rejected``
(``{"code": 400, "message": ...}``), to every subscriber of the shadow: an answer is this
daemon's only if it carries one of its own client tokens, and is counted as accepted or
rejected then, as ``not_ours`` otherwise (another client updating the same shadow).

A shadow merges what is reported: a key left out keeps its old value, and a key reported
``null`` is deleted (it is not stored as null). So a figure the daemon stops reporting
(a pipeline gone after a reload, the per-pipeline figures swapped for totals) is sent as
null once, and a figure with no value now (no spool, no latency yet) is sent as null too:
absent from the shadow, never stale. Null means nothing else here. The first update after
a start does not know what an earlier life reported.

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
from typing import Any

import aiomqtt
import structlog

from edged.base import strict_json
from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.cloud.budget import DataBudget
from edged.config.cloud import HealthConfig
from edged.health.report import Health, to_json
from edged.mqtt.link import BrokerLink, Received, publish_size

log = structlog.get_logger("edged.cloud.heartbeat")

#: Longest wait for the broker's PUBACK of one heartbeat or shadow update.
PUBLISH_TIMEOUT_S = 5.0
#: What is read of the shadow service's answers (docs/limits.md): an answer past them
#: is not ours (its clientToken unread).
ACCEPTED_BOUNDS = {"max_bytes": 64 * 1024, "max_depth": 40}
REJECTED_BOUNDS = {"max_bytes": 8192, "max_depth": 8}


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
        self._reported: dict[str, Any] = {}  # the state the shadow holds from us
        self._wake = asyncio.Event()
        self._rate_limit = RateLimit()

    async def subscribe(self, client: aiomqtt.Client) -> None:
        if self.shadow_topic is not None:
            await client.subscribe([(f"{self.shadow_topic}/accepted", 1),
                                    (f"{self.shadow_topic}/rejected", 1)])
        self._wake.set()  # a heartbeat right away: the fleet sees the device is back

    def dispatch(self, message: Received) -> None:
        if self.shadow_topic is None:
            return
        topic = str(message.topic)
        if topic not in (f"{self.shadow_topic}/accepted", f"{self.shadow_topic}/rejected"):
            return
        accepted = topic.endswith("/accepted")
        try:
            # An accepted answer echoes the state with its metadata, past the 8 KB of
            # state a shadow keeps; a rejected one is a code and a message.
            answer = strict_json.loads(
                bytes(message.payload), repeated_keys=True,
                **(ACCEPTED_BOUNDS if accepted else REJECTED_BOUNDS))
        except (TypeError, strict_json.JsonError):
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        token = answer.get("clientToken")
        if not isinstance(token, str) or not token.startswith(f"edged-{self._token}-"):
            self.counters.inc("health_shadow_updates", result="not_ours")
        elif accepted:
            self.counters.inc("health_shadow_updates", result="accepted")
        else:
            self.counters.inc("health_shadow_updates", result="rejected")
            self._rate_limit.warning(log, "shadow_update_rejected", code=answer.get("code"),
                                     message=answer.get("message"))

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
        state = self.health.shadow_state(report)
        if self.shadow_topic is not None:
            shadow = (self.shadow_topic, to_json(
                {"state": {"reported": _deleting(self._reported, state)},
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
        if shadow is not None:
            if await self._publish(*shadow):
                self._reported = state
            else:
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


def _deleting(before: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """``now`` as a shadow update over ``before``: every key of ``before`` that ``now``
    no longer has is reported null (which deletes it), in nested objects too."""
    update = dict(now)
    for key, old in before.items():
        if key not in now:
            update[key] = None
        elif isinstance(old, dict) and isinstance(now[key], dict):
            update[key] = _deleting(old, now[key])
    return update
