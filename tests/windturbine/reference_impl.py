"""The reference application's computation, written out literally: the yardstick.

One turbine at a time, one row and one column at a time, plain loops, written from the
reference's description (docs/windturbine.md, MIT-0 workshop). Deliberately dumb and slow:
edged's vectorised version (edged/windturbine/features.py) is tested against this.
"""

from __future__ import annotations

import math

import numpy as np
import pywt


def euler_from_quaternion(x, y, z, w):
    """The standard conversion, one quaternion (x, y, z, w) -> (roll, pitch, yaw) radians."""
    t0 = +2.0 * (w * x + y * z)
    t1 = +1.0 - 2.0 * (x * x + y * y)
    roll_x = math.atan2(t0, t1)

    t2 = +2.0 * (w * y - z * x)
    t2 = +1.0 if t2 > +1.0 else t2
    t2 = -1.0 if t2 < -1.0 else t2
    pitch_y = math.asin(t2)

    t3 = +2.0 * (w * z + x * y)
    t4 = +1.0 - 2.0 * (y * y + z * z)
    yaw_z = math.atan2(t3, t4)
    return roll_x, pitch_y, yaw_z


def row_features(row):
    """One raw row (qx, qy, qz, qw, wind_speed_rps, rps, voltage) -> the six features."""
    qx, qy, qz, qw, wind_speed_rps, rps, voltage = (float(v) for v in row)
    roll, pitch, yaw = euler_from_quaternion(qx, qy, qz, qw)
    return [roll, pitch, yaw, wind_speed_rps, rps, voltage]


def raw_features(rows):
    """(N, 7) raw rows -> (N, 6) features, row by row."""
    return np.array([row_features(row) for row in rows], dtype=np.float64)


def wavelet_denoise(data, raw_std, wavelet="db6", max_level=5, threshold_approximation=True):
    """Denoise each column of (N, 6) separately, as the reference did.

    The reference soft-thresholds every coefficient array, the approximation too (the quirk);
    threshold_approximation=False is the textbook variant. The columns are stacked untrimmed,
    as in the reference (for odd N each has N + 1 samples).
    """
    columns = []
    for f in range(data.shape[1]):
        col = data[:, f]
        level = min(max_level, math.floor(math.log2(len(col))))
        coeffs = pywt.wavedec(col, wavelet, level=level)
        t = raw_std[f] * np.sqrt(2 * np.log2(col.size))
        new_coeffs = []
        for i, c in enumerate(coeffs):
            if i == 0 and not threshold_approximation:
                new_coeffs.append(c)
            else:
                new_coeffs.append(pywt.threshold(c, t, mode="soft"))
        columns.append(pywt.waverec(new_coeffs, wavelet))
    return np.stack(columns, axis=1)


def create_dataset(X, time_steps, step):
    """The reference's windowing: windows of time_steps rows, starting every step rows."""
    Xs = []
    for i in range(0, len(X) - time_steps, step):
        Xs.append(X[i : i + time_steps])
    return np.array(Xs)


def reference_x(features, params):
    """(N, 6) raw features of one turbine -> model input x, (n, 6, side, side) float64."""
    data = wavelet_denoise(
        features,
        params.raw_std,
        params.wavelet,
        params.max_level,
        params.threshold_approximation,
    )
    data = data.copy()
    data -= params.mean
    data /= params.std
    data = data[-(params.window + params.step) :]
    windows = create_dataset(data, params.window, params.step)
    n = windows.shape[0]
    side = math.isqrt(params.window)
    x = np.transpose(windows, (0, 2, 1)).reshape(n, 6, side, side)
    return x


def reference_values(x, p):
    """Per-feature MAE: over each window's time steps, then over the windows -> (6,)."""
    n = x.shape[0]
    steps = x.shape[2] * x.shape[3]
    a = x.reshape(n, 6, steps).transpose(0, 2, 1)
    b = p.reshape(n, 6, steps).transpose(0, 2, 1)
    mae = np.mean(np.abs(b - a), axis=1)
    return mae.mean(axis=0)


def reference_decide(buffer_rows, params, model_fn):
    """One turbine's decision from its (N, 7) buffer of raw rows.

    Returns (values (6,), anomalous (6,) bool, x). model_fn maps float32 x to the
    reconstruction.
    """
    features = raw_features(buffer_rows)
    x = reference_x(features, params)
    p = model_fn(x.astype(np.float32))
    values = reference_values(x, p)
    anomalous = values > params.thresholds
    return values, anomalous, x
