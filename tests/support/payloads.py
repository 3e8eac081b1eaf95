"""The published JSON Schemas (docs/schema/), checked strictly, and the events every kind
of payload is made from, raised the way the runtime raises them."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

from edged.plugin.events import Decision, Event, ModelRef
from edged.runtime.actuation import AlarmTracker

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schema"
FEATURES = ("roll", "pitch", "yaw", "wind_speed_rps", "rps", "voltage")
THRESHOLDS = (0.2, 0.2, 0.2, 0.3, 0.3, 0.4)
GROUPS = {"vibration": (0, 1, 2), "rotation": (3, 4), "voltage": (5,)}
MODEL = ModelRef("windturbine", 1)


@functools.cache
def schema(name: str) -> dict[str, Any]:
    """docs/schema/NAME.json, checked to be a valid draft 2020-12 schema."""
    document = json.loads((SCHEMAS / f"{name}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(document)
    return document


#: Records of the watch stream that are not alarm payloads (docs/schema/watch-v1.json).
WATCH_RECORDS = ("hello", "decision", "error")


def assert_valid(document: Any) -> None:
    """``document`` follows its published schema (watch-v1.json for the watch stream's
    own records, alarm-v1.json for the rest), and carries no key the schema leaves
    undocumented (the published schemas let keys be added; what edged sends today is all
    described)."""
    name = "watch-v1" if document.get("event") in WATCH_RECORDS else "alarm-v1"
    published = schema(name)
    jsonschema.Draft202012Validator(published).validate(document)
    defs = published["$defs"]
    kind = defs.get(document["event"], {})
    documented = set(defs.get("common", {}).get("properties", {})) | set(
        kind.get("properties", {}))
    extra = set(document) - documented
    assert not extra, f"undocumented keys {sorted(extra)} in {document}"
    detail = kind.get("properties", {}).get("detail", {}).get("properties")
    if detail is not None and document["event"] != "command":
        undocumented = set(document["detail"]) - set(detail)
        assert not undocumented, f"undocumented detail {sorted(undocumented)} in {document}"


def decision(turbine: str, anomalous: tuple[str, ...] = (), *, at: float = 1718000000.125,
             rows: int = 600, pipeline: str = "turbines") -> Decision:
    """A decision flagging the features of the groups in ``anomalous``, primary the
    first of them."""
    flagged = {i for group in anomalous for i in GROUPS[group]}
    values = tuple(t * (2.5 if i in flagged else 0.5) for i, t in enumerate(THRESHOLDS))
    return Decision(pipeline=pipeline, turbine=turbine, time=at, values=values,
                    anomalous=tuple(i in flagged for i in range(len(FEATURES))),
                    groups={g: g in anomalous for g in GROUPS}, model=MODEL,
                    primary=anomalous[0] if anomalous else None, rows=rows)


def tracked_events(turbine: str = "turbine-2",
                   groups: tuple[str, ...] = ("vibration", "rotation")) -> list[Event]:
    """An alarm and its clear, as the runtime's AlarmTracker raises them (debounce 2,
    clear after 2), then a stale sensor, its recovery and a summary of many stale ones,
    as a pipeline raises them."""
    tracker = AlarmTracker(debounce=2, clear_after=2, cooldown_s=0)
    events = []
    for i, flagged in enumerate((groups, groups, (), ())):
        event = tracker.update(decision(turbine, flagged, at=1718000000.125 + i / 2,
                                        rows=600 + 10 * i), FEATURES, THRESHOLDS)
        if event is not None:
            events.append(event)
    assert [e.kind for e in events] == ["alarm", "clear"], events
    return [*events,
            Event(kind="sensor_stale", pipeline="turbines", turbine=turbine,
                  time=1718000010.0, detail={"silent_s": 7.5}),
            Event(kind="sensor_recovered", pipeline="turbines", turbine=turbine,
                  time=1718000020.0, detail={"gap_s": 12.25}),
            Event(kind="sensor_stale", pipeline="turbines", turbine="*",
                  time=1718000030.0, detail={"turbines": 990})]
