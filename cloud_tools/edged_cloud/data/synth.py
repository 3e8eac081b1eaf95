"""A labelled synthetic farm: the device simulator's turbines (edged.windturbine.simulator),
healthy, then each fault kind injected on every turbine in turn.

The rows are written as the dataset's CSV and then imported through the same path as any
CSV (:mod:`edged_cloud.data.csv_import`), so what training sees went through the
device's own row decoder, from the very text a ``replay`` source would read.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from edged.windturbine.layout import DATASET_COLUMNS, FAULT_KINDS
from edged.windturbine.simulator import Fault, WindFarm, parse_schedule
from edged_cloud.data.csv_import import LABEL_COLUMN, import_csv
from edged_cloud.data.dataset import DEFAULT_STRIDE, HEALTHY, Dataset
from edged_cloud.errors import BadInput

CSV_NAME = "dataset.csv"
LABELS_NAME = "dataset.labels.csv"
#: 2021-01-13T12:00:00Z, the reference dataset's week: fixed, so a seed gives one file.
START_TIME = 1610539200.0
CHUNK_TICKS = 2000
MAX_TURBINE_ROWS = 10_000_000


def auto_faults(turbines: int, seconds: float, fault_seconds: float) -> list[Fault]:
    """Healthy for the first half; then each kind on every turbine, one after the other,
    each for ``fault_seconds``, with healthy stretches between them."""
    slot = seconds / 2 / len(FAULT_KINDS)
    if fault_seconds >= slot:
        raise BadInput(f"--fault-seconds {fault_seconds:g} leaves no healthy time between "
                       f"faults in {seconds:g} s: make it shorter than {slot:g} s or the "
                       f"run longer")
    faults = []
    for turbine in range(turbines):
        for k, kind in enumerate(FAULT_KINDS):
            # Staggered across turbines so that they do not all fail at once.
            start = seconds / 2 + k * slot + (slot - fault_seconds) * turbine / turbines
            faults.append(Fault(turbine, kind, start, start + fault_seconds))
    return faults


def row_labels(faults: list[Fault], ticks: int, turbines: int, rate_hz: float) -> np.ndarray:
    """(ticks, turbines) labels: the fault overwriting each row, or healthy."""
    labels = np.full((ticks, turbines), HEALTHY, dtype=f"<U{max(map(len, FAULT_KINDS))}")
    times = np.arange(ticks) / rate_hz
    for fault in faults:
        labels[(fault.start <= times) & (times < fault.end), fault.turbine] = fault.kind
    return labels


def synthesize(out: Path, *, turbines: int = 4, seconds: float = 600.0, rate_hz: float = 20.0,
               seed: int = 0, faults: str = "auto", fault_seconds: float = 10.0,
               stride: int = DEFAULT_STRIDE) -> Dataset:
    """Write ``out/dataset.csv`` and ``out/dataset.labels.csv``; return the prepared
    dataset (the caller saves it). ``faults``: ``auto``, ``none`` or a simulator schedule
    (``2:vibration@5-12,...``)."""
    if not 1 <= turbines <= 1000:
        raise BadInput(f"--turbines must be 1 to 1000, got {turbines}")
    if not seconds > 0 or not rate_hz > 0:
        raise BadInput("--seconds and --rate must be positive")
    ticks = round(seconds * rate_hz)
    if ticks > MAX_TURBINE_ROWS:
        raise BadInput(f"{ticks} rows per turbine, over {MAX_TURBINE_ROWS}: a shorter run")
    if faults == "auto":
        schedule = auto_faults(turbines, seconds, fault_seconds)
    elif faults == "none":
        schedule = []
    else:
        try:
            schedule = parse_schedule(faults)
        except ValueError as exc:
            raise BadInput(f"--faults: {exc}") from None
    try:
        farm = WindFarm(turbines=turbines, rate_hz=rate_hz, seed=seed, faults=schedule)
    except ValueError as exc:
        raise BadInput(f"--faults: {exc}") from None
    labels = row_labels(schedule, ticks, turbines, rate_hz)
    out.mkdir(parents=True, exist_ok=True)
    with (out / CSV_NAME).open("w", newline="") as rows_file, \
            (out / LABELS_NAME).open("w", newline="") as labels_file:
        rows, label_rows = csv.writer(rows_file), csv.writer(labels_file)
        rows.writerow(DATASET_COLUMNS)
        label_rows.writerow([LABEL_COLUMN])
        for first in range(0, ticks, CHUNK_TICKS):
            n = min(CHUNK_TICKS, ticks - first)
            rows.writerows(farm.records(farm.ticks(n), START_TIME + first / rate_hz))
            label_rows.writerows([label] for label in labels[first:first + n].ravel())
    dataset = import_csv(out / CSV_NAME, labels=out / LABELS_NAME, stride=stride,
                         source="synth")
    dataset.meta.update(seed=seed, seconds=seconds, rate_hz=rate_hz, faults=[
        {"turbine": farm.turbine_ids[f.turbine], "kind": f.kind, "start": f.start,
         "end": f.end} for f in schedule])
    return dataset
