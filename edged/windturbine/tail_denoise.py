"""The reference's wavelet denoising of a buffer's newest rows, as two matrix products.

A decision uses only the newest ``window + step`` rows of each denoised buffer (110 of 500
in the reference), yet the reference decomposes and rebuilds all 500. Decomposition and
reconstruction are linear (convolutions with the wavelet's filters over a symmetric
extension), and only the soft threshold between them is not, so for a buffer of fixed
length ``n``:

    tail = soft(series @ analysis, t) @ synthesis

where ``analysis`` holds the coefficients the tail depends on (165 of 553 for the
reference) as functions of the input rows, and ``synthesis`` rebuilds the tail from them.
Both matrices come from pywt itself (the transform of the identity), so boundary handling
and lengths are pywt's. The products run in BLAS, and each coefficient level only over the
rows it depends on (the tail never depends on the oldest 74 rows; the finest details only
on the newest 120): a third of the multiply-adds of a dense product, and about a third of
the time of pywt's full transform and inverse. Results agree with the full transform to
rounding (about 1e-15 relative); tests/windturbine/test_tail_denoise.py holds that.
"""

from __future__ import annotations

import functools

import numpy as np
import pywt

#: Longest buffer denoised this way: building the maps takes an n x n identity (32 MB
#: at this length; the reference's 500 rows, 2 MB). A longer one is transformed whole.
MAX_TAIL_ROWS = 2048

#: Turbines denoised per block: large enough that BLAS runs at speed, small enough that a
#: block's arrays (about 25 kB a turbine) stay in the CPU's cache.
BLOCK = 64


class TailDenoiser:
    """Denoise series of ``n`` samples; keep only their last ``span`` samples."""

    def __init__(self, n: int, span: int, wavelet: str, level: int,
                 threshold_approximation: bool) -> None:
        if not 0 < span <= n:
            raise ValueError(f"span {span}: must be in 1..{n}")
        self.n, self.span = n, span
        # Row i of each array: the coefficients of the unit series e_i.
        analysis = pywt.wavedec(np.eye(n), wavelet, level=level, axis=-1)
        shapes = [coefficients.shape[-1] for coefficients in analysis]
        # Row k: the series the unit coefficient k rebuilds to (waverec returns n + 1
        # samples for odd n; the extra one is padding), cut to the tail.
        units = np.split(np.eye(sum(shapes)), np.cumsum(shapes)[:-1], axis=1)
        rebuilt = pywt.waverec(units, wavelet, axis=-1)[:, :n][:, n - span:]
        # Per coefficient array (cA_level, cD_level, ..., cD1): the first input row its
        # coefficients the tail depends on read, their map from the rows from there on,
        # and whether they are thresholded.
        self._levels: list[tuple[int, np.ndarray, bool]] = []
        synthesis = []
        offset = 0
        for index, coefficients in enumerate(analysis):
            size = coefficients.shape[-1]
            needed = np.flatnonzero(np.any(rebuilt[offset:offset + size] != 0, axis=1))
            matrix = coefficients[:, needed]
            if matrix.any():  # else the tail reads none of them, or they are always 0
                first = int(np.flatnonzero(np.any(matrix != 0, axis=1))[0])
                self._levels.append((first, np.ascontiguousarray(matrix[first:]),
                                     index > 0 or threshold_approximation))
                synthesis.append(rebuilt[offset + needed])
            offset += size
        self._synthesis = np.ascontiguousarray(np.concatenate(synthesis))
        #: The oldest row the tail depends on: rows before it are never read.
        self.first_row = min(first for first, _, _ in self._levels)

    def __call__(self, features: np.ndarray, t: np.ndarray) -> np.ndarray:
        """(T, n, F) -> (T, span, F): each series' denoised tail; ``t`` (F, 1) thresholds."""
        turbines, n, width = features.shape
        if n != self.n:
            raise ValueError(f"expected series of {self.n} samples, got {n}")
        out = np.empty((turbines, self.span, width))
        for start in range(0, turbines, BLOCK):
            block = features[start:start + BLOCK, self.first_row:]
            # (B * F, rows): each series contiguous, as the products want it.
            series = np.ascontiguousarray(block.swapaxes(1, 2)).reshape(-1, n - self.first_row)
            parts = []
            for first, matrix, thresholded in self._levels:
                coefficients = series[:, first - self.first_row:] @ matrix
                if thresholded:
                    soft_threshold(coefficients.reshape(len(block), width, -1), t)
                parts.append(coefficients)
            tail = np.concatenate(parts, axis=1) @ self._synthesis
            out[start:start + len(block)] = tail.reshape(len(block), width, -1).swapaxes(1, 2)
        return out


@functools.lru_cache(maxsize=8)
def tail_denoiser(n: int, span: int, wavelet: str, level: int,
                  threshold_approximation: bool) -> TailDenoiser:
    """The denoiser for these settings, built once (a daemon's buffer length is fixed; a
    few are kept for callers that vary it, each about 0.7 MB at 500 rows)."""
    return TailDenoiser(n, span, wavelet, level, threshold_approximation)


def soft_threshold(coeffs: np.ndarray, t: np.ndarray) -> None:
    """pywt.threshold(c, t, 'soft') in place; ``t`` broadcasts against ``coeffs``.

    Same operations in the same order as pywt (c * max(0, 1 - t/|c|)), so the result is
    bit-identical to the reference's per-column calls, not merely close.
    """
    scale = np.abs(coeffs)
    with np.errstate(divide="ignore"):  # |c| == 0 gives -inf, clipped to 0 (as pywt)
        np.divide(t, scale, out=scale)
    np.subtract(1.0, scale, out=scale)
    np.maximum(scale, 0.0, out=scale)
    coeffs *= scale
