"""Statistics, windows and thresholds for training, as the reference computes them and as
the device preprocesses (docs/cloud.md, "train").

The reference's formulas: ``raw_std`` is the standard deviation (ddof 1) of the raw
features, the noise level of the wavelet denoising; ``mean`` and ``std`` (ddof 1) those
of the denoised features, for normalising; ``thresholds`` the mean over the training
windows of each window's mean absolute reconstruction error per feature. One difference,
on purpose: the reference denoised its whole recording as one series, while a device
denoises its 500-row buffer, and with the reference's quirk (the approximation is
thresholded too) the two give different levels (a constant 47.79 comes back near 28.0
from a 500-row buffer). Here every window is cut from a device buffer by the device's
own preprocessor, so the statistics describe what the model sees on a device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edged.windturbine.features import WindTurbineParams, WindTurbinePreprocessor
from edged.windturbine.layout import FEATURES
from edged_cloud.data.dataset import BUFFER, HEALTHY, TAIL, Dataset

#: Buffers denoised at once: (CHUNK, 500, 6) float64 is 24 MB.
CHUNK = 1000
_F = len(FEATURES)


def split(dataset: Dataset, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """Healthy decisions for training and held out, in time: the last ``holdout`` of each
    segment's decisions, none of whose buffers shares a row with a training buffer.
    Single-decision segments (captured buffers) are split by their order instead."""
    healthy = np.flatnonzero(dataset.decision_labels == HEALTHY)
    segment = dataset.segment_of()[healthy]
    train, held, singles = [], [], []
    for s in np.unique(segment):
        ours = healthy[segment == s]  # in end order: built per segment, ascending
        if len(ours) == 1:
            singles.append(ours)
            continue
        cut = max(1, int(round(len(ours) * (1 - holdout))))
        train.append(ours[:cut])
        last = dataset.ends[ours[cut - 1]]
        held.append(ours[cut:][dataset.ends[ours[cut:]] - BUFFER >= last])
    if singles:
        ones = np.concatenate(singles)
        cut = max(1, int(round(len(ones) * (1 - holdout))))
        train.append(ones[:cut])
        held.append(ones[cut:])
    empty = np.empty(0, dtype=np.int64)
    return (np.concatenate(train) if train else empty), (np.concatenate(held) if held else empty)


def _row_mask(dataset: Dataset, decisions: np.ndarray) -> np.ndarray:
    """Rows inside any of these decisions' buffers, and labelled healthy."""
    cover = np.zeros(len(dataset.features) + 1, dtype=np.int64)
    np.add.at(cover, dataset.ends[decisions] - BUFFER, 1)
    np.add.at(cover, dataset.ends[decisions], -1)
    return (np.cumsum(cover[:-1]) > 0) & (dataset.labels == HEALTHY)


def statistics(dataset: Dataset, decisions: np.ndarray, *,
               threshold_approximation: bool = True) -> dict[str, np.ndarray]:
    """raw_std, mean and std (float64, FEATURES order) of the training decisions."""
    raw = dataset.features[_row_mask(dataset, decisions)]
    raw_std = raw.std(axis=0, ddof=1)
    if not np.all(raw_std > 0):
        flat = [FEATURES[i] for i in np.flatnonzero(~(raw_std > 0))]
        raise ValueError(f"feature(s) {', '.join(flat)} never change in the training rows")
    pre = WindTurbinePreprocessor(_params(np.zeros(_F), np.ones(_F), raw_std,
                                          threshold_approximation))
    total = np.zeros(_F)
    squares = np.zeros(_F)
    count = 0
    # Two passes would be exact to the last ulp; sums of (x - shift) keep one pass within
    # float64 rounding, shifted by the raw mean so the squares do not cancel.
    shift = raw.mean(axis=0)
    for start in range(0, len(decisions), CHUNK):
        tail = pre.denoise(dataset.buffers(decisions[start:start + CHUNK]))[:, -TAIL:, :]
        centred = tail.reshape(-1, _F) - shift
        total += centred.sum(axis=0)
        squares += (centred * centred).sum(axis=0)
        count += len(centred)
    mean = total / count
    std = np.sqrt(np.maximum(squares - count * mean * mean, 0.0) / (count - 1))
    return {"raw_std": raw_std, "mean": mean + shift, "std": std}


def _params(mean, std, raw_std, threshold_approximation: bool,
            thresholds=None) -> WindTurbineParams:
    return WindTurbineParams(mean=mean, std=std, raw_std=raw_std,
                             thresholds=np.ones(_F) if thresholds is None else thresholds,
                             threshold_approximation=threshold_approximation)


def params_of(stats: dict[str, np.ndarray], threshold_approximation: bool = True,
              thresholds: np.ndarray | None = None) -> WindTurbineParams:
    return _params(stats["mean"], stats["std"], stats["raw_std"], threshold_approximation,
                   thresholds)


def windows(dataset: Dataset, decisions: np.ndarray, params: WindTurbineParams) -> np.ndarray:
    """The model input of each decision, (len * W, 6, 10, 10) float32: the device's
    preprocessor (``WindTurbinePreprocessor.windows``) on the device's buffer, cast as the
    device's ONNX backend casts it."""
    pre = WindTurbinePreprocessor(params)
    side = int(np.sqrt(params.window))
    out = [pre.windows(dataset.buffers(decisions[i:i + CHUNK])).astype(np.float32)
           for i in range(0, len(decisions), CHUNK)]
    return np.concatenate(out) if out else np.empty((0, _F, side, side), np.float32)


def errors(x: np.ndarray, y: np.ndarray, params: WindTurbineParams) -> np.ndarray:
    """(decisions, 6) mean absolute errors, as the device scores them."""
    w = params.windows_per_buffer
    return WindTurbinePreprocessor(params).errors(x, y, len(x) // w)


@dataclass(frozen=True)
class ThresholdRule:
    """How thresholds come from the training decisions' errors. ``reference``: their mean
    per feature, as the reference computes them (loose on its own data, tight on data like
    the training set: about half the healthy decisions exceed a mean). ``quantile``:
    ``margin`` × the ``quantile`` of them per feature, for thresholds that a healthy
    turbine stays under."""

    kind: str = "reference"
    quantile: float = 0.999
    margin: float = 2.0

    def describe(self) -> dict:
        return ({"rule": "reference"} if self.kind == "reference" else
                {"rule": "quantile", "quantile": self.quantile, "margin": self.margin})


#: The reference's own rule.
REFERENCE_RULE = ThresholdRule()


def thresholds(x: np.ndarray, y: np.ndarray, params: WindTurbineParams,
               rule: ThresholdRule = REFERENCE_RULE) -> np.ndarray:
    """Per feature, the threshold ``rule`` gives on the training windows' errors (each
    decision's mean absolute error per feature, as the device scores it)."""
    per_decision = errors(x, y, params)
    if rule.kind == "reference":
        return per_decision.mean(axis=0)
    return rule.margin * np.quantile(per_decision, rule.quantile, axis=0)
