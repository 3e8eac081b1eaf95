"""Hourly sketches of what a pipeline's model sees: per pipeline x model version x UTC
hour, histograms of the model's inputs and of each decision's score / threshold, decision
and anomaly counts, stale time. One small ``sketch`` record (docs/capture.md) per key,
written through the pipeline's capture spool: final at the hour's end, partial (final:
false) earlier on shutdown or a version change, superseded by a later one with the same key.

The decision path pays one vectorised update per round (``np.searchsorted`` and one
``np.bincount`` on the whole round's arrays); nothing here loops over turbines in Python
but the set of turbine names. The open hour is also kept beside the spool
(``sketches.json``) each time a partial is written, so a restart continues the hour
instead of superseding it with what came after.
"""

from __future__ import annotations

import contextlib
import math
import operator
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from edged.plugin.events import Event, Round

SKETCH_SCHEMA = 1
HOUR_S = 3600.0
#: Bin edges when the model's manifest has no ``monitoring`` section (z units: the model's
#: inputs are normalised by the training mean and std).
DEFAULT_INPUT_EDGES = tuple(float(x) for x in np.arange(-4.0, 4.25, 0.5))
DEFAULT_ERROR_EDGES = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 100.0)
#: Edges a manifest may give at most (each list): a record stays a few kilobytes.
MAX_EDGES = 256
#: Rows of each feature histogrammed per decision when the preprocessor names no ``step``.
DEFAULT_STEP = 10
#: Beside the spool: the open hour's sketches, for a restart to continue them.
STATE_FILE = "sketches.json"
MAX_STATE_BYTES = 4 * 1024 * 1024


def _numbers(value: Any, where: str) -> np.ndarray:
    """A list of JSON numbers (not booleans, not strings) as floats; ValueError naming
    ``where`` otherwise (an integer too large for a float included)."""
    if not isinstance(value, list) or not all(type(x) in (int, float) for x in value):
        raise ValueError(f"{where}: expected a list of numbers")
    try:
        return np.asarray(value, dtype=np.float64)
    except OverflowError:
        raise ValueError(f"{where}: a number too large") from None


def _edges(value: Any, where: str) -> np.ndarray:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_EDGES:
        raise ValueError(f"{where}: expected a list of 1 to {MAX_EDGES} numbers")
    edges = _numbers(value, where)
    if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"{where}: edges must be finite and strictly increasing")
    return edges


@dataclass(frozen=True, eq=False)
class Bins:
    """The edges every device of a model version shares, and the training distribution
    (``expected_input``: per feature, proportions over the input bins) when known."""

    input_edges: np.ndarray = field(
        default_factory=lambda: np.asarray(DEFAULT_INPUT_EDGES))
    error_edges: np.ndarray = field(
        default_factory=lambda: np.asarray(DEFAULT_ERROR_EDGES))
    expected: np.ndarray | None = None

    @classmethod
    def from_manifest(cls, manifest: dict | None, features: int) -> Bins:
        """The manifest's ``monitoring`` section, else the defaults; ValueError names
        what is wrong with a section that is there."""
        section = (manifest or {}).get("monitoring")
        if section is None:
            return cls()
        if not isinstance(section, dict):
            raise ValueError("monitoring: expected a mapping")
        bins = cls(
            _edges(section["input_edges"], "monitoring.input_edges")
            if "input_edges" in section else np.asarray(DEFAULT_INPUT_EDGES),
            _edges(section["error_edges"], "monitoring.error_edges")
            if "error_edges" in section else np.asarray(DEFAULT_ERROR_EDGES))
        expected = section.get("expected_input")
        if expected is None:
            return bins
        if not isinstance(expected, list):
            raise ValueError("monitoring.expected_input: not a table of numbers")
        rows = [_numbers(row, f"monitoring.expected_input[{i}]")
                for i, row in enumerate(expected)]
        shape = (features, len(bins.input_edges) + 1)
        if len(rows) != shape[0] or any(len(row) != shape[1] for row in rows):
            raise ValueError(f"monitoring.expected_input: expected {shape[0]} rows of "
                             f"{shape[1]} proportions")
        table = np.asarray(rows).reshape(shape)
        if table.shape != shape or not np.all(np.isfinite(table)) or np.any(table < 0):
            raise ValueError(f"monitoring.expected_input: expected {shape[0]} rows of "
                             f"{shape[1]} proportions, got shape {table.shape}")
        return cls(bins.input_edges, bins.error_edges, table)


