"""The Neo step: ONNX Runtime offline graph optimisation and int8 quantisation, gated on the
device's decisions and measured side by side.

Every candidate starts from the model with its stride-1 transposed convolutions rewritten
as convolutions (``edged_cloud.graph_rewrite``: the same maths in standard operators,
which ONNX Runtime runs faster). Candidates: ``graph`` (offline graph optimisation only),
``dynamic`` (int8 weights, activations quantised at run time) and ``static`` (int8 weights
and activations, ranges calibrated on healthy held-out windows). Each is judged by the
device's own decision rule (``edged.windturbine.features``: reconstruction errors against
the manifest's thresholds) on held-out windows, run through the device's session factory
(``edged.model.session``) as the ``onnx`` backend runs them (float32, ``batch`` windows
per call): a candidate passes when its decisions (all six feature flags of a window) agree
with the fp32 model's (the model as given, not rewritten) on at least ``min_agreement`` of
them. Speed is the median of ``repeats`` timed passes, fp32 and candidate interleaved,
same windows, batch and threads.

Why ``basic`` by default: ORT_ENABLE_BASIC rewrites with standard ONNX operators only
(constant folding, redundant nodes, Conv+BatchNorm/Add/Mul folded into Conv), so the saved
model runs on any ONNX Runtime version and on other runtimes an inference plugin may use.
EXTENDED fuses into ``com.microsoft`` contrib operators (FusedConv, ...) that only ONNX
Runtime executes, tied to the operator versions of the runtime that wrote them; ALL adds
layout transforms for this machine's SIMD width (NCHWc), which ONNX Runtime itself warns
are only valid on the same hardware. The device's session applies ALL online when it
loads the model, on its own CPU, so nothing is lost by saving less.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edged_cloud.errors import BadInput, CloudToolError
from edged_cloud.model_source import (
    GOLDEN,
    OPTIMIZE_REPORT,
    PREPROCESSING,
    REPORT,
    VALIDATION,
    ModelSource,
    predict,
    read_arrays,
    read_source,
    windows_of,
)

LEVELS = ("basic", "extended")
MODES = ("auto", "none", "dynamic", "static")
DEFAULT_MIN_AGREEMENT = 0.995
#: ``auto`` takes int8 only when it is this much faster than the graph-optimised fp32:
#: int8 changes the numbers, and a gain inside timing noise is not worth that.
AUTO_MIN_GAIN = 1.10
#: Windows timed per pass: enough batches for a stable median, a pass under a second.
BENCH_WINDOWS = 256


def _level(name: str) -> Any:
    import onnxruntime as ort

    return {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[name]


def offline_optimize(model: Path, out: Path, level: str) -> Path:
    """ONNX Runtime's graph optimisation at ``level``, saved to ``out``
    (SessionOptions.optimized_model_filepath)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = _level(level)
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return out


def quantize_dynamic(model: Path, out: Path, work: Path) -> Path:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as quantize

    # uint8 weights: on x86 without VNNI, int8 weights ran 3x slower than fp32 here.
    quantize(str(_prepared(model, work)), str(out), weight_type=QuantType.QUInt8)
    return out


def quantize_static(model: Path, out: Path, work: Path, calibration: np.ndarray) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
    )
    from onnxruntime.quantization import quantize_static as quantize

    name = _input_name(model)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{name: calibration[i:i + 16].astype(np.float32)}
                                  for i in range(0, len(calibration), 16)])

        def get_next(self) -> dict | None:
            return next(self._batches, None)

    # QOperator (QLinearConv ...), standard ONNX operators; it ran faster than QDQ here.
    quantize(str(_prepared(model, work)), str(out), Reader(), quant_format=QuantFormat.QOperator,
             activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
             calibrate_method=CalibrationMethod.MinMax)
    return out


