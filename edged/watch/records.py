"""What the watch feed carries besides alarm payloads: decision records, and the lines
that open (``hello``) or refuse (``error``) a watch. Their JSON Schema is
``docs/schema/watch-v1.json`` (docs/watch.md); alarm, clear and sensor events are alarm
payloads (:mod:`edged.plugin.alarm_payload`, ``docs/schema/alarm-v1.json``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from edged import __version__
from edged.plugin.alarm_payload import iso_time
from edged.plugin.events import Decision

#: The version of docs/schema/watch-v1.json: changes when a key goes away or changes
#: meaning, never for a key added.
SCHEMA = 1


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def per_feature(features: Sequence[str], numbers: Sequence[float]) -> dict[str, float | None]:
    """``{feature: number}``, a number that is not finite as None."""
    return {name: _number(float(v)) for name, v in zip(features, numbers, strict=True)}


def decision_record(decision: Decision, device: str, features: Sequence[str],
                    thresholds: dict[str, float | None]) -> dict[str, Any]:
    """One decision as the feed sends it; ``thresholds`` is the round's, from
    :func:`per_feature` (the same for every decision of a round)."""
    return {
        "schema": SCHEMA,
        "id": f"{device}:{decision.pipeline}:{decision.turbine}:"
              f"{round(decision.time * 1000)}:decision",
        "event": "decision",
        "device": device,
        "pipeline": decision.pipeline,
        "turbine": decision.turbine,
        "anomalous": decision.is_anomalous,
        "groups": [group for group, flagged in decision.groups.items() if flagged],
        "primary": decision.primary,
        "flagged": [name for name, over in zip(features, decision.anomalous, strict=True)
                    if over],
        "values": per_feature(features, decision.values),
        "thresholds": thresholds,
        "model": {"name": decision.model.name, "version": decision.model.version},
        "rows": decision.rows,
        "time": iso_time(decision.time),
        "timestamp": round(decision.time, 3),
    }


def hello_record(device: str, decisions: str, turbine: str | None) -> dict[str, Any]:
    """The first line of every watch: who answers, and what it will send."""
    return {"schema": SCHEMA, "event": "hello", "device": device, "edged": __version__,
            "decisions": decisions, "turbine": turbine}


def error_record(reason: str, error: str) -> dict[str, Any]:
    """The last line of a watch the daemon refuses or ends."""
    return {"schema": SCHEMA, "event": "error", "reason": reason, "error": error}


def scores_text(decision: Decision, features: Sequence[str],
                thresholds: Sequence[float]) -> str:
    """Each feature's score against its threshold, in one short string for a log line:
    ``roll=0.51>0.2 pitch=0.12<=0.2`` (``>`` where the feature is flagged)."""
    return " ".join(
        f"{name}={value:.3g}{'>' if over else '<='}{threshold:.3g}"
        for name, value, over, threshold in zip(features, decision.values,
                                                decision.anomalous, thresholds, strict=True))
