"""Turning raw sensor rows (CSV fields, JSON objects) into validated input values.

Shared by every source that reads rows written by someone else (replay files now, the
MQTT bus later): one place decides what a malformed row is, and names the reason it is
counted under.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from edged.errors import RowError

# Reasons a row is rejected; each is a counter label.
WRONG_WIDTH = "wrong_width"
MISSING_FIELD = "missing_field"
NOT_A_NUMBER = "not_a_number"
NOT_FINITE = "not_finite"
NO_TURBINE = "no_turbine"


class RowDecoder:
    """Extracts ``inputs`` (column names, in order) from rows laid out as ``columns``."""

    def __init__(self, columns: Sequence[str], inputs: Sequence[str],
                 turbine_column: str | None = None) -> None:
        missing = [name for name in inputs if name not in columns]
        if missing:
            raise ValueError(f"layout has no column(s) {missing} (columns: {list(columns)})")
        if turbine_column is not None and turbine_column not in columns:
            raise ValueError(f"layout has no turbine column {turbine_column!r}")
        self.columns = tuple(columns)
        self.inputs = tuple(inputs)
        self.width = len(self.columns)
        self._indices = tuple(self.columns.index(name) for name in inputs)
        self._turbine = None if turbine_column is None else self.columns.index(turbine_column)

    def turbine(self, fields: Sequence[str]) -> str:
        if self._turbine is None:
            raise RowError(NO_TURBINE, "this layout has no turbine column")
        name = fields[self._turbine].strip()
        if not name:
            raise RowError(NO_TURBINE, f"empty turbine id in column {self._turbine}")
        return name

    def from_fields(self, fields: Sequence[str | float]) -> list[float]:
        """One CSV-like row (positional fields) -> the input values."""
        if len(fields) != self.width:
            raise RowError(WRONG_WIDTH, f"expected {self.width} fields, got {len(fields)}")
        return [self._number(fields[i], self.columns[i]) for i in self._indices]

    def from_mapping(self, row: Mapping[str, object]) -> list[float]:
        """One JSON-like row (keys are column names) -> the input values."""
        values = []
        for name in self.inputs:
            if name not in row:
                raise RowError(MISSING_FIELD, f"no key {name!r}")
            values.append(self._number(row[name], name))
        return values

    @staticmethod
    def _number(raw: object, name: str) -> float:
        if isinstance(raw, bool) or raw is None or (isinstance(raw, str) and not raw.strip()):
            raise RowError(MISSING_FIELD if raw in (None, "") or isinstance(raw, str)
                           else NOT_A_NUMBER, f"{name} is empty")
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise RowError(NOT_A_NUMBER, f"{name} is not a number: {str(raw)[:40]!r}") from None
        if not math.isfinite(value):
            raise RowError(NOT_FINITE, f"{name} is {value}")
        return value