def _prepared(model: Path, work: Path) -> Path:
    """The model with shapes inferred, as ONNX Runtime's quantiser wants it (once). ONNX's
    own shape inference, not the symbolic one: that needs sympy, which edged-cloud does not
    depend on, and a model of standard operators with one dynamic batch needs no more."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work / "prepared.onnx"
    if not prepared.exists():
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
    return prepared


def rewritten(model: Path, out: Path) -> tuple[Path, dict[str, Any]]:
    """The model with its stride-1 transposed convolutions as convolutions, saved to
    ``out``, and what was rewritten; the model itself where nothing was, or where ONNX's
    checker or shape inference refuses the model (the report says why: the candidates are
    then made from the model as it is, as before the rewrite existed)."""
    import onnx

    from edged_cloud.graph_rewrite import AS_CONV, rewrite

    try:
        done = rewrite(onnx.load(str(model)))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return model, {"rewritten": {}, "kept": {}, "skipped": str(exc)}
    if not done.rewritten[AS_CONV]:
        return model, done.as_report()
    onnx.save(done.model, str(out))
    return out, done.as_report()


def _input_name(model: Path) -> str:
    from edged.model.session import open_session

    return open_session(model).get_inputs()[0].name


class DecisionRule:
    """The device's decisions for a model's outputs: ``windturbine`` preprocessing's
    reconstruction errors against the manifest's thresholds."""

    def __init__(self, source: ModelSource) -> None:
        from edged.windturbine.features import WindTurbineParams, WindTurbinePreprocessor

        if source.preprocessing.get("type") != "windturbine":
            raise BadInput(f"{source.directory}: preprocessing "
                           f"{source.preprocessing.get('type')!r}: the quality gate knows "
                           "the windturbine decision rule only")
        try:
            params = WindTurbineParams.from_manifest(source.preprocessing)
        except ValueError as exc:
            raise BadInput(f"{source.directory}: preprocessing: {exc}") from None
        if params.windows_per_buffer != 1:
            raise BadInput(f"{source.directory}: {params.windows_per_buffer} windows per "
                           "decision; the gate takes one window per decision")
        self.pre = WindTurbinePreprocessor(params)

    def decide(self, windows: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        """(n, 6) bool: which features of each window's decision are anomalous."""
        return self.pre.anomalies(self.pre.errors(windows, outputs, len(windows)))


def agreement(reference: np.ndarray, candidate: np.ndarray,
              labels: np.ndarray | None) -> dict[str, Any]:
    same = (reference == candidate).all(axis=1)
    found: dict[str, Any] = {
        "agreement": float(same.mean()),
        "feature_agreement": float((reference == candidate).mean()),
        "any_anomaly_agreement": float((reference.any(1) == candidate.any(1)).mean()),
        "disagreements": int((~same).sum()),
    }
    if labels is not None:
        found["by_label"] = {str(k): float(same[labels == k].mean())
                             for k in sorted(set(labels.tolist()))}
    return found


def bench(reference: Path, candidate: Path, windows: np.ndarray, *, batch: int, threads: int,
          repeats: int) -> tuple[float, float]:
    """Median microseconds per window of each model: the device's session factory, the same
    float32 batches, passes interleaved so that a busy moment hits both."""
    from edged.model.session import open_session

    sessions = [open_session(m, threads=threads) for m in (reference, candidate)]
    names = [s.get_inputs()[0].name for s in sessions]
    x = np.ascontiguousarray(windows[:BENCH_WINDOWS], dtype=np.float32)
    batches = [x[i:i + batch] for i in range(0, len(x), batch)]
    times: list[list[float]] = [[], []]
    for _ in range(repeats + 1):  # the first pass warms the caches and is dropped
        for k, (session, name) in enumerate(zip(sessions, names, strict=True)):
            start = time.perf_counter()
            for b in batches:
                session.run(None, {name: b})
            times[k].append(time.perf_counter() - start)
    per = [statistics.median(t[1:]) / len(x) * 1e6 for t in times]
    return per[0], per[1]


def needed_windows(min_agreement: float) -> int:
    """Windows needed before one disagreement can fail the gate."""
    return 1 if min_agreement >= 1.0 else math.ceil(1 / (1 - min_agreement) - 1e-9)


def optimize(source_dir: Path, out: Path, *, level: str = "basic", mode: str = "auto",
             min_agreement: float = DEFAULT_MIN_AGREEMENT, validation: Path | None = None,
             batch: int = 16, threads: int = 1, repeats: int = 15,
             calibration: int = 256) -> dict[str, Any]:
    """Optimise the model in ``source_dir`` into ``out``; return the report (``accepted``
    False when the chosen candidate misses the gate: nothing is written then)."""
    if level not in LEVELS or mode not in MODES:
        raise BadInput(f"level {level!r} / quantize {mode!r}: expected one of {LEVELS} / {MODES}")
    if not 0.0 < min_agreement <= 1.0:
        raise BadInput(f"--min-agreement {min_agreement}: a share in (0, 1]")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CloudToolError(f"{out} exists and is not empty; not overwriting it")
    source = read_source(source_dir)
    rule = DecisionRule(source)
    if validation is not None:
        found = read_arrays(validation, "inputs", optional=("labels",))
        windows = windows_of(validation, found["inputs"], source.inputs[0]["shape"])
        labels = found.get("labels")
    else:
        windows, labels = source.held_out()
    if labels is not None and labels.shape != (len(windows),):
        labels = None
    need = needed_windows(min_agreement)
    if len(windows) < need:
        raise BadInput(f"{len(windows)} validation windows cannot show {min_agreement:.2%} "
                       f"agreement (one disagreement must be able to fail it): give at "
                       f"least {need} (--validation FILE.npz with 'inputs')")
    dtype = source.inputs[0]["dtype"]
    decide = {}
    fp32 = rule.decide(windows, predict(source.model, windows, dtype=dtype, batch=batch,
                                        threads=threads))
    healthy = windows[~fp32.any(axis=1)]
    wanted = ["none", "dynamic", "static"] if mode == "auto" else [mode]
    with tempfile.TemporaryDirectory(prefix="edged-optimize-") as tmp:
        work = Path(tmp)
        made: dict[str, Path] = {}
        start, rewrites = rewritten(source.model, work / "rewritten.onnx")
        for name in wanted:
            if name == "none":
                made[name] = offline_optimize(start, work / "none.onnx", level)
                continue
            raw = work / f"{name}.raw.onnx"
            if name == "dynamic":
                quantize_dynamic(start, raw, work)
            else:
                if not len(healthy):
                    raise BadInput("no healthy validation window to calibrate int8 on")
                pick = np.unique(np.linspace(0, len(healthy) - 1, min(calibration, len(healthy)))
                                 .round().astype(int))
                quantize_static(start, raw, work, healthy[pick])
            made[name] = offline_optimize(raw, work / f"{name}.onnx", level)
        candidates = []
        for name, path in made.items():
            decide[name] = rule.decide(windows, predict(path, windows, dtype=dtype,
                                                        batch=batch, threads=threads))
            base_us, us = bench(source.model, path, windows, batch=batch, threads=threads,
                                repeats=repeats)
            found = agreement(fp32, decide[name], labels)
            candidates.append({"quantization": name, **found,
                               "passed": found["agreement"] >= min_agreement,
                               "fp32_us_per_window": round(base_us, 2),
                               "us_per_window": round(us, 2),
                               "speedup": round(base_us / us, 3),
                               "bytes": path.stat().st_size})
        chosen = _choose(candidates, mode)
        report: dict[str, Any] = {
            "model": {"name": source.name, "version": source.version},
            "source": str(source.directory), "out": str(out), "level": level,
            "graph_rewrite": rewrites,
            "quantization": chosen["quantization"], "agreement": chosen["agreement"],
            "min_agreement": min_agreement, "accepted": chosen["passed"],
            "speedup": chosen["speedup"],
            "fp32_us_per_window": chosen["fp32_us_per_window"],
            "optimized_us_per_window": chosen["us_per_window"],
            "windows": int(len(windows)), "fp32_anomaly_rate": float(fp32.any(1).mean()),
            "validation": str(validation or source.directory),
            "calibration_windows": int(min(calibration, len(healthy)))
            if "static" in made else None,
            "bench": {"batch": batch, "threads": threads, "repeats": repeats,
                      "windows": int(min(len(windows), BENCH_WINDOWS)),
                      "statistic": "median"},
            "candidates": candidates,
        }
        if chosen["passed"]:
            _write(source, out, made[chosen["quantization"]], report, validation)
    return report


def _choose(candidates: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    if mode != "auto":
        return candidates[0]
    graph = candidates[0]
    better = [c for c in candidates[1:] if c["passed"]
              and c["us_per_window"] * AUTO_MIN_GAIN <= graph["us_per_window"]]
    return min(better, key=lambda c: c["us_per_window"]) if better else graph


def _write(source: ModelSource, out: Path, model: Path, report: dict[str, Any],
           validation: Path | None) -> None:
    """An optimise output: the training output's layout (docs/cloud.md), the model
    optimised, plus optimize.json."""
    from edged_cloud.packaging import write_golden

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, out / "model.onnx")
    (out / PREPROCESSING).write_text(json.dumps(source.preprocessing, indent=2) + "\n")
    for name in (REPORT, VALIDATION):
        if (source.directory / name).is_file() and (source.directory / PREPROCESSING).is_file():
            shutil.copyfile(source.directory / name, out / name)
    if validation is not None:
        shutil.copyfile(validation, out / VALIDATION)
    if source.golden_inputs is not None:
        # The golden outputs of the model now in OUT, not of the one it came from.
        inputs = source.golden_inputs.astype(np.float32)
        write_golden(out / GOLDEN, inputs, predict(out / "model.onnx", inputs))
    (out / OPTIMIZE_REPORT).write_text(json.dumps(report, indent=2) + "\n")
