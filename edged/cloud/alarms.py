"""Alarms to the cloud: every pipeline's alarm events published over the cloud link
(``cloud.alarms``; docs/health.md, "Alarms to the cloud").

A cloud service (:class:`edged.cloud.link.CloudService`) and a pipeline subscriber
(:class:`edged.runtime.pipeline.Subscriber`) at once: decisions become alarm and clear
events through the same :class:`AlarmTracker` the actuators use (its own debounce,
clear_after and cooldown), and the chosen event kinds are published QoS 1, one at a time
and in order, as the :mod:`edged.plugin.alarm_payload` payload, charged to the data budget as
``critical``. The decision path only appends to a bounded in-memory queue; while the link
is down events wait there, and when it is full the oldest is dropped and counted
(``cloud_alarms{result=dropped}``), so what comes back on reconnect is the newest
``queue_size`` events. A publish whose PUBACK never came is sent again, so the cloud may
see an event twice: the payload's ``id`` is derived from the event for de-duplication.
Nothing is kept across a restart.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Literal

import aiomqtt
import structlog

from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.config.cloud import CloudAlarmsConfig
from edged.mqtt.link import BrokerLink, Received
from edged.plugin.alarm_payload import alarm_payload, dumps
from edged.plugin.events import Event, Round
from edged.runtime.actuation import AlarmTracker

log = structlog.get_logger("edged.cloud.alarms")

#: Longest wait for the broker's PUBACK of one alarm before it is sent again.
PUBLISH_TIMEOUT_S = 5.0
#: Pause after a failed publish, so a link that accepts connections but not publishes
#: is not hammered.
RETRY_S = 1.0

EventKind = Literal["alarm", "clear", "sensor_stale", "sensor_recovered"]
#: What became of each event: cloud_alarms{result}.
RESULTS = ("sent", "retried", "dropped", "unencodable")


class CloudAlarms:
    """Publishes ``config.events`` of every pipeline it is subscribed to on ``link``."""

    def __init__(self, config: CloudAlarmsConfig, *, link: BrokerLink, thing: str,
                 device: str, counters: Counters) -> None:
        self.config = config
        self.link = link
        self.device = device
        self.counters = counters
        counters.declare("cloud_alarms", {"result": RESULTS})
        self.topic = config.topic.format(thing=thing)
        self._kinds = frozenset(config.events)
        self._trackers: dict[str, AlarmTracker] = {}  # per pipeline: turbine names may repeat
        # A deque rather than a BoundedQueue: the head stays queued until its PUBACK, so a
        # failed publish is retried before anything raised after it.
        self._pending: deque[Event] = deque()
        self._waiting = asyncio.Event()
        self._rate_limit = RateLimit()

    # -- as a pipeline subscriber (the decision path: append only) -----------------------

    def on_round(self, round: Round) -> None:
        features, thresholds = round.features, round.thresholds
        for decision in round.decisions:
            tracker = self._trackers.get(decision.pipeline)
            if tracker is None:
                config = self.config
                tracker = self._trackers[decision.pipeline] = AlarmTracker(
                    config.debounce, config.clear_after, config.cooldown_s)
            event = tracker.update(decision, features, thresholds)
            if event is not None:
                self.on_event(event)

    def on_event(self, event: Event) -> None:
        if event.kind not in self._kinds:
            return
        pending = self._pending
        if len(pending) >= self.config.queue_size:
            pending.popleft()
            self.counters.inc("cloud_alarms", result="dropped")
            self._rate_limit.warning(log, "cloud_alarm_dropped", queue_size=self.config.queue_size)
        pending.append(event)
        self._waiting.set()

    # -- as a cloud service -----------------------------------------------------------

    async def subscribe(self, client: aiomqtt.Client) -> None:
        pass  # publishes only

    def dispatch(self, message: Received) -> None:
        pass

    async def run(self) -> None:
        pending = self._pending
        while True:
            while not pending:
                self._waiting.clear()
                await self._waiting.wait()
            await self.link.wait_connected()
            event = pending[0]
            try:
                payload = dumps(alarm_payload(event, self.device))
            except (TypeError, ValueError) as exc:  # one odd event must not end the link
                pending.popleft()
                self.counters.inc("cloud_alarms", result="unencodable")
                self._rate_limit.warning(log, "cloud_alarm_unencodable",
                                         turbine=event.turbine, kind=event.kind,
                                         error=repr(exc))
                continue
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                    await self.link.publish(self.topic, payload, qos=1, priority="critical")
            except (aiomqtt.MqttError, TimeoutError) as exc:
                self.counters.inc("cloud_alarms", result="retried")
                self._rate_limit.warning(log, "cloud_alarm_publish_failed", error=repr(exc))
                await asyncio.sleep(RETRY_S)
                continue
            # The queue may have dropped it meanwhile (full while the PUBACK was awaited).
            if pending and pending[0] is event:
                pending.popleft()
            self.counters.inc("cloud_alarms", result="sent")

    @property
    def pending(self) -> tuple[Event, ...]:
        """The events waiting to go out, oldest first."""
        return tuple(self._pending)
