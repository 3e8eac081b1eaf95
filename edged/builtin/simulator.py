"""Source ``simulator``: an in-process wind farm (``edged.windturbine.simulator``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edged import hookimpl
from edged.plugin.components import BuildContext, Component, Emit, Readings
from edged.plugin.config import SourceConfig
from edged.plugin.registry import ComponentType
from edged.windturbine.layout import DATASET_COLUMNS, FAULT_KINDS
from edged.windturbine.simulator import (
    DRIFT_KINDS,
    Fault,
    WindFarm,
    parse_drifts,
    parse_schedule,
)

_HISTORY_CHUNK_TICKS = 100  # rows per turbine per emitted history batch


class FaultSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    turbine: int = Field(ge=0, description="Turbine index (0-based).")
    kind: Literal["vibration", "rotation", "voltage"]
    start: float = Field(ge=0, description="Seconds after the source starts.")
    end: float = Field(gt=0, description="Seconds after the source starts.")

    @model_validator(mode="after")
    def _ordered(self) -> FaultSpec:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must come after start ({self.start})")
        return self


class SimulatorConfig(SourceConfig):
    type: Literal["simulator"]
    turbines: int = Field(5, ge=1, le=100_000, description="Number of simulated turbines.")
    rate_hz: float = Field(20.0, gt=0, le=1000, description="Rows per turbine per second.")
    seed: int | None = Field(None, description="Random seed; the same seed gives the same farm.")
    farm_id: str = Field("farm", min_length=1, description="The nanoId of every row.")
    history_s: float = Field(
        25.0, ge=0, le=3600,
        description="Simulated past emitted at start, so decisions begin at once (25 s fills "
        "the reference's 500-row buffer at 20 Hz).",
    )
    faults: list[FaultSpec] | str = Field(
        default_factory=list,
        description="Faults by schedule: a list, or the compact form "
        "'2:vibration@5-12,3:rotation@10+6' (seconds after start).",
    )

    drifts: str = Field(
        "", description="Slow drifts by schedule, in the faults' compact form: "
        "'1:bias@60+600' (a voltage sensor bias), 'bearing' (vibration growing), 'wind' "
        "(the wind regime shifting); each grows linearly from START to END, then stays.")

    @field_validator("drifts")
    @classmethod
    def _parse_drifts(cls, value: str) -> str:
        parse_drifts(value)
        return value

    @field_validator("faults")
    @classmethod
    def _parse(cls, value):
        if isinstance(value, str):
            return [FaultSpec(turbine=f.turbine, kind=f.kind, start=f.start, end=f.end)
                    for f in parse_schedule(value)]
        return value

    @model_validator(mode="after")
    def _turbines_exist(self) -> SimulatorConfig:
        for fault in self.faults:
            if fault.turbine >= self.turbines:
                raise ValueError(f"fault on turbine {fault.turbine}, but there are only "
                                 f"{self.turbines} (0..{self.turbines - 1})")
        return self


@dataclass(frozen=True)
class Injection:
    """A fault as it happened (or is scheduled), in wall-clock seconds."""

    turbine: str
    kind: str
    start: float
    end: float


class SimulatorSource(Component):
    """The farm as a source; also the dashboard's simulator controls
    (``edged.dashboard.controls.FarmControl``): start and stop turbines, switch faults
    and drifts on and off while it runs."""

    fault_kinds = FAULT_KINDS
    drift_kinds = DRIFT_KINDS

    def __init__(self, config: SimulatorConfig, ctx: BuildContext) -> None:
        self.config = config
        missing = [c for c in ctx.inputs if c not in DATASET_COLUMNS]
        if missing:
            raise ValueError(f"the simulator has no columns {missing}")
        self._columns = np.array([DATASET_COLUMNS.index(c) for c in ctx.inputs])
        self._history_ticks = round(config.history_s * config.rate_hz)
        # Fault times in the config count from the live start, after the history.
        offset = self._history_ticks / config.rate_hz
        self.farm = WindFarm(
            turbines=config.turbines, rate_hz=config.rate_hz, seed=config.seed,
            farm_id=config.farm_id,
            faults=[Fault(f.turbine, f.kind, f.start + offset, f.end + offset)
                    for f in config.faults],
            drifts=[replace(d, start=d.start + offset, end=d.end + offset)
                    for d in parse_drifts(config.drifts)],
        )
        self._ids = tuple(self.farm.turbine_ids)
        self._index = {turbine: i for i, turbine in enumerate(self._ids)}
        self._running = np.ones(len(self._ids), bool)  # a stopped turbine sends nothing
        self.started_at: float | None = None  # wall clock of the live start
        self.live = asyncio.Event()  # set when the history is out and live rows begin
        # Every fault as it happens, in wall-clock seconds: the schedule's from the live
        # start on, then those commanded; a clear ends either kind.
        self._injections: list[Injection] = []

    def injections(self) -> list[Injection]:
        """Every fault scheduled or commanded so far, in wall-clock seconds."""
        return sorted(self._injections, key=lambda i: (i.start, i.turbine))

    def inject(self, turbine: int, kind: str, duration: float | None = None) -> None:
        """Start a fault now (by command), for ``duration`` seconds or until cleared."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.farm.inject(turbine, kind, duration)
        now = time.time()
        end = now + duration if duration is not None else float("inf")
        self._injections.append(Injection(self._ids[turbine], kind, now, end))

    def clear(self, turbine: int, kind: str) -> None:
        """End ``turbine``'s ``kind`` fault now (by command), scheduled or commanded."""
        self.farm.clear(turbine, kind)
        now, name = time.time(), self._ids[turbine]
        self._injections = [replace(i, end=now) if (i.turbine, i.kind) == (name, kind)
                            and i.start <= now < i.end else i for i in self._injections]

    # -- the dashboard's controls, by turbine name --------------------------------------

    def turbine_ids(self) -> Collection[str]:
        return self._index.keys()

    def running(self, turbine: str) -> bool:
        return bool(self._running[self._turbine(turbine)])

    def active(self, turbine: str) -> tuple[list[str], list[str]]:
        index = self._turbine(turbine)
        return sorted(self.farm.active_faults(index)), sorted(self.farm.active_drifts(index))

    def set_running(self, turbine: str, running: bool) -> None:
        self._running[self._turbine(turbine)] = running

    def set_fault(self, turbine: str, kind: str, on: bool) -> None:
        index = self._turbine(turbine)
        if not on:
            self.clear(index, kind)
        elif kind not in self.farm.active_faults(index):
            self.inject(index, kind)

    def set_drift(self, turbine: str, kind: str, on: bool) -> None:
        index = self._turbine(turbine)
        if not on:
            self.farm.end_drift(index, kind)
        elif kind not in self.farm.active_drifts(index):
            self.farm.start_drift(index, kind)

    def _turbine(self, turbine: str) -> int:
        index = self._index.get(turbine)
        if index is None:
            raise KeyError(f"no turbine {turbine[:60]!r} in this simulator")
        return index

    def _readings(self, rows: np.ndarray) -> Readings:
        """(ticks, turbines, 23) -> one batch, rows in time order per turbine; the
        stopped turbines' rows left out (they were simulated all the same, so a turbine
        started again goes on as if it had never stopped sending)."""
        ticks = rows.shape[0]
        values = rows.reshape(-1, rows.shape[-1])[:, self._columns]
        if self._running.all():
            return Readings(self._ids * ticks, values)
        keep = np.tile(self._running, ticks)
        ids = [turbine for turbine, kept in zip(self._ids * ticks, keep.tolist(),
                                                strict=True) if kept]
        return Readings(ids, values[keep])

    async def run(self, emit: Emit) -> None:
        remaining = self._history_ticks
        while remaining > 0:
            chunk = min(remaining, _HISTORY_CHUNK_TICKS)
            await emit(self._readings(self.farm.ticks(chunk)))
            remaining -= chunk
        loop = asyncio.get_running_loop()
        self.started_at = started = time.time()
        self._injections = [Injection(self._ids[f.turbine], f.kind, started + f.start,
                                      started + f.end) for f in self.config.faults]
        self.live.set()
        start, done = loop.time(), 0
        period = 1.0 / self.config.rate_hz
        while True:
            # Catch up in one batch if the loop was late, so the data rate stays exact.
            due = int((loop.time() - start) * self.config.rate_hz) + 1 - done
            if due > 0:
                await emit(self._readings(self.farm.ticks(due)))
                done += due
            await asyncio.sleep(max(0.0, start + done * period - loop.time()))


@hookimpl
def edged_component_types() -> list[ComponentType]:
    return [ComponentType("source", "simulator", SimulatorConfig, SimulatorSource,
                          "simulated wind farm with scheduled or commanded faults")]
