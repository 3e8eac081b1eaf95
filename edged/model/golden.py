"""Golden pairs: inputs a model ships with (``golden`` in its manifest, an ``.npz`` with
arrays ``inputs`` and ``outputs``) and the outputs it must reproduce, with the one rule for
"reproduce". Bundle verification and the hot swap's staging both check through here;
docs/bundle.md ("Golden pairs") says what is compared and why the tolerance is what it is.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edged.base.errors import GoldenError

#: Largest golden pairs read, unpacked (np.load inflates each array whole).
MAX_BYTES = 256 << 20
#: Allowed error per element: max(ATOL, RTOL * |expected|). The floor is 1e-4, not 1e-5:
#: golden outputs come from the converter's runtime, and float32 sums over values up to
#: ~330 leave errors up to 4e-5 on elements near 0.1 (windturbine-v1 on ONNX Runtime
#: 1.32). A wrong model or corrupted golden misses by orders of magnitude more.
ATOL = 1e-4
RTOL = 1e-4


def tolerance(expected: np.ndarray) -> np.ndarray:
    """Allowed absolute error per element: max(ATOL, RTOL * |expected|)."""
    return np.maximum(ATOL, RTOL * np.abs(expected))


def read_pairs(path: Path, *, max_bytes: int = MAX_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """The golden ``inputs`` and ``outputs`` at ``path``, as many of each (at least one).
    Raises GoldenError: too_large, malformed, or golden_failed when they do not pair up."""
    try:
        with zipfile.ZipFile(path) as archive:
            # Bound the inflated arrays by the sizes the zip declares, before reading any.
            if sum(info.file_size for info in archive.infolist()) > max_bytes:
                raise GoldenError("too_large", f"{path.name} unpacks to more than "
                                  f"{max_bytes} bytes")
        with np.load(path, allow_pickle=False) as pairs:
            inputs, outputs = pairs["inputs"], pairs["outputs"]
    except GoldenError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise GoldenError("malformed", f"{path.name}: cannot read the golden arrays "
                          f"'inputs' and 'outputs': {exc}") from None
    if min(inputs.ndim, outputs.ndim) == 0 or len(inputs) == 0 \
            or len(inputs) != len(outputs):
        raise GoldenError("golden_failed", f"golden inputs {inputs.shape} / outputs "
                          f"{outputs.shape} are not pairs")
    return inputs, outputs


def compare(actual: np.ndarray, expected: np.ndarray) -> None:
    """Raise GoldenError (golden_failed) unless ``actual`` has ``expected``'s shape and
    every element is within :func:`tolerance` of it. NaN and infinity are misses, unless
    the golden output holds the very same value."""
    if actual.shape != expected.shape:
        raise GoldenError("golden_failed", f"output shape {actual.shape}, golden "
                          f"{expected.shape}")
    expected = expected.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        got = actual.astype(np.float64)
        error = np.abs(got - expected)
        # An infinite tolerance (expected ±inf) must not let any value pass.
        bad = ~(((error <= tolerance(expected)) & np.isfinite(error)) | (got == expected))
    if bad.any():
        raise GoldenError("golden_failed", f"{int(bad.sum())} of {bad.size} golden output "
                          f"values differ (worst by {float(np.max(error[bad])):.3g})")


def check(path: Path, predict: Callable[[np.ndarray], np.ndarray], *,
          max_bytes: int = MAX_BYTES) -> int:
    """Run ``predict`` on the golden inputs at ``path`` and :func:`compare` its output with
    the golden outputs; return the pairs checked. Raises GoldenError, or whatever
    ``predict`` raises (the caller's own errors pass through). Blocking."""
    inputs, outputs = read_pairs(path, max_bytes=max_bytes)
    compare(np.asarray(predict(inputs)), outputs)
    return len(inputs)
