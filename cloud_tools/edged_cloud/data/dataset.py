"""The prepared form of a training set (docs/cloud.md, "The prepared form").

Rows are kept as the device keeps them in its buffers: each row's six features, computed
by the device's own ``row_features`` (:func:`edged.windturbine.features.raw_features`),
in consecutive segments of one turbine. A decision point is where the device would
decide: a buffer of the last ``buffer`` rows of one segment. Windows are cut from those
buffers later, by the device's preprocessor, once the statistics are known.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np

from edged.windturbine.features import WindTurbineParams, raw_features
from edged.windturbine.layout import FAULT_KINDS, FEATURES, INPUTS
from edged_cloud.errors import BadInput, NotFound

FORMAT = "edged-windturbine-dataset"
VERSION = 1
DATASET = "dataset.npz"
META = "dataset.json"
HEALTHY = "healthy"
#: A captured anomaly whose record names no group the device judged the cause.
ANOMALOUS = "anomalous"
LABELS = (HEALTHY, *FAULT_KINDS, ANOMALOUS)

_PARAM_DEFAULTS = {f.name: f.default for f in fields(WindTurbineParams)
                   if f.default is not MISSING}
#: The device's buffer, and the rows its windows are cut from (window + step): the
#: reference's sizes, as the device's own parameters default them.
BUFFER: int = _PARAM_DEFAULTS["buffer"]
TAIL: int = _PARAM_DEFAULTS["window"] + _PARAM_DEFAULTS["step"]
#: Rows between decision points: the device decides every 0.5 to 1 s, 10 to 20 rows.
DEFAULT_STRIDE = 10
#: Largest dataset.npz read, unpacked: 100 million rows of six float64 features.
MAX_BYTES = 100_000_000 * 6 * 8
_ARRAYS = ("features", "labels", "segments", "turbines", "ends", "decision_labels")


@dataclass
class Segment:
    """Consecutive rows of one turbine: (n, 6) features and n labels."""

    turbine: str
    features: np.ndarray
    labels: np.ndarray


@dataclass
class Dataset:
    features: np.ndarray  # (R, 6) float64, FEATURES order
    labels: np.ndarray  # (R,) str
    segments: np.ndarray  # (S + 1,) int64 row offsets
    turbines: np.ndarray  # (S,) str
    ends: np.ndarray  # (D,) int64: one past the newest row of each decision's buffer
    decision_labels: np.ndarray  # (D,) str
    meta: dict = field(default_factory=dict)

    def buffers(self, which: np.ndarray | Sequence[int]) -> np.ndarray:
        """(len(which), BUFFER, 6): the device's buffer at each chosen decision."""
        ends = self.ends[np.asarray(which, dtype=np.int64)]
        index = ends[:, None] + np.arange(-BUFFER, 0)
        return self.features[index]

    def segment_of(self) -> np.ndarray:
        """(D,) the segment each decision belongs to."""
        return np.searchsorted(self.segments, self.ends - 1, side="right") - 1


def features_of(inputs: np.ndarray) -> np.ndarray:
    """(n, 7) raw readings in INPUTS order -> (n, 6) features: the device's row_features."""
    return raw_features(np.asarray(inputs, dtype=np.float64).reshape(-1, len(INPUTS)))


def decision_label(labels: np.ndarray) -> str:
    """A decision's label from its rows' labels (the last TAIL rows of its buffer): the
    fault most of them carry, or healthy when none is faulty."""
    faulty = Counter(str(x) for x in labels if x != HEALTHY)
    return faulty.most_common(1)[0][0] if faulty else HEALTHY


