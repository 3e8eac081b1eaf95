"""What the ``mqtt`` source reads: topic templates, row layouts, and message -> rows.

Pure functions and small classes, no I/O: testable without a broker. A message is
refused whole (``messages_rejected``) when it is too large, not UTF-8, not JSON (when it
should be), on a topic no template matches, or holds no rows; otherwise each of its rows
is accepted or refused on its own (``rows_rejected``), so one bad row never costs its
neighbours. What a malformed row is, is decided in :mod:`edged.plugin.rows`. Whatever the bytes,
:meth:`MessageParser.parse` returns or raises RowError: JSON is bounded in depth before it
is parsed, and the csv module's own errors are a rejection too.

Message shapes:

* CSV: one row per line (``\\n`` or ``\\r\\n``), fields split on commas; lines with a
  double quote go through the ``csv`` module.
* JSON: an object (one row), an array of objects or of arrays (a batch), an array of
  values (one positional row), or ``{"rows": [...]}`` (a batch; a turbine id given
  beside ``rows`` applies to the rows that lack one).

The common message, CSV rows of the layout on a topic seen before, is read in batches:
:meth:`MessageParser.parse_lines` parses many such messages together (one join, one
split, one numpy conversion) and leaves every other message to :meth:`~MessageParser.parse`,
which decides what it is. A message parse_lines accepts is one parse would accept, with
the same rows (a property test holds it to that).
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
from collections.abc import Mapping, Sequence
from itertools import accumulate, repeat
from typing import Literal

import numpy as np

from edged.base import strict_json
from edged.base.errors import RowError
from edged.plugin.rows import (
    BAD_CSV,
    BAD_JSON,
    EMPTY,
    NO_TURBINE,
    NOT_UTF8,
    TOO_DEEP,
    TOO_LARGE,
    UNKNOWN_TOPIC,
    RowDecoder,
    check_turbine_id,
)
from edged.windturbine.layout import DATASET_COLUMNS, SUCCESSOR_COLUMNS

Format = Literal["auto", "json", "csv"]
LayoutName = Literal["dataset23", "successor20", "custom"]

#: Ready layouts: CSV positions, and (the same names) JSON keys.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "dataset23": DATASET_COLUMNS,  # the recorded dataset's 23 columns
    "successor20": SUCCESSOR_COLUMNS,  # AWS's successor sample: 20 fields on turbine/raw
}
PLACEHOLDER = "{turbine}"
#: Deepest JSON nesting read. Every row shape nests at most 3 deep ({"rows": [{...}]});
#: the rest is room for a gateway's metadata object inside a row.
MAX_JSON_DEPTH = 8
#: Longest topic whose match is cached: ids are at most MAX_TURBINE_ID, so a longer topic
#: is rare, and caching it would let garbage topics hold memory.
MAX_CACHED_TOPIC = 512
_JSON_START = (ord("{"), ord("["))
_SPACE = b" \t\r\n"
_COMMA, _NEWLINE = ord(","), ord("\n")
#: Bytes that make parse read a CSV message other than as plain lines split at \n: a
#: quote (the csv module), \r, and what else str.splitlines splits at.
_NOT_PLAIN = (b'"', b"\r", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e")
#: First bytes of a message that format auto may not read as CSV without a closer look.
_NOT_CSV_START = frozenset((b"", b"{", b"[", *(bytes([c]) for c in _SPACE)))


# -- topics -----------------------------------------------------------------------------


def check_template(template: str) -> str:
    """Validate one topic template; ValueError says what is wrong."""
    if not template:
        raise ValueError("a topic template must not be empty")
    levels = template.split("/")
    if template.count(PLACEHOLDER) > 1:
        raise ValueError(f"{template!r}: {PLACEHOLDER} may appear once")
    for i, level in enumerate(levels):
        if PLACEHOLDER in level and level != PLACEHOLDER:
            raise ValueError(f"{template!r}: {PLACEHOLDER} must be a whole topic level, "
                             f"like turbines/{PLACEHOLDER}/raw")
        if level != PLACEHOLDER and ("{" in level or "}" in level):
            raise ValueError(f"{template!r}: the only placeholder is {PLACEHOLDER}")
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            raise ValueError(f"{template!r}: + and # must be whole topic levels")
        if level == "#" and i != len(levels) - 1:
            raise ValueError(f"{template!r}: # may only be the last level")
    return template


class TopicRouter:
    """Topic templates -> subscriptions, and a message's topic -> its turbine id.

    ``{turbine}`` is subscribed as ``+`` and its level is the turbine id; ``+`` and ``#``
    in a template match without capturing. :meth:`turbine` returns None for a topic of
    a template without ``{turbine}`` (the row or the config names the turbine then).
    A captured id must pass :func:`edged.plugin.rows.check_turbine_id` (``pattern``: the
    source's ``turbine_pattern``). Topics seen before cost one dict lookup.
    """

    _NONE = ""  # cached result for "matches a template without {turbine}"

    def __init__(self, templates: Sequence[str], cache_size: int = 20_000,
                 pattern: re.Pattern[str] | None = None) -> None:
        if not templates:
            raise ValueError("at least one topic template is needed")
        self.templates = tuple(check_template(t) for t in templates)
        self.subscriptions = tuple(dict.fromkeys(
            t.replace(PLACEHOLDER, "+") for t in self.templates))
        self._patterns = [t.split("/") for t in self.templates]
        self.has_placeholder = tuple(PLACEHOLDER in t for t in self.templates)
        self._cache: dict[str, str] = {}
        self._cache_size = cache_size
        self.pattern = pattern

    def turbine(self, topic: str) -> str | None:
        """The turbine id in ``topic``, None if its template has none; RowError
        (``unknown_topic``, ``bad_turbine_id``, ``turbine_not_allowed``) otherwise.
        Refused topics are never cached."""
        found = self._cache.get(topic)
        if found is None:
            found = self._match(topic)
            if len(topic) <= MAX_CACHED_TOPIC:
                if len(self._cache) >= self._cache_size:
                    self._cache.clear()  # topics churn (ids from garbage): start over
                self._cache[topic] = found
        return found or None

    def known(self, topics: Sequence[str], fixed: str | None = None) -> list[str | None]:
        """The turbine id of each topic already matched by :meth:`turbine` (``fixed``
        for a template without ``{turbine}``, when given), None for any other: a topic
        not seen yet, or one whose rows name their turbine."""
        found = list(map(self._cache.get, topics))
        if "" in found:
            found = [fixed or None if name == "" else name for name in found]
        return found

    def _match(self, topic: str) -> str:
        levels = topic.split("/")
        for pattern in self._patterns:
            found = _match_levels(pattern, levels)
            if found:
                return check_turbine_id(found, "the topic", self.pattern)
            if found is not None:
                return found
        raise RowError(UNKNOWN_TOPIC, f"topic {topic[:100]!r} matches none of "
                       f"{list(self.templates)}")


def _match_levels(pattern: list[str], levels: list[str]) -> str | None:
    """The captured turbine id ('' if none) when ``levels`` match ``pattern``, else None."""
    captured = ""
    if pattern[-1] == "#":
        if len(levels) < len(pattern) - 1:
            return None
        pattern = pattern[:-1]
        levels = levels[:len(pattern)]
    elif len(levels) != len(pattern):
        return None
    for want, level in zip(pattern, levels, strict=True):
        if want == PLACEHOLDER:
            if not level:
                return None
            captured = level
        elif want not in ("+", level):
            return None
    return captured


# -- layouts ----------------------------------------------------------------------------


def make_decoder(layout: LayoutName, inputs: Sequence[str], *,
                 columns: Sequence[str] | None = None,
                 keys: Mapping[str, str] | None = None,
                 turbine_field: str | None = None,
                 turbine_pattern: re.Pattern[str] | None = None) -> RowDecoder:
    """The row decoder of a preset or custom layout.

    ``columns`` (custom only) are CSV positions, ``keys`` map an input to its JSON key
    (default: the input's own name). ``turbine_field`` is the turbine id's column (for
    positional rows, when the layout has it) and its JSON key; ids read from it must
    match ``turbine_pattern`` whole, when given.
    """
    if layout == "custom":
        if not columns and not keys:
            raise ValueError("layout custom needs columns (CSV positions) and/or keys "
                             "(JSON keys)")
        positions = tuple(columns or ())
    else:
        if columns:
            raise ValueError(f"columns are only for layout custom (layout {layout} has "
                             "its own)")
        positions = LAYOUTS[layout]
    return RowDecoder(
        positions, inputs,
        turbine_column=turbine_field if turbine_field in positions else None,
        keys=keys, turbine_key=turbine_field, turbine_pattern=turbine_pattern,
    )


# -- messages ---------------------------------------------------------------------------


class MessageParser:
    """Turns one message into rows: see the module docstring.

    ``turbine``, when given, is the id of rows whose topic and fields name none.
    """

    def __init__(self, decoder: RowDecoder, router: TopicRouter, *, fmt: Format = "auto",
                 max_bytes: int = 65536, turbine: str | None = None) -> None:
        self.decoder = decoder
        self.router = router
        self.format = fmt
        self.max_bytes = max_bytes
        self.turbine = turbine
        # A JSON object is a batch when it has "rows" and "rows" is not a row's own key.
        self._rows_key = "rows" not in decoder.keys
        # parse_lines: positions of the inputs in a row, whose ids come from the topic.
        self._lines = fmt != "json" and decoder.width > 0
        self._pick = np.array([decoder.columns.index(name) for name in decoder.inputs]
                              if decoder.width else [], dtype=np.intp)

    def parse(self, topic: str, payload: bytes, turbines: list[str],
              values: list[list[float]], rejected: list[RowError]) -> int:
        """Append the message's good rows to ``turbines`` and ``values`` and the errors
        of its bad rows to ``rejected``; return the rows appended. A message refused whole
        raises RowError (``too_large``, ``unknown_topic``, ``bad_turbine_id``,
        ``turbine_not_allowed``, ``not_utf8``, ``too_deep``, ``bad_json``, ``bad_csv``,
        ``empty``, ``no_turbine``)."""
        if len(payload) > self.max_bytes:
            raise RowError(TOO_LARGE, f"{len(payload)} bytes > max_message_bytes "
                           f"{self.max_bytes}")
        turbine = self.router.turbine(topic)
        fmt = self.format
        if fmt == "auto":
            first = payload[0] if payload else 0
            if first in _SPACE:
                stripped = payload.lstrip()
                first = stripped[0] if stripped else 0
            fmt = "json" if first in _JSON_START else "csv"
        try:
            text = payload.decode()
        except UnicodeDecodeError as exc:
            raise RowError(NOT_UTF8, f"byte {exc.start} is not UTF-8") from None
        before = len(values)
        if fmt == "csv":
            self._csv(text, turbine, turbines, values, rejected)
        else:
            self._json(text, turbine, turbines, values, rejected)
        return len(values) - before

    def parse_lines(self, topics: Sequence[str], payloads: Sequence[bytes]
                    ) -> tuple[list[int], list[str], np.ndarray, list[int]]:
        """Parse together the messages that are plain CSV rows: ``(rest, turbines,
        values, ends)``. ``rest`` lists (in order) the indices of the messages left for
        :meth:`parse`; ``turbines`` and ``values`` (float64, the inputs in order) are the
        rows of every other message, in order, and message ``i``'s rows end at row
        ``ends[i]`` (a message left to parse adds none).

        A message is taken here when its turbine is known from its topic (a topic seen
        before, or the source's fixed ``turbine``), it is ASCII, within ``max_bytes``, not
        JSON, every line (``\\n`` between them, none at the end, none blank) has exactly the
        layout's fields, with no quote, ``\\r`` or other line break, and every input is a
        finite number;
        anything else (and every message of a layout read from JSON only) is left to
        :meth:`parse`, which accepts or refuses it under its reason.
        """
        count = len(payloads)
        if not self._lines or not count:
            return list(range(count)), [], np.zeros((0, len(self.decoder.inputs))), \
                [0] * count
        ids = self.router.known(topics, self.turbine)
        commas = map(bytes.count, payloads, repeat(b","))
        breaks = list(map(bytes.count, payloads, repeat(b"\n")))
        fields, most = self.decoder.width - 1, self.max_bytes
        # Format auto reads JSON from { or [, and looks past leading white space first.
        starts = _NOT_CSV_START if self.format == "auto" else (b"",)
        rows = [lines + 1 if name is not None and found == (lines + 1) * fields
                and 0 < len(payload) <= most and payload[:1] not in starts else 0
                for name, found, lines, payload in zip(ids, commas, breaks, payloads,
                                                        strict=True)]
        take = [i for i in range(count) if rows[i]]
        chosen = payloads if len(take) == count else [payloads[i] for i in take]
        blob = b"\n".join(chosen)
        if not (blob.isascii() and not any(c in blob for c in _NOT_PLAIN)
                and (not any(breaks) or self._aligned(blob))):
            # Something is spoiled somewhere: look at each message alone.
            keep = [self._plain(payload) for payload in chosen]
            take = [i for i, ok in zip(take, keep, strict=True) if ok]
            blob = b"\n".join(payload for payload, ok in zip(chosen, keep, strict=True)
                              if ok)
        per_message = [rows[i] for i in take]
        values = self._numbers(blob, sum(per_message))
        good = np.isfinite(values).all(axis=1)
        if not good.all():
            # A message with a row parse would refuse is parse's, every row of it.
            owner = np.repeat(np.arange(len(take)), per_message)
            spoiled = np.zeros(len(take), dtype=bool)
            spoiled[owner[~good]] = True
            values = values[~spoiled[owner]]
            take = [i for i, bad in zip(take, spoiled.tolist(), strict=True) if not bad]
        taken = set(take)
        if len(take) == count and not any(breaks):
            return [], ids, values, list(range(1, count + 1))  # type: ignore[return-value]
        rows = [rows[i] if i in taken else 0 for i in range(count)]
        return ([i for i in range(count) if i not in taken],
                [ids[i] for i in take for _ in range(rows[i])],  # type: ignore[misc]
                values, list(accumulate(rows)))

    def _aligned(self, blob: bytes) -> bool:
        """Whether every line of ``blob`` has exactly the layout's fields (the
        messages' comma counts say only that each message has the right total)."""
        width = self.decoder.width
        raw = np.frombuffer(blob, dtype=np.uint8)
        separators = np.flatnonzero((raw == _COMMA) | (raw == _NEWLINE))
        return bool((raw[separators[width - 1::width]] == _NEWLINE).all())

    def _plain(self, payload: bytes) -> bool:
        """One message alone: ASCII, plain lines, each with the layout's fields."""
        if not payload.isascii() or any(c in payload for c in _NOT_PLAIN):
            return False
        fields = self.decoder.width - 1
        return all(line.count(b",") == fields for line in payload.split(b"\n"))

    def _numbers(self, blob: bytes, rows: int) -> np.ndarray:
        """The inputs of ``rows`` CSV lines (``\\n`` between them) as floats, exactly as
        Python's float() reads each field; NaN where a row has any field that is no
        number."""
        if not rows:
            return np.zeros((0, len(self.decoder.inputs)))
        with contextlib.suppress(ValueError):
            # numpy's C reader converts the input columns alone, no Python object per
            # field: three times as fast. Its numbers are float()'s (CPython's own
            # string-to-double, whitespace stripped alike); what float() reads and it
            # does not (1_000, non-ASCII digits) fails the whole call and is read below.
            values = np.loadtxt(io.BytesIO(blob), dtype=np.float64, delimiter=",",
                                usecols=self._pick, comments=None, quotechar=None,
                                ndmin=2, encoding=None)
            if values.shape == (rows, len(self._pick)):
                return values
        fields = blob.replace(b"\n", b",").split(b",")
        table = np.array(fields, dtype=object).reshape(rows, self.decoder.width)
        picked = table[:, self._pick]
        try:
            return picked.astype(np.float64)
        except (ValueError, TypeError, OverflowError):
            pass
        # One bad field spoils the conversion of all: convert halves, down to the rows
        # that fail, which are left to parse (NaN is not finite).
        out = np.empty(picked.shape)
        stack = [(0, rows)]
        while stack:
            lo, hi = stack.pop()
            try:
                out[lo:hi] = picked[lo:hi].astype(np.float64)
            except (ValueError, TypeError, OverflowError):
                if hi - lo == 1:
                    out[lo] = np.nan
                else:
                    mid = (lo + hi) // 2
                    stack += [(lo, mid), (mid, hi)]
        return out

    # -- CSV ----------------------------------------------------------------------------

    def _csv(self, text: str, turbine: str | None, turbines: list[str],
             values: list[list[float]], rejected: list[RowError]) -> None:
        if "\n" in text or "\r" in text:
            lines = [line for line in text.splitlines() if line.strip()]
        else:
            lines = [text] if text.strip() else []
        if not lines:
            raise RowError(EMPTY, "no rows in the message")
        rows = _quoted(lines) if '"' in text else (line.split(",") for line in lines)
        decoder = self.decoder
        fixed = turbine if turbine is not None else self.turbine
        for fields in rows:
            try:
                row = decoder.from_fields(fields)
                name = fixed if fixed is not None else decoder.turbine(fields)
            except RowError as exc:
                rejected.append(exc)
                continue
            turbines.append(name)
            values.append(row)

    # -- JSON ---------------------------------------------------------------------------

    def _json(self, text: str, turbine: str | None, turbines: list[str],
              values: list[list[float]], rejected: list[RowError]) -> None:
        try:
            # Rows may repeat a key (the last wins): a sensor's keys carry no trust.
            data = strict_json.loads(text, max_bytes=self.max_bytes,
                                     max_depth=MAX_JSON_DEPTH, repeated_keys=True)
        except strict_json.TooDeep as exc:
            raise RowError(TOO_DEEP, str(exc)) from None
        except strict_json.JsonError as exc:
            raise RowError(BAD_JSON, str(exc)[:100]) from None
        fallback = self.turbine
        if isinstance(data, dict):
            batch = data.get("rows") if self._rows_key else None
            if isinstance(batch, list):
                rows = batch
                if turbine is None and self.decoder.turbine_key in data:
                    # A bad id beside the rows refuses the message, under its reason.
                    fallback = self.decoder.turbine_id(data[self.decoder.turbine_key],
                                                       "the batch")
            else:
                rows = [data]
        elif isinstance(data, list):
            # An array of values is one positional row; of objects or arrays, a batch.
            rows = data if data and isinstance(data[0], dict | list) else [data]
        else:
            raise RowError(BAD_JSON, f"expected an object or an array, got "
                           f"{type(data).__name__}")
        if not rows or rows == [[]]:
            raise RowError(EMPTY, "no rows in the message")
        decoder = self.decoder
        for row in rows:
            try:
                if isinstance(row, dict):
                    found = decoder.from_mapping(row)
                    name = turbine if turbine is not None else self._row_turbine(
                        row, fallback)
                elif isinstance(row, list):
                    found = decoder.from_fields(row)
                    name = turbine if turbine is not None else (
                        fallback if decoder.turbine_column is None else decoder.turbine(row))
                else:
                    raise RowError(BAD_JSON, f"a row must be an object or an array, got "
                                   f"{type(row).__name__}")
                if name is None:
                    raise RowError(NO_TURBINE, "neither the topic nor the row names "
                                   "the turbine")
            except RowError as exc:
                rejected.append(exc)
                continue
            turbines.append(name)
            values.append(found)

    def _row_turbine(self, row: dict, fallback: str | None) -> str | None:
        key = self.decoder.turbine_key
        if key is not None and key in row:
            return self.decoder.turbine_id(row[key], f"key {key!r}")
        return fallback


def _quoted(lines: list[str]) -> list[list[str]]:
    """CSV lines with quotes, read whole before any row is kept: the csv module may
    refuse a line (a field over its size limit) halfway through a message."""
    try:
        return list(csv.reader(lines))
    except csv.Error as exc:
        raise RowError(BAD_CSV, str(exc)[:100]) from None
