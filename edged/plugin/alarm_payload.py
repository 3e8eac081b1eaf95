"""The alarm payload: the one JSON document every actuator sends for an event, and the
command document built on it.

The log, MQTT, webhook and command actuators, the cloud alarms and ``edged watch`` all
carry this document, so a consumer written for one of them reads the others. It is
described by a versioned JSON Schema, ``docs/schema/alarm-v1.json`` (docs/payloads.md);
``schema`` says which version a document follows. Within a version keys may be added,
none is removed or renamed, and none changes meaning. Every key is always present (empty
or null when the event kind does not use it)::

    {
      "schema": 1,
      "id": "gw-7:turbines:turbine-02:1718000000123:alarm",
      "event": "alarm",                 # alarm | clear | sensor_stale | sensor_recovered
      "device": "gw-7",                 # the device id (config `device.id`)
      "pipeline": "turbines",
      "turbine": "turbine-02",
      "groups": ["vibration"],          # anomalous groups (alarm only)
      "primary": "vibration",           # the group most over its threshold, or null
      "values": {"roll_std": 0.041, ...},      # per feature: the score
      "thresholds": {"roll_std": 0.02, ...},   # per feature: its threshold
      "model": {"name": "windturbine", "version": 1},   # or null
      "time": "2024-06-10T06:13:20.123Z",      # ISO-8601, UTC
      "timestamp": 1718000000.123,             # the same instant, seconds since the epoch
      "detail": {"consecutive": 2, "rows": 1234}   # kind-specific extras
    }

``id`` is derived from the event, not random: the same event always has the same id, so
a receiver can drop the duplicates that QoS 1 and webhook retries may deliver.

A command (the MQTT actuator's ``command_topic``) is the payload of the event that sent
it with ``event: "command"``, its own ``id``, and ``command``, ``reason`` (the groups
that called for it), ``cause`` (the event's kind) and ``alarm_id`` (the event's id).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from edged.plugin.events import Event

#: The version of the payload's JSON Schema (docs/schema/alarm-v1.json): it changes when
#: a key goes away or changes meaning, never for a key added.
SCHEMA = 1

#: The payload's keys, in the order they are written.
KEYS = ("schema", "id", "event", "device", "pipeline", "turbine", "groups", "primary",
        "values", "thresholds", "model", "time", "timestamp", "detail")
#: What a command adds to the payload of the event that sent it.
COMMAND_KEYS = ("command", "reason", "cause", "alarm_id")


def _number(value: float) -> float | None:
    # JSON has no NaN or infinity; a consumer gets null rather than an unparsable document.
    value = float(value)
    return value if math.isfinite(value) else None


def iso_time(seconds: float) -> str:
    """``seconds`` since the epoch as ISO-8601 UTC with milliseconds and a ``Z``."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def event_id(event: Event, device: str) -> str:
    return f"{device}:{event.pipeline}:{event.turbine}:{round(event.time * 1000)}:{event.kind}"


def alarm_payload(event: Event, device: str) -> dict[str, Any]:
    """The payload of ``event`` raised on ``device``, as a JSON-ready dict."""
    detail = dict(event.detail or {})
    primary = detail.pop("primary", None)
    return {
        "schema": SCHEMA,
        "id": event_id(event, device),
        "event": event.kind,
        "device": device,
        "pipeline": event.pipeline,
        "turbine": event.turbine,
        "groups": list(event.groups),
        "primary": primary,
        "values": {k: _number(v) for k, v in (event.values or {}).items()},
        "thresholds": {k: _number(v) for k, v in (event.thresholds or {}).items()},
        "model": ({"name": event.model.name, "version": event.model.version}
                  if event.model is not None else None),
        "time": iso_time(event.time),
        "timestamp": round(event.time, 3),
        "detail": detail,
    }


def command_payload(payload: dict[str, Any], command: str,
                    reason: list[str]) -> dict[str, Any]:
    """The command ``command`` sent for the event of ``payload`` (an alarm, or a clear),
    because of the groups in ``reason``."""
    return {**payload, "id": f"{payload['id']}:{command}", "event": "command",
            "command": command, "reason": list(reason), "cause": payload["event"],
            "alarm_id": payload["id"]}


def dumps(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; refuses NaN, so what goes out always parses."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False,
                      default=_plain).encode()


def _plain(value: Any) -> Any:
    # numpy scalars and the like that slip into `detail`.
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    return str(value)