def psi(counts: np.ndarray, expected: np.ndarray, floor: float = 1e-4) -> np.ndarray:
    """Population stability index of each row of ``counts`` against the proportions of
    ``expected`` (same shape): sum((a - e) ln(a / e)), both floored at ``floor`` so an
    empty bin counts without dividing by zero. NaN for a row without counts."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        actual = np.maximum(counts / totals, floor)
        exp = np.asarray(expected, dtype=np.float64)
        exp = np.maximum(exp / exp.sum(axis=-1, keepdims=True), floor)
        return np.where(totals[..., 0] > 0, ((actual - exp) * np.log(actual / exp)).sum(-1),
                        np.nan)


def hour_of(when: float) -> float:
    return math.floor(when / HOUR_S) * HOUR_S


@dataclass(eq=False)
class HourSketch:
    """One key's accumulators: a model version's decisions in one UTC hour."""

    model_name: str
    model_version: int
    period_start: float
    features: tuple[str, ...]
    groups: tuple[str, ...]
    bins: Bins
    bundle_sha256: str | None = None
    decisions: int = 0
    anomalous: int = 0
    turbines: set[str] = field(default_factory=set)
    stale_s: float = 0.0
    thresholds: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        f = len(self.features)
        self.group_counts = np.zeros(len(self.groups), dtype=np.int64)
        self.input_counts = np.zeros((f, len(self.bins.input_edges) + 1), dtype=np.int64)
        self.error_counts = np.zeros((f, len(self.bins.error_edges) + 1), dtype=np.int64)

    def add(self, round: Round, inputs: np.ndarray | None) -> None:
        """One round's decisions (``round.values`` etc. as arrays); ``inputs``: the
        model-input values histogrammed, (decisions, features, rows), or None."""
        values, flags = round.values, round.anomalous
        thresholds = np.asarray(round.thresholds, dtype=np.float64)
        self.thresholds = tuple(round.thresholds)
        self.decisions += len(values)
        self.turbines.update(map(operator.attrgetter("turbine"), round.decisions))
        if flags is not None:
            self.anomalous += int(flags.any(axis=1).sum())
        if round.group_flags is not None and round.group_flags.shape[1] == len(self.groups):
            self.group_counts += round.group_flags.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = values / thresholds
        _count_into(self.error_counts, ratio, self.bins.error_edges)
        if inputs is not None:  # (decisions, features, rows)
            _count_into(self.input_counts, inputs, self.bins.input_edges)

    def psi_max(self) -> float | None:
        if self.bins.expected is None or not self.input_counts.any():
            return None
        found = psi(self.input_counts, self.bins.expected)
        return None if np.all(np.isnan(found)) else float(np.nanmax(found))

    def record(self, pipeline: str, device: str, now: float, final: bool) -> dict:
        start = self.period_start
        return {
            "schema": SKETCH_SCHEMA, "kind": "sketch", "id": str(uuid.uuid4()),
            "key": f"{pipeline}:{self.model_version}:{start:.0f}",
            "device_id": device, "pipeline": pipeline, "model_name": self.model_name,
            "model_version": self.model_version, "bundle_sha256": self.bundle_sha256,
            "time": now, "period_start": start, "period_end": start + HOUR_S,
            "final": final, "turbines": len(self.turbines), "decisions": self.decisions,
            "anomalous": self.anomalous,
            "groups": dict(zip(self.groups, self.group_counts.tolist(), strict=True)),
            "stale_s": round(self.stale_s, 3), "features": list(self.features),
            "input_edges": self.bins.input_edges.tolist(),
            "input_counts": self.input_counts.tolist(),
            "error_edges": self.bins.error_edges.tolist(),
            "error_counts": self.error_counts.tolist(),
            "thresholds": list(self.thresholds),
        }

    def resume(self, saved: dict) -> None:
        """Continue the counts of a partial ``record`` a previous run wrote for this key
        (same shapes, else ValueError): its final then supersedes the partial."""
        inputs = np.asarray(saved["input_counts"], dtype=np.int64)
        errors = np.asarray(saved["error_counts"], dtype=np.int64)
        if inputs.shape != self.input_counts.shape or errors.shape != self.error_counts.shape \
                or saved["input_edges"] != self.bins.input_edges.tolist() \
                or saved["error_edges"] != self.bins.error_edges.tolist() \
                or list(saved["groups"]) != list(self.groups):
            raise ValueError("a saved sketch of other bins or groups")
        groups = np.asarray([int(saved["groups"][g]) for g in self.groups], dtype=np.int64)
        counts = int(saved["decisions"]), int(saved["anomalous"]), float(saved["stale_s"])
        names = [str(t) for t in saved.get("turbine_names", ())]
        # Read in full first: a saved sketch that fails half way changes nothing.
        self.input_counts += inputs
        self.error_counts += errors
        self.group_counts += groups
        self.decisions += counts[0]
        self.anomalous += counts[1]
        self.stale_s += counts[2]
        self.turbines.update(names)
        self.thresholds = self.thresholds or tuple(float(t) for t in saved["thresholds"])


def _count_into(counts: np.ndarray, values: np.ndarray, edges: np.ndarray) -> None:
    """Add ``values`` (decisions, features, ...) to ``counts`` (features, E+1), each
    feature to its row: bin 0 below edges[0], bin E at or above edges[-1]. NaN is not
    counted. Evenly spaced edges (the defaults) are binned by arithmetic, 3x faster
    than a search (the same bins but for a value within rounding of an edge)."""
    if not values.size:
        return
    width = counts.shape[1]
    steps = np.diff(edges)
    if len(edges) > 1 and np.allclose(steps, steps[0], rtol=1e-9, atol=0):
        bins = (values - edges[0]) * (1.0 / steps[0])
        np.floor(bins, out=bins)
        bins += 1
        np.clip(bins, 0, len(edges), out=bins)
        index = bins.astype(np.intp)
    else:
        index = np.searchsorted(edges, values, side="right")
    offsets = np.arange(counts.shape[0]) * width
    index += offsets.reshape((1, -1) + (1,) * (values.ndim - 2))
    nan = np.isnan(values)
    picked = index[~nan] if nan.any() else index.ravel()
    counts += np.bincount(picked, minlength=counts.size).reshape(counts.shape)


def newest_inputs(model_input: np.ndarray | None, decisions: int, features: int,
                  step: int) -> np.ndarray | None:
    """The model-input values of each decision's newest ``step`` rows, (decisions,
    features, step): the last window a turbine's rows make, laid out (features, rows...)
    as the windturbine preprocessor does. None for an input of another layout."""
    if model_input is None or not decisions:
        return None
    x = np.asarray(model_input)
    if x.ndim < 3 or x.shape[0] != decisions or x.shape[2] != features:
        return None
    last = x[:, -1].reshape(decisions, features, -1)
    return last[:, :, -step:] if last.shape[2] >= step else None


class Sketcher:
    """A pipeline's open hour: one HourSketch per model version. ``observe`` runs on the
    decision path; ``roll`` and ``partial`` make the records the writer spools."""

    def __init__(self, pipeline: str, device: str, groups: Sequence[str] = ()) -> None:
        self.pipeline = pipeline
        self.device = device
        self.groups = tuple(groups)
        self.open: dict[int, HourSketch] = {}
        self.version: int | None = None  # the version of the newest round
        self._stale = 0  # turbines stale now (sensor_stale minus sensor_recovered)
        self._stale_since: float | None = None
        # Stale turbine-seconds of an hour before its first round opens a sketch (an
        # hour's end rolls the old sketches before the new hour's round comes):
        # (hour start, seconds), claimed by the hour's first sketch.
        self._unclaimed: tuple[float, float] = (0.0, 0.0)
        self._saved: dict[str, dict] = {}  # key -> a previous run's partial

    def resume_from(self, saved: dict[str, dict]) -> None:
        self._saved = dict(saved)

    def observe(self, round: Round, *, bins: Bins, step: int, sha: str | None) -> list[dict]:
        """Add a round; returns the records it closes (an hour's end: final; a version
        change: the old version's partial)."""
        if not round.decisions or round.values is None:
            return []
        model = round.decisions[0].model
        closed = self.roll(round.time)
        if self.version is not None and self.version != model.version \
                and self.version in self.open:
            closed.append(self.open[self.version].record(self.pipeline, self.device,
                                                         round.time, False))
        self.version = model.version
        sketch = self.open.get(model.version)
        if sketch is None:
            sketch = self._new(model.name, model.version, round, bins, sha)
        inputs = newest_inputs(round.model_io[0] if round.model_io else None,
                               len(round.decisions), len(round.features), step)
        sketch.add(round, inputs)
        return closed

    def _new(self, name: str, version: int, round: Round, bins: Bins,
             sha: str | None) -> HourSketch:
        sketch = HourSketch(name, version, hour_of(round.time), tuple(round.features),
                            self.groups, bins, sha)
        hour, seconds = self._unclaimed
        if hour == sketch.period_start and not any(
                s.period_start == hour for s in self.open.values()):
            sketch.stale_s += seconds
            self._unclaimed = (0.0, 0.0)
        saved = self._saved.pop(self.key(sketch), None)
        if saved is not None:
            # One that does not fit: counted from now on, the partial stays as written.
            with contextlib.suppress(KeyError, TypeError, ValueError):
                sketch.resume(saved)
        self.open[version] = sketch
        return sketch

    def key(self, sketch: HourSketch) -> str:
        return f"{self.pipeline}:{sketch.model_version}:{sketch.period_start:.0f}"

    def on_event(self, event: Event) -> None:
        if event.kind not in ("sensor_stale", "sensor_recovered"):
            return
        turbines = int((event.detail or {}).get("turbines", 1)) \
            if event.turbine == "*" else 1
        self._accrue(event.time)
        self._stale = max(0, self._stale + (turbines if event.kind == "sensor_stale"
                                            else -turbines))

    def _accrue(self, now: float) -> None:
        """Add the stale turbine-seconds since the last accrual to the open sketches."""
        since, self._stale_since = self._stale_since, now
        if since is None or not self._stale or now <= since:
            return
        for sketch in self.open.values():
            start, end = max(since, sketch.period_start), min(now, sketch.period_start + HOUR_S)
            if end > start:
                sketch.stale_s += self._stale * (end - start)
        hour = hour_of(now)
        if not any(s.period_start == hour for s in self.open.values()):
            kept = self._unclaimed[1] if self._unclaimed[0] == hour else 0.0
            self._unclaimed = (hour, kept + self._stale * (now - max(since, hour)))

    def roll(self, now: float) -> list[dict]:
        """The final records of every hour that ended by ``now``."""
        ended = [v for v, s in self.open.items() if s.period_start + HOUR_S <= now]
        if not ended:
            return []
        self._accrue(now)
        done = [self.open.pop(v) for v in ended]
        return [s.record(self.pipeline, self.device, s.period_start + HOUR_S, True)
                for s in done]

    def seconds_to_roll(self, now: float) -> float | None:
        if not self.open:
            return None
        return max(0.0, min(s.period_start for s in self.open.values()) + HOUR_S - now)

    def partial(self, now: float) -> list[dict]:
        """Partial records of every open sketch (shutdown), kept open."""
        self._accrue(now)
        return [s.record(self.pipeline, self.device, now, False) for s in self.open.values()]

    def state(self, records: list[dict]) -> bytes:
        """What a restart continues from: the open hour's partials with turbine names."""
        by_key = {}
        for record in records:
            if record["final"]:
                continue
            sketch = self.open.get(record["model_version"])
            names = sorted(sketch.turbines) if sketch is not None else []
            by_key[record["key"]] = {**record, "turbine_names": names}
        return orjson.dumps({"schema": 1, "sketches": by_key})

    def totals(self) -> dict[str, Any] | None:
        """The newest version's open-hour totals (the heartbeat's ``sketch``)."""
        sketch = self.open.get(self.version) if self.version is not None else None
        if sketch is None:
            return None
        return {"decisions": sketch.decisions, "anomalous": sketch.anomalous,
                "psi_max": sketch.psi_max(), "model_version": sketch.model_version,
                "period_start": sketch.period_start}


def encode_sketch(record: dict) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


#: Counts a saved sketch may hold: exact in a float, far above an hour's.
MAX_COUNT = 2**53


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT


def _real(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and abs(value) < 1e300


def _table(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= MAX_EDGES and all(
        isinstance(row, list) and len(row) <= MAX_EDGES + 1 and all(map(_count, row))
        for row in value)


#: What a saved partial must hold for a restart to continue it: field -> check.
_SAVED = {
    "key": lambda v: isinstance(v, str),
    "model_version": lambda v: type(v) is int,
    "period_start": _real,
    "decisions": _count, "anomalous": _count,
    "stale_s": lambda v: _real(v) and v >= 0,
    "groups": lambda v: isinstance(v, dict) and all(map(_count, v.values())),
    "input_edges": lambda v: isinstance(v, list) and all(map(_real, v)),
    "error_edges": lambda v: isinstance(v, list) and all(map(_real, v)),
    "input_counts": _table, "error_counts": _table,
    "thresholds": lambda v: isinstance(v, list) and all(map(_real, v)),
    "turbine_names": lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v),
}


def parse_state(data: Any) -> dict[str, dict]:
    """The saved partials by key; ValueError naming the sketch and field for a file of
    another shape (the whole file is then set aside: the hour starts afresh)."""
    if not isinstance(data, dict) or data.get("schema") != 1 \
            or not isinstance(data.get("sketches"), dict):
        raise ValueError('expected {"schema": 1, "sketches": {key: record}}')
    found = {}
    for key, record in data["sketches"].items():
        if not isinstance(record, dict) or record.get("kind") != "sketch":
            raise ValueError(f"sketch {key!r}: not a sketch record")
        for name, valid in _SAVED.items():
            if name not in record or not valid(record[name]):
                raise ValueError(f"sketch {key!r}: {name} missing or invalid")
        found[key] = record
    return found
