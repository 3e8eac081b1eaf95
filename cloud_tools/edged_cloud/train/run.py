"""``edged-cloud train`` from end to end: data, statistics, training, thresholds, ONNX
export and its check, golden pairs, the report; OUTDIR as docs/cloud.md describes it."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edged.model.session import open_session
from edged.windturbine.features import WindTurbineParams
from edged.windturbine.layout import FAULT_KINDS, FEATURES
from edged_cloud.data import dataset as ds
from edged_cloud.errors import BadInput, CloudToolError
from edged_cloud.train import export, prepare, report
from edged_cloud.train.fit import FitOptions, fit

NAME = "windturbine"
GOLDEN_HEALTHY = 16
GOLDEN_FAULTY = 8
MIN_TRAINING_DECISIONS = 8


class ExportMismatch(CloudToolError):
    """ONNX Runtime does not reproduce PyTorch within the tolerance."""


def preprocessing_of(params: WindTurbineParams) -> dict:
    """The manifest's ``preprocessing`` mapping for these parameters (float64 exactly:
    Python floats round-trip through JSON)."""
    return {
        "type": NAME,
        "features": list(FEATURES),
        "buffer": params.buffer,
        "window": params.window,
        "step": params.step,
        "wavelet": params.wavelet,
        "max_level": params.max_level,
        "threshold_approximation": params.threshold_approximation,
        **{key: [float(v) for v in getattr(params, key)]
           for key in ("mean", "std", "raw_std", "thresholds")},
    }


def _evenly(indices: np.ndarray, count: int) -> np.ndarray:
    if len(indices) <= count:
        return indices
    return indices[np.linspace(0, len(indices) - 1, count).round().astype(int)]


def _check_onnx(model, session, windows: np.ndarray) -> tuple[float, float, np.ndarray]:
    """ONNX Runtime against PyTorch on ``windows``, in one batch and one at a time:
    (max abs diff, worst scaled error, ONNX outputs)."""
    expected = export.torch_outputs(model, windows)
    actual = session.run([export.OUTPUT_NAME], {export.INPUT_NAME: windows})[0]
    rows = [export.window_errors(expected, actual)]
    for i in range(min(len(windows), 8)):
        single = session.run([export.OUTPUT_NAME], {export.INPUT_NAME: windows[i:i + 1]})[0]
        rows.append(export.window_errors(expected[i:i + 1], single))
    errors = np.concatenate(rows)
    return float(errors[:, 0].max()), export.scaled_error(errors), actual


def train(data: Path, out: Path, options: FitOptions, *, holdout: float = 0.2,
          version: int = 1, threshold_approximation: bool = True,
          threshold_rule: prepare.ThresholdRule = prepare.REFERENCE_RULE,
          show_progress: bool | None = None) -> dict:
    """Train and write OUTDIR; the report (also report.json). Raises BadInput for data
    that cannot train, ExportMismatch when ONNX does not reproduce PyTorch."""
    import torch

    dataset = ds.load(data)
    train_idx, held_idx = prepare.split(dataset, holdout)
    if len(train_idx) < MIN_TRAINING_DECISIONS:
        raise BadInput(f"{data}: {len(train_idx)} healthy decisions to train on, at least "
                       f"{MIN_TRAINING_DECISIONS} needed (the model learns healthy turbines)")
    try:
        stats = prepare.statistics(dataset, train_idx,
                                   threshold_approximation=threshold_approximation)
    except ValueError as exc:
        raise BadInput(f"{data}: {exc}") from None
    params = prepare.params_of(stats, threshold_approximation)
    x_train = prepare.windows(dataset, train_idx, params)
    model, history = fit(x_train, options, show_progress=show_progress)
    thresholds = prepare.thresholds(x_train, export.torch_outputs(model, x_train), params,
                                    threshold_rule)
    params = prepare.params_of(stats, threshold_approximation, thresholds)

    # Held out: the healthy decisions kept apart in time, and every faulty one (never
    # trained on).
    faulty_idx = np.flatnonzero(dataset.decision_labels != ds.HEALTHY)
    eval_idx = np.concatenate([held_idx, faulty_idx])
    x_eval = prepare.windows(dataset, eval_idx, params)
    if len(x_eval) == 0:  # nothing held out: check against the training windows
        eval_idx, x_eval = train_idx, x_train
    labels = dataset.decision_labels[eval_idx]

    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "model.onnx"
    model_path.write_bytes(export.export_onnx(model).SerializeToString())
    session = open_session(model_path)  # as the device opens it
    max_abs, worst, y_eval = _check_onnx(model, session, x_eval)
    if worst > export.TOLERANCE:
        model_path.unlink()
        raise ExportMismatch(f"ONNX Runtime differs from PyTorch by {max_abs:.3g} "
                             f"(scaled {worst:.3g} > {export.TOLERANCE:g}): model not written")

    golden_idx = np.concatenate([
        _evenly(np.flatnonzero(labels == ds.HEALTHY), GOLDEN_HEALTHY),
        _evenly(np.flatnonzero(labels != ds.HEALTHY), GOLDEN_FAULTY)])
    golden_in = x_eval[golden_idx]
    # The golden outputs are ONNX Runtime's, the runtime a device checks them with: PyTorch
    # and ONNX Runtime may differ by more than the golden rule's 1e-4 (their agreement is
    # checked above, against its own tolerance).
    golden_out = session.run([export.OUTPUT_NAME], {export.INPUT_NAME: golden_in})[0]
    files = {
        "golden.npz": export.npz_bytes({"inputs": golden_in, "outputs": golden_out}),
        "validation.npz": export.npz_bytes({"inputs": x_eval, "labels": labels,
                                            "outputs": y_eval}),
        "preprocessing.json": (json.dumps(preprocessing_of(params), indent=2) + "\n").encode(),
    }
    WindTurbineParams.from_manifest(json.loads(files["preprocessing.json"]))  # as a device
    for name, body in files.items():
        (out / name).write_bytes(body)
    torch.save(model.state_dict(), out / "model.pt")

    eval_errors = prepare.errors(x_eval, y_eval, params)
    flagged = (eval_errors > params.thresholds).any(axis=1)
    by_label = {label: eval_errors[labels == label]
                for label in (ds.HEALTHY, *FAULT_KINDS, ds.ANOMALOUS) if np.any(labels == label)}
    report.loss_plot(out / "loss.png", history.train_loss, history.val_loss, history.best_epoch)
    report.error_plot(out / "errors.png", by_label, params.thresholds)
    healthy = labels == ds.HEALTHY
    summary = {
        "name": NAME,
        "version": version,
        "data": {"path": str(data), "source": dataset.meta.get("source"),
                 "decisions": int(len(dataset.ends)), "trained_on": int(len(train_idx)),
                 "held_out_healthy": int(healthy.sum()),
                 "held_out_faulty": int((~healthy).sum())},
        "options": {**asdict(options), "holdout": holdout,
                    "threshold_approximation": threshold_approximation,
                    "thresholds": threshold_rule.describe()},
        "history": {"train_loss": history.train_loss, "val_loss": history.val_loss,
                    "best_epoch": history.best_epoch, "stopped_early": history.stopped_early},
        "onnx_vs_torch_max_abs": max_abs,
        "onnx_vs_torch_scaled": worst,
        "tolerance": export.TOLERANCE,
        "opset": export.OPSET,
        "statistics": {k: v for k, v in preprocessing_of(params).items()
                       if k in ("mean", "std", "raw_std", "thresholds")},
        "held_out": {
            "false_alarm_rate": float(flagged[healthy].mean()) if healthy.any() else None,
            "detection_rate": {label: float(flagged[labels == label].mean())
                               for label in by_label if label != ds.HEALTHY},
            "mean_errors": {label: errors.mean(axis=0).tolist()
                            for label, errors in by_label.items()},
        },
        "golden_pairs": int(len(golden_in)),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "files": {name: hashlib.sha256((out / name).read_bytes()).hexdigest()
                  for name in ("model.onnx", *files)},
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
