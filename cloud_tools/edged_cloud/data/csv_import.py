"""A CSV in the dataset's 23-column layout -> the prepared form.

Rows are decoded by the device's own row decoder (:class:`edged.plugin.rows.RowDecoder`,
the one the ``replay`` and ``mqtt`` sources use), so a row the device would reject is
rejected here for the same reason. Bounded (docs/limits.md): the file's size, its rows,
a line's length and its columns.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from edged.base.errors import RowError
from edged.plugin.rows import RowDecoder, no_numbers
from edged.windturbine.layout import DATASET_COLUMNS, INPUTS
from edged_cloud.data.dataset import (
    DEFAULT_STRIDE,
    HEALTHY,
    LABELS,
    Dataset,
    Segment,
    build,
    features_of,
)
from edged_cloud.errors import BadInput, NotFound

LABEL_COLUMN = "label"
MAX_FILE_BYTES = 4 << 30
MAX_ROWS = 50_000_000
#: A dataset row is about 250 characters; a field this long is not one.
MAX_FIELD = 4096
MAX_REJECTS_SHOWN = 5


class _Reader:
    """Reads data rows and their labels, naming the line of anything wrong."""

    def __init__(self, path: Path, labels: Path | None, skip_bad: bool) -> None:
        self.path = path
        self.skip_bad = skip_bad
        self.rejected: Counter[str] = Counter()
        self.examples: list[str] = []
        self.decoder = RowDecoder(DATASET_COLUMNS, INPUTS, turbine_column="turbineId")
        self.label_lines = self._sidecar(labels) if labels is not None else None

    def _sidecar(self, path: Path) -> list[str]:
        if not path.is_file():
            raise NotFound(f"{path}: no such labels file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise BadInput(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            lines = [line.strip() for line in handle]
        if lines and lines[0] == LABEL_COLUMN:
            lines = lines[1:]
        for number, label in enumerate(lines, start=2):
            if label not in LABELS:
                raise BadInput(f"{path}, line {number}: unknown label {label!r} "
                               f"(known: {', '.join(LABELS)})")
        return lines

    def fail(self, number: int, reason: str, detail: str) -> None:
        if not self.skip_bad:
            raise BadInput(f"{self.path}, line {number}: {reason}: {detail}")
        self.rejected[reason] += 1
        if len(self.examples) < MAX_REJECTS_SHOWN:
            self.examples.append(f"line {number}: {reason}: {detail}")

    def rows(self) -> tuple[dict[str, list], dict[str, list]]:
        """Per turbine, in file order: input values and labels."""
        values: dict[str, list] = {}
        labels: dict[str, list] = {}
        has_label = False
        data_rows = 0
        csv.field_size_limit(MAX_FIELD)
        with self.path.open(newline="", encoding="utf-8", errors="replace") as handle:
            reader = csv.reader(handle)
            number = 0
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    raise BadInput(f"{self.path}, line {reader.line_num}: not CSV: {exc}") \
                        from None
                number = reader.line_num
                if number == 1 and no_numbers(fields):
                    has_label = self._header(fields)
                    continue
                if not fields:
                    continue
                data_rows += 1
                if data_rows > MAX_ROWS:
                    raise BadInput(f"{self.path}: more than {MAX_ROWS} rows")
                label = self._label(fields, number, data_rows, has_label)
                if label is None:
                    continue
                try:
                    row = self.decoder.from_fields(fields)
                    turbine = self.decoder.turbine(fields)
                except RowError as exc:
                    self.fail(number, exc.reason, exc.detail)
                    continue
                values.setdefault(turbine, []).append(row)
                labels.setdefault(turbine, []).append(label)
        if self.label_lines is not None and data_rows != len(self.label_lines):
            raise BadInput(f"{self.path}: {data_rows} data rows but "
                           f"{len(self.label_lines)} labels")
        if not values:
            more = f" ({sum(self.rejected.values())} rejected)" if self.rejected else ""
            raise BadInput(f"{self.path}: no data rows{more}")
        return values, labels

    def _label(self, fields: list[str], number: int, data_rows: int, has_label: bool
               ) -> str | None:
        """The row's label (popped off ``fields`` when it is a column), or None when the
        row is rejected."""
        label = HEALTHY
        if has_label:
            width = len(DATASET_COLUMNS) + 1
            if len(fields) != width:
                self.fail(number, "wrong_width", f"expected {width} fields, got {len(fields)}")
                return None
            label = fields.pop().strip()
            if label not in LABELS:
                self.fail(number, "bad_label",
                          f"unknown label {label!r} (known: {', '.join(LABELS)})")
                return None
        if self.label_lines is not None:
            if data_rows > len(self.label_lines):
                raise BadInput(f"{self.path}, line {number}: the labels file has only "
                               f"{len(self.label_lines)} labels")
            label = self.label_lines[data_rows - 1]
        return label

    def _header(self, fields: list[str]) -> bool:
        names = [f.strip() for f in fields]
        expected = list(DATASET_COLUMNS)
        if names == expected:
            return False
        if names == [*expected, LABEL_COLUMN]:
            return True
        missing = [c for c in expected if c not in names]
        extra = [c for c in names if c not in expected and c != LABEL_COLUMN]
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing)}")
        if extra:
            detail.append(f"unknown {', '.join(extra)}")
        if not detail:
            detail.append("the columns are out of order")
        raise BadInput(f"{self.path}, line 1: wrong columns ({'; '.join(detail)}): expected "
                       f"the dataset's {len(expected)} columns {', '.join(expected)}"
                       f" (and optionally {LABEL_COLUMN})")


def import_csv(path: Path, *, labels: Path | None = None, skip_bad: bool = False,
               stride: int = DEFAULT_STRIDE, source: str = "import") -> Dataset:
    """Read and validate ``path``; BadInput (with the line) on the first bad row unless
    ``skip_bad``, which counts rejected rows per reason in the dataset's metadata."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise BadInput(f"{path}: empty file")
    if size > MAX_FILE_BYTES:
        raise BadInput(f"{path}: {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
    reader = _Reader(path, labels, skip_bad)
    values, row_labels = reader.rows()
    segments = [Segment(turbine, features_of(np.asarray(rows)),
                        np.asarray(row_labels[turbine], dtype=str))
                for turbine, rows in values.items()]
    return build(segments, stride=stride, source=source, file=str(path),
                 rejected=dict(reader.rejected), rejected_examples=reader.examples)
