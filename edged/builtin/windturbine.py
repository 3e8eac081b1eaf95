"""Preprocessor ``windturbine``: the reference application's features and decision rule.

Parameters (statistics, thresholds, window sizes) come from the model's manifest, so a
new model brings its own; the config may only choose the denoise variant or override
thresholds for tuning.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from edged import hookimpl
from edged.plugin.components import BuildContext, Scores
from edged.plugin.config import PreprocessorConfig
from edged.plugin.registry import ComponentType
from edged.windturbine import layout
from edged.windturbine.features import WindTurbineParams, WindTurbinePreprocessor, raw_features


class WindTurbineConfig(PreprocessorConfig):
    type: Literal["windturbine"]
    denoise: Literal["model", "reference", "textbook"] = Field(
        "model",
        description="model: as the model's manifest says; reference: threshold the "
        "approximation too (the reference quirk); textbook: leave it alone.",
    )
    thresholds: list[float] | None = Field(
        None, min_length=6, max_length=6,
        description="Per-feature thresholds overriding the manifest's (tuning only).",
    )


class WindTurbineStage:
    """The wind-turbine preprocessor in the runtime's terms (see components.Preprocessor)."""

    features = layout.FEATURES
    groups = layout.GROUPS
    inputs = layout.INPUTS

    def __init__(self, params: WindTurbineParams) -> None:
        self.params = params
        self.history = params.buffer
        self._pre = WindTurbinePreprocessor(params)

    def row_features(self, inputs: np.ndarray) -> np.ndarray:
        return raw_features(inputs)

    def model_input(self, history: np.ndarray) -> np.ndarray:
        return self._pre.windows(history)

    def score(self, x: np.ndarray, y: np.ndarray, turbines: int) -> Scores:
        errors = self._pre.errors(x, y, turbines)
        return Scores(errors, self._pre.anomalies(errors), self.params.thresholds)


def params_for(config: WindTurbineConfig, manifest: dict[str, Any]) -> WindTurbineParams:
    preprocessing = dict(manifest.get("preprocessing") or {})
    if preprocessing.get("type", "windturbine") != "windturbine":
        raise ValueError(f"model {manifest.get('name')!r} expects preprocessing "
                         f"{preprocessing.get('type')!r}, not 'windturbine'")
    if config.denoise != "model":
        preprocessing["threshold_approximation"] = config.denoise == "reference"
    if config.thresholds is not None:
        preprocessing["thresholds"] = config.thresholds
    return WindTurbineParams.from_manifest(preprocessing)


def _build(config: WindTurbineConfig, ctx: BuildContext, /, *,
           manifest: dict[str, Any]) -> WindTurbineStage:
    return WindTurbineStage(params_for(config, manifest))


@hookimpl
def edged_component_types() -> list[ComponentType]:
    return [ComponentType.preprocessor("windturbine", WindTurbineConfig, _build,
                                       "quaternion to Euler, db6 denoise, normalise, windows; "
                                       "reconstruction-error rule per feature and group")]
