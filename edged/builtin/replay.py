"""Source ``replay``: a CSV file in the dataset's 23-column layout, in real time (by the
rows' own ``eventTime``) or as fast as possible."""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import structlog
from pydantic import Field

from edged import hookimpl
from edged.base.errors import RowError
from edged.base.log import RateLimit
from edged.plugin.components import BuildContext, Component, Emit, Readings
from edged.plugin.config import SourceConfig
from edged.plugin.registry import ComponentType
from edged.plugin.rows import ROW_REASONS, RowDecoder, no_numbers
from edged.windturbine.layout import DATASET_COLUMNS

log = structlog.get_logger("edged.replay")
_BATCH_ROWS = 500  # rows per emitted batch when replaying as fast as possible


class ReplayConfig(SourceConfig):
    type: Literal["replay"]
    path: Path = Field(description="CSV file in the dataset's 23-column layout.")
    speed: float | Literal["max"] = Field(
        1.0, description="1.0 replays in real time by eventTime, 2.0 twice as fast; "
        "'max' as fast as the pipeline takes it.",
    )
    loop: bool = Field(False, description="Start again at the end of the file.")
    header: Literal["auto", "yes", "no"] = Field(
        "auto", description="auto: skip the first line if it holds no numbers."
    )


class ReplaySource(Component):
    def __init__(self, config: ReplayConfig, ctx: BuildContext) -> None:
        if not config.path.is_file():
            raise ValueError(f"replay file {config.path} does not exist")
        if isinstance(config.speed, float) and config.speed <= 0:
            raise ValueError("speed must be positive or 'max'")
        self.config = config
        self.name = ctx.name
        self.counters = ctx.counters
        ctx.counters.declare("rows_rejected", {"reason": ROW_REASONS}, source=ctx.name)
        self.decoder = RowDecoder(DATASET_COLUMNS, ctx.inputs, turbine_column="turbineId")
        self._time_index = DATASET_COLUMNS.index("eventTime")
        self._rate_limit = RateLimit()
        self.rows_read = 0

    def _rows(self) -> Iterator[tuple[int, list[str]]]:
        with self.config.path.open(newline="", encoding="utf-8", errors="replace") as handle:
            for number, fields in enumerate(csv.reader(handle), start=1):
                if number == 1 and self._is_header(fields):
                    continue
                yield number, fields

    def _is_header(self, fields: list[str]) -> bool:
        if self.config.header != "auto":
            return self.config.header == "yes"
        return fields[:len(DATASET_COLUMNS)] == list(DATASET_COLUMNS) or no_numbers(fields)

    def _decode(self, number: int, fields: list[str]) -> tuple[str, list[float]] | None:
        try:
            values = self.decoder.from_fields(fields)
            return self.decoder.turbine(fields), values
        except RowError as exc:
            self.counters.inc("rows_rejected", source=self.name, reason=exc.reason)
            suppressed = self._rate_limit.allow(exc.reason)
            if suppressed is not None:
                log.warning("row_rejected", source=self.name, file=str(self.config.path),
                            line=number, reason=exc.reason, detail=exc.detail,
                            suppressed_since_last=suppressed)
            return None

    async def run(self, emit: Emit) -> None:
        while True:
            before = self.rows_read
            if self.config.speed == "max":
                await self._fast(emit)
            else:
                await self._paced(emit, float(self.config.speed))
            if not self.config.loop:
                log.info("replay_finished", source=self.name, rows=self.rows_read)
                return
            if self.rows_read == before:
                # Looping over a file without one good row would spin forever.
                log.error("replay_stopped", source=self.name, file=str(self.config.path),
                          reason="no valid rows in a whole pass")
                return
            await asyncio.sleep(0)

    async def _fast(self, emit: Emit) -> None:
        turbines: list[str] = []
        values: list[list[float]] = []
        for number, fields in self._rows():
            decoded = self._decode(number, fields)
            if decoded is None:
                continue
            turbines.append(decoded[0])
            values.append(decoded[1])
            if len(values) >= _BATCH_ROWS:
                await self._emit(emit, turbines, values)
                turbines, values = [], []
                # emit does not suspend while the queue has room: yield, or a large
                # file holds the loop (ingest included) until it is read.
                await asyncio.sleep(0)
        if values:
            await self._emit(emit, turbines, values)

    async def _paced(self, emit: Emit, speed: float) -> None:
        origin: tuple[float, float] | None = None  # (event time, monotonic) of the first row
        for number, fields in self._rows():
            decoded = self._decode(number, fields)
            if decoded is None:
                continue
            stamp = _event_time(fields[self._time_index])
            if stamp is not None:
                if origin is None:
                    origin = (stamp, time.monotonic())
                delay = origin[1] + (stamp - origin[0]) / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self._emit(emit, [decoded[0]], [decoded[1]])

    async def _emit(self, emit: Emit, turbines: list[str], values: list[list[float]]) -> None:
        self.rows_read += len(values)
        await emit(Readings(tuple(turbines), np.asarray(values, dtype=np.float64)))


def _event_time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


@hookimpl
def edged_component_types() -> list[ComponentType]:
    return [ComponentType("source", "replay", ReplayConfig, ReplaySource,
                          "replay a dataset-layout CSV in real time or as fast as possible")]
