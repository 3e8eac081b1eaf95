"""The interfaces of the per-reading path. Plugins implement these; the runtime calls
them directly (never through pluggy).

Every component is an async context manager: ``__aenter__`` starts it (opens files,
loads models, connects) and ``__aexit__`` releases exactly what was started.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edged.base.metrics import Counters
from edged.plugin.events import Event, ModelRef


@dataclass(slots=True)
class Readings:
    """A batch of sensor rows. Row ``i`` of ``values`` belongs to ``turbines[i]``;
    columns are the preprocessor's raw inputs (``layout.INPUTS`` for wind turbines)."""

    turbines: tuple[str, ...]
    values: np.ndarray  # (rows, inputs) float64


#: What a source hands its readings to; applies the queue's overflow policy.
Emit = Callable[[Readings], Awaitable[None]]


@dataclass
class BuildContext:
    """What a factory may use besides its own config."""

    name: str  # the component's name in the config
    device_id: str
    state_dir: Path
    counters: Counters = field(default_factory=Counters)
    inputs: tuple[str, ...] = ()  # the raw input columns the pipeline wants from sources


@runtime_checkable
class Source(Protocol):
    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *exc: object) -> None: ...

    async def run(self, emit: Emit) -> None:
        """Produce readings until cancelled (or, for finite sources, until done)."""


@dataclass(frozen=True)
class Scores:
    """A preprocessor's verdict on a batch of turbines."""

    values: np.ndarray  # (turbines, features) float64
    anomalous: np.ndarray  # (turbines, features) bool
    thresholds: np.ndarray  # (features,)


@runtime_checkable
class Preprocessor(Protocol):
    features: tuple[str, ...]
    groups: dict[str, tuple[int, ...]]
    inputs: tuple[str, ...]  # raw columns each row must provide
    history: int  # rows per turbine needed for a decision

    def row_features(self, inputs: np.ndarray) -> np.ndarray:
        """(rows, inputs) -> (rows, features), computed once per row at ingest."""

    def model_input(self, history: np.ndarray) -> np.ndarray:
        """(turbines, history, features) -> the model's batched input, turbine t's rows
        together (t*k .. t*k + k - 1 for k rows a turbine), as ``score`` expects."""

    def score(self, x: np.ndarray, y: np.ndarray, turbines: int) -> Scores:
        """Model input and output -> per-turbine scores and decisions."""


@runtime_checkable
class InferenceBackend(Protocol):
    model: ModelRef
    manifest: dict[str, Any]

    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *exc: object) -> None: ...

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run the model on a batch. Blocking: the runtime calls it in a thread."""


@runtime_checkable
class SwappableBackend(InferenceBackend, Protocol):
    """A backend that can stage another model beside itself, for a hot swap (the
    ``onnx`` backend can): the swap builds the new backend through the serving one,
    never naming a plugin. Its component type says so with ``hot_swap=True``, which
    ``check-config`` requires of a pipeline whose ``store:`` model jobs may replace."""

    directory: Path

    def for_model(self, directory: Path) -> SwappableBackend:
        """A backend configured like this one for ``directory``, not loaded. Blocking."""

    def load(self) -> None:
        """Load the model. Blocking."""


@runtime_checkable
class Actuator(Protocol):
    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *exc: object) -> None: ...

    async def handle(self, event: Event) -> None:
        """Act on one event. Raising is logged and counted, never fatal."""


class Component:
    """Convenience base: a no-op async context manager."""

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None
