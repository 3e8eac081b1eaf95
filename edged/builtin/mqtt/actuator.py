"""Actuator ``mqtt``: alarms and commands back onto the turbine bus.

Every event is published as the alarm payload (:mod:`edged.plugin.alarm_payload`) on
``alarm_topic``.
An alarm also publishes, on ``command_topic``, the command configured for its primary
group (every group's when the decision named no primary), e.g. ``brake`` for vibration;
a clear may publish ``clear_command``. A command message is the command payload (the
event's payload with the command, :func:`~edged.plugin.alarm_payload.command_payload`).
All with QoS 1 by default.

The connection is the shared :class:`~edged.mqtt.link.BrokerLink`, kept up
by a task this actuator owns. While the broker is away, :meth:`MqttActuator.handle` waits
for it (at most ``max_wait_s`` per event) and publishes once it is back; the runtime's
bounded queue holds the events behind it meanwhile. A publish that got no PUBACK before
the link dropped is sent again after the reconnect, so a receiver may see an alarm twice
(QoS 1 is at least once): the payload's ``id`` tells duplicates apart.
"""

from __future__ import annotations

import asyncio
import re
import string
from typing import Annotated, Literal

import aiomqtt
import structlog
from pydantic import Field, field_validator

from edged.base.log import RateLimit
from edged.base.retry import Backoff
from edged.base.tasks import cancel_and_wait
from edged.mqtt.link import BrokerConfig, BrokerLink
from edged.plugin.alarm_payload import alarm_payload, command_payload, dumps
from edged.plugin.components import BuildContext, Component
from edged.plugin.config import NAME_PATTERN, ActuatorConfig
from edged.plugin.events import Event

log = structlog.get_logger("edged.actuator.mqtt")

PLACEHOLDERS = frozenset({"device", "turbine", "pipeline", "event"})
#: A command for every alarm, whatever its groups.
ANY_GROUP = "any"
#: Waits between publish attempts of one event (edged.base.retry): short, because the
#: event's own max_wait_s bounds them all.
PUBLISH_BACKOFF = (0.1, 1.0)
# A value put into a topic must stay one level and must not be a wildcard.
_TOPIC_UNSAFE = re.compile(r"[/+#\x00]")


def _check_topic(value: str) -> str:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise ValueError(f"malformed placeholder: {exc}") from None
    unknown = fields - PLACEHOLDERS
    if unknown:
        raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}}; known: "
                         f"{', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}")
    if not value or "+" in value or "#" in value:
        raise ValueError("must be a non-empty topic without the wildcards + and #")
    return value


