"""An example sensor source: source type ``csv_rows`` reads turbine rows from a CSV file.

The file has a header: a ``turbine`` column and one column per raw input, named as the
pipeline's preprocessor names them (for wind turbines, ``edged.windturbine.layout.INPUTS``);
extra columns are ignored. Each row goes to the pipeline as one reading, ``interval_s``
apart. A row that is not one is skipped and counted as the built-in sources count it,
by the reason edged's row decoder (``edged.plugin.rows.RowDecoder``) gives
(``rows_rejected{source=NAME,reason=not_a_number}``, ``wrong_width``, ``missing_field``,
``not_finite``, ``no_turbine``...). The source ends at the end of the file, or starts
again with ``loop: true``.

A source is the simplest component: ``run(emit)`` hands ``Readings`` to ``emit`` until it
is cancelled or has nothing more; ``emit`` applies the pipeline queue's overflow policy.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edged.plugin import (
    BuildContext,
    Component,
    ComponentType,
    Emit,
    Readings,
    RowError,
    SourceConfig,
    hookimpl,
)
from edged.plugin.rows import RowDecoder

TURBINE = "turbine"


class CsvRowsConfig(SourceConfig):
    """Config of the ``csv_rows`` source (SourceConfig brings ``on_start_failure``)."""

    type: Literal["csv_rows"]
    path: Path = Field(description="CSV file: a header with a `turbine` column and one "
                                   "column per raw input.")
    interval_s: float = Field(0.0, ge=0, description="Pause between two rows; 0: as fast "
                                                     "as the pipeline takes them.")
    loop: bool = Field(False, description="Start again at the end of the file.")


class CsvRowsSource(Component):
    def __init__(self, config: CsvRowsConfig, ctx: BuildContext) -> None:
        # A factory may read and check files, but starts nothing: check-config and a
        # reload build every component without side effects.
        header = _header(config.path)
        missing = [name for name in (TURBINE, *ctx.inputs) if name not in header]
        if missing:
            raise ValueError(f"{config.path} has no column {', '.join(missing)}")
        # Without a pipeline asking (a test building it alone), every other column.
        inputs = ctx.inputs or tuple(name for name in header if name != TURBINE)
        self.config = config
        self.name = ctx.name
        self.counters = ctx.counters
        # Picks the inputs out of a row laid out as the header says, and names the reason
        # a row is refused (the counter label), as the replay and mqtt sources do.
        self.decoder = RowDecoder(header, inputs, turbine_column=TURBINE)

    async def run(self, emit: Emit) -> None:
        while True:
            emitted = 0
            for turbine, values in self._rows():
                await emit(Readings((turbine,), np.asarray([values], dtype=np.float64)))
                emitted += 1
                # emit does not suspend while the queue has room: yield to the loop.
                await asyncio.sleep(self.config.interval_s)
            if not self.config.loop or not emitted:  # a file without one good row would spin
                return

    def _rows(self) -> Iterator[tuple[str, list[float]]]:
        # Read as it goes: a large file never sits in memory. Reading a line is short
        # next to interval_s; a real source on a slow disk would read in a thread.
        with self.config.path.open(newline="", encoding="utf-8", errors="replace") as file:
            reader = csv.reader(file)
            next(reader, None)  # the header
            for fields in reader:
                try:
                    yield self.decoder.turbine(fields), self.decoder.from_fields(fields)
                except RowError as exc:
                    self.counters.inc("rows_rejected", source=self.name, reason=exc.reason)


def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as file:
            return [name.strip() for name in next(csv.reader(file), [])]
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None


@hookimpl
def edged_component_types() -> list[ComponentType]:
    return [ComponentType.source("csv_rows", CsvRowsConfig, CsvRowsSource,
                                 "turbine rows from a CSV file with a header")]