def build(segments: Iterable[Segment], *, stride: int = DEFAULT_STRIDE, source: str,
          ends_per_segment: str = "stride", **meta: object) -> Dataset:
    """A dataset from segments; decisions every ``stride`` rows of each segment from its
    BUFFER-th row on (``ends_per_segment="last"``: only at a segment's end, as for a
    captured buffer). BadInput when no segment holds a full buffer."""
    if stride < 1:
        raise BadInput(f"stride must be at least 1 row, got {stride}")
    parts, labels, turbines, offsets, ends, decided = [], [], [], [0], [], []
    short = 0
    for segment in segments:
        n = len(segment.features)
        if n < BUFFER:
            short += 1
            continue
        start = offsets[-1]
        points = np.arange(BUFFER, n + 1, stride) if ends_per_segment == "stride" \
            else np.array([n])
        parts.append(np.asarray(segment.features, dtype=np.float64))
        labels.append(np.asarray(segment.labels, dtype=str))
        turbines.append(segment.turbine)
        offsets.append(start + n)
        ends.append(start + points)
        decided.extend(decision_label(segment.labels[p - TAIL:p]) for p in points)
    if not parts:
        where = f" ({short} shorter)" if short else ""
        raise BadInput(f"no turbine has {BUFFER} consecutive rows{where}: a decision needs "
                       f"a full {BUFFER}-row buffer")
    counts = Counter(decided)
    info = {"format": FORMAT, "version": VERSION, "source": source,
            "rows": int(offsets[-1]), "decisions": len(decided),
            "labels": {k: counts[k] for k in LABELS if counts[k]},
            "turbines": sorted(set(turbines)), "segments": len(turbines),
            "segments_too_short": short, "buffer": BUFFER, "stride": stride,
            "features": list(FEATURES), **meta}
    return Dataset(np.concatenate(parts), np.concatenate(labels),
                   np.asarray(offsets, dtype=np.int64), np.asarray(turbines, dtype=str),
                   np.concatenate(ends).astype(np.int64), np.asarray(decided, dtype=str),
                   info)


def save(dataset: Dataset, directory: Path) -> list[Path]:
    """Write ``dataset.npz`` and ``dataset.json`` into ``directory``; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    npz = directory / DATASET
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{name: getattr(dataset, name) for name in _ARRAYS})
    npz.write_bytes(buffer.getvalue())
    meta = directory / META
    meta.write_text(json.dumps(dataset.meta, indent=2) + "\n")
    return [npz, meta]


def load(path: Path, *, max_bytes: int = MAX_BYTES) -> Dataset:
    """A prepared dataset from its folder (or its dataset.npz); BadInput naming the file
    and what is wrong when it is not one, NotFound when it is missing."""
    path = Path(path)
    npz = path / DATASET if path.is_dir() else path
    if not npz.is_file():
        raise NotFound(f"{npz}: no such dataset (make one with edged-cloud data)")
    try:
        with zipfile.ZipFile(npz) as archive:
            if sum(info.file_size for info in archive.infolist()) > max_bytes:
                raise BadInput(f"{npz}: unpacks to more than {max_bytes} bytes")
        with np.load(npz, allow_pickle=False) as arrays:
            loaded = {name: arrays[name] for name in _ARRAYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise BadInput(f"{npz}: not a prepared dataset ({exc})") from None
    meta_path = npz.with_name(META)
    meta = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text()[:1 << 20])
        except ValueError:
            meta = {}
    dataset = Dataset(**loaded, meta=meta if isinstance(meta, dict) else {})
    _check(dataset, npz)
    return dataset


def _check(d: Dataset, where: Path) -> None:
    def bad(why: str) -> BadInput:
        return BadInput(f"{where}: {why}")

    rows = len(d.features)
    if d.features.ndim != 2 or d.features.shape[1] != len(FEATURES) or rows == 0:
        raise bad(f"features: expected (rows, {len(FEATURES)}), got {d.features.shape}")
    if not np.all(np.isfinite(d.features)):
        raise bad("features: values must be finite")
    if d.labels.shape != (rows,) or d.labels.dtype.kind != "U":
        raise bad(f"labels: expected {rows} strings")
    if d.segments.ndim != 1 or len(d.segments) != len(d.turbines) + 1 or \
            d.segments[0] != 0 or d.segments[-1] != rows or np.any(np.diff(d.segments) < 0):
        raise bad("segments: not offsets from 0 to the row count")
    if d.ends.ndim != 1 or len(d.ends) == 0 or d.decision_labels.shape != d.ends.shape:
        raise bad("ends/decision_labels: expected as many decisions as labels, at least one")
    segment = d.segment_of()
    if np.any(d.ends - BUFFER < d.segments[segment]) or np.any(d.ends > rows):
        raise bad(f"ends: a decision's {BUFFER}-row buffer leaves its segment")
    unknown = sorted(set(np.unique(d.decision_labels)) - set(LABELS))
    if unknown:
        raise bad(f"decision_labels: unknown label {unknown[0]!r} (known: {', '.join(LABELS)})")
