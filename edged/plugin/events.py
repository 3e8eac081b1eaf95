"""What flows out of a pipeline: decisions, each round of them as handed to the
pipeline's subscribers, and the events actuators act on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

#: The model's input and output of a round, by turbine: two (turbines, rows each, ...).
ModelIO = tuple[np.ndarray, np.ndarray]

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
class Round:
    """One decision round of one pipeline, handed to each of its subscribers
    (``on_round``) as one object, so none reads the round back off the pipeline.

    Row ``i`` of ``window``, ``raw`` and each of ``model_io`` is what ``decisions[i]`` was
    made from. The arrays are the round's own, handed to every subscriber (and a shadow
    trial) without a copy: read them, never write them, and copy whatever is kept past
    the call (a row kept as a view also pins the whole round's array).
    """

    pipeline: str
    decisions: Sequence[Decision]
    features: Sequence[str]  # the names of the scores in Decision.values, in order
    thresholds: Sequence[float]  # per feature
    time: float  # the decisions' wall-clock time
    # Read beside ``time``: a jump of their difference between rounds is a step of the
    # wall clock, not the time a round took.
    monotonic: float
    window: np.ndarray | None = None  # (decisions, history, features): the history decided on
    raw: np.ndarray | None = None  # (decisions, history, inputs); None unless kept
    inputs: tuple[str, ...] = ()  # the columns of ``raw``
    model_io: ModelIO | None = None  # (input, output), each by decision; None unless kept
    # The scores behind ``decisions`` as arrays, for subscribers that summarise a round
    # without a loop over its decisions (capture sketches): (decisions, features) floats
    # and flags, and (decisions, groups) flags in ``Decision.groups``' order.
    values: np.ndarray | None = None
    anomalous: np.ndarray | None = None
    group_flags: np.ndarray | None = None


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