class MqttActuatorConfig(ActuatorConfig):
    type: Literal["mqtt"]
    broker: BrokerConfig = Field(description="The broker to publish on.")
    alarm_topic: str = Field(
        "edged/{device}/alarms/{turbine}",
        description="Topic of the alarm payload of every event; placeholders {device}, "
        "{turbine}, {pipeline}, {event}.",
    )
    command_topic: str = Field(
        "turbines/{turbine}/command",
        description="Topic of the commands an alarm sends; same placeholders.",
    )
    commands: dict[Annotated[str, Field(pattern=NAME_PATTERN)], str] = Field(
        default_factory=lambda: {"vibration": "brake", "rotation": "brake",
                                 "voltage": "disconnect"},
        description="Per feature group, the command an alarm in that group sends; the "
        "key `any` sends its command on every alarm. An empty mapping sends none.",
    )
    clear_command: str | None = Field(
        None, description="Command sent when an alarm clears (e.g. resume); none if unset.")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of every publish.")
    retain: bool = Field(
        False, description="Retain the alarm-topic messages, so a late subscriber sees "
        "each turbine's last event. Commands are never retained.")
    max_wait_s: float = Field(
        300.0, gt=0, le=86_400,
        description="How long one event may wait for the broker before it is given up "
        "(counted and logged).",
    )

    @field_validator("alarm_topic", "command_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return _check_topic(value)


def _topic_value(value: str) -> str:
    return _TOPIC_UNSAFE.sub("_", value)


class MqttActuator(Component):
    def __init__(self, config: MqttActuatorConfig, ctx: BuildContext) -> None:
        self.config = config
        self.name = ctx.name
        self.device_id = ctx.device_id
        self.counters = ctx.counters
        for counter in ("mqtt_publish_retries", "mqtt_publish_failures"):
            ctx.counters.declare(counter, actuator=ctx.name)
        self.link = BrokerLink(config.broker, name=ctx.name, device_id=ctx.device_id,
                               counters=ctx.counters, kind="actuator")
        self.log = log.bind(actuator=ctx.name)
        self.rate_limit = RateLimit(interval=30.0)
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> MqttActuator:
        await self.link.__aenter__()
        # The actuator protocol has no run(): the link's reconnect loop is this task,
        # owned here and cancelled in __aexit__.
        self._task = asyncio.create_task(self.link.run(),
                                         name=f"edged[actuator.{self.name}].mqtt")
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)  # re-cancelled if a publish swallows it
            if not task.cancelled():
                task.result()
        await self.link.__aexit__(*exc)

    def topic(self, template: str, event: Event) -> str:
        return template.format(device=_topic_value(self.device_id),
                               turbine=_topic_value(event.turbine),
                               pipeline=_topic_value(event.pipeline),
                               event=event.kind)

    def messages(self, event: Event) -> list[tuple[str, bytes, bool]]:
        """What ``event`` publishes: (topic, payload, retain), in order."""
        payload = alarm_payload(event, self.device_id)
        out = [(self.topic(self.config.alarm_topic, event), dumps(payload),
                self.config.retain)]
        commands: dict[str, list[str]] = {}
        if event.kind == "alarm":
            groups = [payload["primary"]] if payload["primary"] else list(event.groups)
            for group in groups:
                command = self.config.commands.get(group)
                if command is not None:
                    commands.setdefault(command, []).append(group)
            command = self.config.commands.get(ANY_GROUP)
            if command is not None:
                commands.setdefault(command, groups)
        elif event.kind == "clear" and self.config.clear_command is not None:
            commands[self.config.clear_command] = []
        topic = self.topic(self.config.command_topic, event)
        for command, reason in commands.items():
            out.append((topic, dumps(command_payload(payload, command, reason)), False))
        return out

    async def handle(self, event: Event) -> None:
        if self._task is None:
            raise RuntimeError("the mqtt actuator was not started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.max_wait_s
        for topic, payload, retain in self.messages(event):
            if not await self._publish(topic, payload, retain, deadline, event):
                return
        self.log.debug("mqtt_event_published", kind=event.kind, turbine=event.turbine)

    async def _publish(self, topic: str, payload: bytes, retain: bool, deadline: float,
                       event: Event) -> bool:
        loop = asyncio.get_running_loop()
        backoff = Backoff(*PUBLISH_BACKOFF)
        while True:
            if self._task is not None and self._task.done():
                self._task.result()  # the link's loop died: raise why (the runtime logs it)
            remaining = deadline - loop.time()
            try:
                # The link bounds its own waits by connect_timeout_s; this one by what
                # is left of the event's max_wait_s.
                async with asyncio.timeout(max(0.05, remaining)):
                    await self.link.publish(topic, payload, qos=self.config.qos,
                                            retain=retain)
                return True
            except (aiomqtt.MqttError, TimeoutError) as exc:
                delay = backoff.next_delay()
                error = str(exc) or type(exc).__name__
                if loop.time() >= deadline:
                    self._failed(event, topic, error)
                    return False
                self.counters.inc("mqtt_publish_retries", actuator=self.name)
                if backoff.failures == 1:
                    self.log.warning("mqtt_publish_waiting", kind=event.kind,
                                     turbine=event.turbine, topic=topic, error=error,
                                     max_wait_s=self.config.max_wait_s)
                # The link may not have noticed the loss yet: do not spin meanwhile.
                await asyncio.sleep(min(delay, max(0.0, remaining)))

    def _failed(self, event: Event, topic: str, error: str) -> None:
        self.counters.inc("mqtt_publish_failures", actuator=self.name)
        suppressed = self.rate_limit.allow("failed")
        if suppressed is not None:
            self.log.error("mqtt_publish_failed", kind=event.kind, turbine=event.turbine,
                           topic=topic, error=error, waited_s=self.config.max_wait_s,
                           suppressed=suppressed)
