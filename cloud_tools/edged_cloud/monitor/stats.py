"""Drift statistics: PSI over shared bins, the two-sample Kolmogorov-Smirnov test, and the
training distribution a manifest's ``monitoring.expected_input`` carries.

Own implementations (numpy only): scipy is not a dependency of edged-cloud, and both
statistics are a few lines. The KS p-value is the asymptotic Kolmogorov distribution with
Stephens' small-sample correction (``Q_KS((sqrt(n_e) + 0.12 + 0.11/sqrt(n_e)) D)``, n_e =
n m / (n + m)), good for samples of a few dozen values and up: the windows compared here
hold hundreds.
"""

from __future__ import annotations

import math

import numpy as np

#: The sketch's default bins (the monitoring contract): z units, 17 edges, 18 bins.
DEFAULT_INPUT_EDGES = [x / 2 for x in range(-8, 9)]
DEFAULT_ERROR_EDGES = [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 100.0]
#: A bin with no mass on one side would make PSI infinite; both sides get this floor.
PSI_FLOOR = 1e-4
#: The usual reading of PSI: under 0.1 stable, 0.1-0.2 a shift worth a look, over 0.2 drift.
DEFAULT_PSI_LIMIT = 0.2


def proportions(counts: np.ndarray) -> np.ndarray:
    """Counts (..., bins) as proportions; all zeros stay zeros."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def psi(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Population stability index per row: sum((a - e) * ln(a / e)) over the bins, both
    as proportions floored at PSI_FLOOR. ``actual`` may be counts; NaN where it is empty."""
    e = np.maximum(proportions(expected), PSI_FLOOR)
    a_counts = np.asarray(actual, dtype=float)
    a = np.maximum(proportions(a_counts), PSI_FLOOR)
    value = np.sum((a - e) * np.log(a / e), axis=-1)
    return np.where(a_counts.sum(axis=-1) > 0, value, np.nan)


def histogram(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts over E+1 bins as a sketch counts: first below edges[0], last >= edges[-1],
    bin i+1 is [edges[i], edges[i+1])."""
    return np.bincount(np.searchsorted(np.asarray(edges), values, side="right"),
                       minlength=len(edges) + 1)


def newest_rows(windows: np.ndarray, step: int = 10) -> np.ndarray:
    """The model-input values a sketch histograms, per feature: the newest ``step`` rows of
    each (n, features, s, s) window (row t of feature f is ``window[f].ravel()[t]``).
    Returns (features, n * step)."""
    n, features = windows.shape[:2]
    rows = windows.reshape(n, features, -1)[:, :, -step:]
    return rows.transpose(1, 0, 2).reshape(features, -1)


def expected_input(windows: np.ndarray, edges: list[float], step: int = 10) -> list[list[float]]:
    """Per feature, the proportions over the E+1 bins of healthy training windows."""
    values = newest_rows(windows, step)
    return [proportions(histogram(row, edges)).round(6).tolist() for row in values]


def kolmogorov_sf(x: float) -> float:
    """P(K > x) of the Kolmogorov distribution: 2 sum (-1)^(k-1) exp(-2 k^2 x^2)."""
    if x < 0.2:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101))
    return min(1.0, max(0.0, 2 * total))


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The two-sample KS statistic D (largest gap between the empirical CDFs) and its
    asymptotic p-value."""
    a, b = np.sort(np.asarray(a, float).ravel()), np.sort(np.asarray(b, float).ravel())
    if not len(a) or not len(b):
        return math.nan, math.nan
    both = np.concatenate([a, b])
    gap = np.abs(np.searchsorted(a, both, side="right") / len(a)
                 - np.searchsorted(b, both, side="right") / len(b))
    d = float(gap.max())
    en = math.sqrt(len(a) * len(b) / (len(a) + len(b)))
    return d, kolmogorov_sf((en + 0.12 + 0.11 / en) * d)
