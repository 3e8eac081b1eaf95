"""Actuator ``log``: writes each event to the daemon's log (and so to the journal).

The line is named for the event (``turbine_alarm``, ``turbine_clear``,
``turbine_sensor_stale``, ``turbine_sensor_recovered``) and carries the alarm payload
(:mod:`edged.plugin.alarm_payload`) under ``payload``: the document the MQTT, webhook and
command actuators send, so ``jq .payload`` on a log line gives what they give. The
pipeline and the turbine are repeated beside it, for a reader of the console.
"""

from __future__ import annotations

from typing import Literal

import structlog
from pydantic import Field

from edged import hookimpl
from edged.plugin.alarm_payload import alarm_payload
from edged.plugin.components import BuildContext, Component
from edged.plugin.config import ActuatorConfig
from edged.plugin.events import Event
from edged.plugin.registry import ComponentType


class LogActuatorConfig(ActuatorConfig):
    type: Literal["log"]
    level: Literal["info", "warning", "error"] = Field(
        "warning", description="Log level of alarms; clears and recoveries log at info."
    )


class LogActuator(Component):
    def __init__(self, config: LogActuatorConfig, ctx: BuildContext) -> None:
        self.level = config.level
        self.device_id = ctx.device_id
        self.log = structlog.get_logger("edged.actuator").bind(actuator=ctx.name)
        self.handled = 0

    async def handle(self, event: Event) -> None:
        self.handled += 1
        level = self.level if event.kind in ("alarm", "sensor_stale") else "info"
        await getattr(self.log, f"a{level}")(
            f"turbine_{event.kind}", pipeline=event.pipeline, turbine=event.turbine,
            payload=alarm_payload(event, self.device_id))


@hookimpl
def edged_component_types() -> list[ComponentType]:
    return [ComponentType("actuator", "log", LogActuatorConfig, LogActuator,
                          "log alarms, clears and sensor events")]
