"""Turning raw sensor rows (CSV fields, JSON objects) into validated input values.

Shared by every source that reads rows written by someone else (replay files, the MQTT
bus): one place decides what a malformed row is, and names the reason it is counted
under. Row reasons are counted per row (``rows_rejected``); message reasons per message
(``messages_rejected``), when a whole message is refused before its rows are looked at.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter

from edged.base.errors import RowError

# Reasons a row is rejected; each is a counter label.
WRONG_WIDTH = "wrong_width"
MISSING_FIELD = "missing_field"
NOT_A_NUMBER = "not_a_number"
NOT_FINITE = "not_finite"
NO_TURBINE = "no_turbine"
BAD_JSON = "bad_json"  # also a row reason: a JSON row that is neither object nor array
# Also message reasons, for an id taken from the topic:
BAD_TURBINE_ID = "bad_turbine_id"  # longer than MAX_TURBINE_ID
TURBINE_NOT_ALLOWED = "turbine_not_allowed"  # not matched by the source's turbine_pattern

# Reasons a whole message is rejected.
TOO_LARGE = "too_large"
NOT_UTF8 = "not_utf8"
TOO_DEEP = "too_deep"  # JSON nested deeper than any row layout
BAD_CSV = "bad_csv"  # what the csv module refuses (a field over its size limit)
UNKNOWN_TOPIC = "unknown_topic"
EMPTY = "empty"

ROW_REASONS = (WRONG_WIDTH, MISSING_FIELD, NOT_A_NUMBER, NOT_FINITE, NO_TURBINE, BAD_JSON,
               BAD_TURBINE_ID, TURBINE_NOT_ALLOWED)
MESSAGE_REASONS = (TOO_LARGE, NOT_UTF8, BAD_JSON, TOO_DEEP, BAD_CSV, UNKNOWN_TOPIC, EMPTY,
                   NO_TURBINE, BAD_TURBINE_ID, TURBINE_NOT_ALLOWED)

MAX_TURBINE_ID = 128  # characters; longer ids are garbage, not turbines
_INT_ID_LIMIT = 10 ** MAX_TURBINE_ID  # integer ids this large have too many digits


def _getter(keys: Sequence) -> Callable[[object], tuple]:
    """Picks ``keys`` out of a row as a tuple, in C (itemgetter), even for one key."""
    if len(keys) == 1:
        single = keys[0]
        return lambda row: (row[single],)  # type: ignore[index]
    if not keys:
        return lambda row: ()
    return itemgetter(*keys)


class RowDecoder:
    """Extracts ``inputs`` (column names, in order) from rows.

    Positional rows (CSV fields, JSON arrays) are laid out as ``columns``; keyed rows
    (JSON objects) carry input ``name`` under ``keys.get(name, name)``. ``columns`` may be
    empty for a layout that only has keyed rows. The turbine id is the field
    ``turbine_column`` of a positional row, or the key ``turbine_key`` (default: the same
    name) of a keyed row.

    The common case, a row that is fine, takes one pass in C; only a row that fails it
    is looked at field by field, to name the reason.
    """

    def __init__(self, columns: Sequence[str], inputs: Sequence[str],
                 turbine_column: str | None = None, *,
                 keys: Mapping[str, str] | None = None,
                 turbine_key: str | None = None,
                 turbine_pattern: re.Pattern[str] | None = None) -> None:
        missing = [name for name in inputs if name not in columns]
        if columns and missing:
            raise ValueError(f"layout has no column(s) {missing} (columns: {list(columns)})")
        if turbine_column is not None and turbine_column not in columns:
            raise ValueError(f"layout has no turbine column {turbine_column!r}")
        unknown = sorted(set(keys or ()) - set(inputs))
        if unknown:
            raise ValueError(f"keys given for {unknown}, which are not inputs "
                             f"(inputs: {list(inputs)})")
        self.columns = tuple(columns)
        self.inputs = tuple(inputs)
        self.width = len(self.columns)
        self.keys = tuple((keys or {}).get(name, name) for name in self.inputs)
        self.turbine_column = turbine_column
        self.turbine_key = turbine_key if turbine_key is not None else turbine_column
        self.turbine_pattern = turbine_pattern
        self._indices = tuple(self.columns.index(name) for name in inputs) if columns else ()
        self._turbine = None if turbine_column is None else self.columns.index(turbine_column)
        self._pick_fields = _getter(self._indices)
        self._pick_keys = _getter(self.keys)

    # -- turbine ids ------------------------------------------------------------------------

    def turbine(self, fields: Sequence[object]) -> str:
        """The turbine id of a positional row."""
        if self._turbine is None:
            raise RowError(NO_TURBINE, "this layout has no turbine column")
        if len(fields) <= self._turbine:
            raise RowError(WRONG_WIDTH, f"expected {self.width} fields, got {len(fields)}")
        return self.turbine_id(fields[self._turbine], f"column {self._turbine}")

    def turbine_id(self, raw: object, where: str) -> str:
        """A turbine id read from a row: see :func:`turbine_id`, under this layout's
        ``turbine_pattern``."""
        return turbine_id(raw, where, self.turbine_pattern)

    # -- values ----------------------------------------------------------------------------

    def from_fields(self, fields: Sequence[object]) -> list[float]:
        """One positional row (CSV fields, a JSON array) -> the input values."""
        if len(fields) != self.width:
            if not self.width:
                raise RowError(WRONG_WIDTH, "this layout has no positional columns "
                               "(configure columns, or send JSON objects)")
            raise RowError(WRONG_WIDTH, f"expected {self.width} fields, got {len(fields)}")
        raw = self._pick_fields(fields)
        try:
            values = list(map(float, raw))
        except (TypeError, ValueError, OverflowError):
            values = None
        # float() takes booleans (JSON true) and any finite sum says every value is finite;
        # `True in raw` is also true for a 1.0, which the careful pass then accepts.
        if values is None or not math.isfinite(sum(values)) or True in raw or False in raw:
            return [self._number(fields[i], self.columns[i]) for i in self._indices]
        return values

    def from_mapping(self, row: Mapping[str, object]) -> list[float]:
        """One keyed row (a JSON object) -> the input values."""
        try:
            raw = self._pick_keys(row)
            values = list(map(float, raw))
        except (KeyError, TypeError, ValueError, OverflowError):
            values = None
        if values is None or not math.isfinite(sum(values)) or True in raw or False in raw:
            return self._careful_mapping(row)
        return values

    def _careful_mapping(self, row: Mapping[str, object]) -> list[float]:
        values = []
        for key in self.keys:
            if key not in row:
                raise RowError(MISSING_FIELD, f"no key {key!r}")
            values.append(self._number(row[key], key))
        return values

    @staticmethod
    def _number(raw: object, name: str) -> float:
        if isinstance(raw, bool) or raw is None or (isinstance(raw, str) and not raw.strip()):
            raise RowError(MISSING_FIELD if raw in (None, "") or isinstance(raw, str)
                           else NOT_A_NUMBER, f"{name} is empty")
        try:
            value = float(raw)  # type: ignore[arg-type]
        except OverflowError:  # an integer beyond float's range
            raise RowError(NOT_FINITE, f"{name} is out of range") from None
        except (TypeError, ValueError):
            raise RowError(NOT_A_NUMBER, f"{name} is not a number: {show(raw)}") from None
        if not math.isfinite(value):
            raise RowError(NOT_FINITE, f"{name} is {value}")
        return value


def no_numbers(fields: Sequence[str]) -> bool:
    """Whether no field of a CSV line reads as a number: how a header line is told from a
    row of readings when the file does not say whether it has one."""
    for field in fields:
        try:
            float(field)
        except ValueError:
            continue
        return False
    return True


def turbine_id(raw: object, where: str, pattern: re.Pattern[str] | None = None) -> str:
    """A turbine id from a row field: a non-empty string (stripped) or an integer, then
    :func:`check_turbine_id`."""
    if isinstance(raw, str):
        name = raw.strip()
    elif isinstance(raw, int) and not isinstance(raw, bool):
        if abs(raw) >= _INT_ID_LIMIT:  # checked before str(), whose cost grows with digits
            raise RowError(BAD_TURBINE_ID, f"turbine id in {where} is longer than "
                           f"{MAX_TURBINE_ID} characters")
        name = str(raw)
    else:
        raise RowError(NO_TURBINE, f"turbine id in {where} is not a string: {show(raw)}")
    if not name:
        raise RowError(NO_TURBINE, f"empty turbine id in {where}")
    return check_turbine_id(name, where, pattern)


def check_turbine_id(name: str, where: str, pattern: re.Pattern[str] | None = None) -> str:
    """``name`` if it may name a turbine: at most MAX_TURBINE_ID characters (every id
    claims a buffer slot and appears in logs, events and topics) and, with ``pattern``,
    matched by it whole. RowError (``bad_turbine_id``, ``turbine_not_allowed``) else."""
    if len(name) > MAX_TURBINE_ID:
        raise RowError(BAD_TURBINE_ID, f"turbine id in {where} is {len(name)} characters, "
                       f"over {MAX_TURBINE_ID}: {show(name)}")
    if pattern is not None and pattern.fullmatch(name) is None:
        raise RowError(TURBINE_NOT_ALLOWED, f"turbine id {show(name)} in {where} does not "
                       f"match turbine_pattern {pattern.pattern!r}")
    return name


def show(raw: object, limit: int = 40) -> str:
    """``raw`` for a log line: a short repr of a scalar, the type of anything else (a
    message's nested arrays are never turned into text)."""
    if isinstance(raw, str):
        return repr(raw[:limit]) + ("..." if len(raw) > limit else "")
    if isinstance(raw, float | bool) or raw is None:
        return repr(raw)
    if isinstance(raw, int):
        return "a large integer" if abs(raw) >= 10 ** limit else repr(raw)
    kind = {dict: "object", list: "array"}.get(type(raw), type(raw).__name__)
    return f"a JSON {kind}"
