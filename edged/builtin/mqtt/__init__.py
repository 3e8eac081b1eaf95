"""Plugin ``mqtt``: the turbine bus. Source ``mqtt`` (readings published by turbines or
their gateways), actuator ``mqtt`` (alarms and commands back onto the bus) and the
``edged simulate`` command (simulated turbines publishing on a broker)."""

from __future__ import annotations

from edged import hookimpl
from edged.plugin.registry import CliCommand, ComponentType


@hookimpl
def edged_component_types() -> list[ComponentType]:
    from edged.builtin.mqtt.actuator import MqttActuator, MqttActuatorConfig
    from edged.builtin.mqtt.source import MqttSource, MqttSourceConfig

    return [
        ComponentType("source", "mqtt", MqttSourceConfig, MqttSource,
                      "readings from an MQTT broker, JSON or CSV, one row or a batch"),
        ComponentType("actuator", "mqtt", MqttActuatorConfig, MqttActuator,
                      "publish alarms and commands (brake, disconnect) with QoS 1"),
    ]


@hookimpl
def edged_cli_commands() -> list[CliCommand]:
    from edged.builtin.mqtt.simulate import COMMAND

    return [COMMAND]
