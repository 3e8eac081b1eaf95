"""What flows out of a pipeline: decisions, and the events actuators act on."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

EventKind = Literal["alarm", "clear", "sensor_stale", "sensor_recovered"]


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: int


@dataclass(frozen=True, slots=True)
class Decision:
    """One model decision for one turbine."""

    pipeline: str
    turbine: str
    time: float  # wall clock, seconds since the epoch
    values: tuple[float, ...]  # per feature: the score compared to its threshold
    anomalous: tuple[bool, ...]  # per feature
    groups: dict[str, bool]  # per feature group: any of its features anomalous
    model: ModelRef
    # The anomalous group whose worst feature is furthest over its threshold: a large
    # fault in one group disturbs the whole reconstruction, so several groups may be
    # flagged at once while one of them is the cause.
    primary: str | None = None
    # Rows received from this turbine so far; the newest of them is in this decision.
    # Ties an alarm to the exact reading it was based on (latency, capture).
    rows: int = 0

    @property
    def is_anomalous(self) -> bool:
        return any(self.anomalous)


@dataclass(frozen=True, slots=True)
class Event:
    """Something an actuator may act on. ``kind`` says which; fields not relevant to a
    kind are empty."""

    kind: EventKind
    pipeline: str
    turbine: str
    time: float
    groups: tuple[str, ...] = ()
    values: dict[str, float] | None = None
    thresholds: dict[str, float] | None = None
    model: ModelRef | None = None
    detail: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, ())}
