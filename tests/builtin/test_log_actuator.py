"""The log actuator: a line named for the event, the alarm payload under `payload`."""

from __future__ import annotations

import structlog.testing

from edged.base.metrics import Counters
from edged.builtin.log_actuator import LogActuator, LogActuatorConfig
from edged.plugin.alarm_payload import alarm_payload
from edged.plugin.components import BuildContext
from tests.support.payloads import assert_valid, tracked_events


def make(**options) -> LogActuator:
    config = LogActuatorConfig(type="log", inputs=["turbines"], **options)
    return LogActuator(config, BuildContext(name="operator-log", device_id="gw-7",
                                            state_dir=None, counters=Counters()))


async def test_every_event_logs_the_published_payload():
    events = tracked_events()
    actuator = make(level="error")
    with structlog.testing.capture_logs() as logs:
        for event in events:
            await actuator.handle(event)
    assert [(line["event"], line["log_level"]) for line in logs] == [
        ("turbine_alarm", "error"), ("turbine_clear", "info"),
        ("turbine_sensor_stale", "error"), ("turbine_sensor_recovered", "info"),
        ("turbine_sensor_stale", "error")]
    for line, event in zip(logs, events, strict=True):
        assert_valid(line["payload"])
        # What the mqtt, webhook and command actuators send for the same event.
        assert line["payload"] == alarm_payload(event, "gw-7")
        assert (line["actuator"], line["pipeline"], line["turbine"]) == (
            "operator-log", "turbines", event.turbine)
    assert logs[0]["payload"]["primary"] == "vibration"
    assert logs[0]["payload"]["detail"] == {"consecutive": 2, "rows": 610}
