"""The config of a daemon watching a simulated farm with one fault (turbine-1 vibrating
from 2 s on), the daemon the watch and dashboard tests read from."""

from __future__ import annotations

from pathlib import Path

FAULTY = "turbine-1"

_FARM = """\
sources:
  farm:
    type: simulator
    turbines: {turbines}
    rate_hz: 20
    seed: 5
    history_s: 25
    faults: "1:vibration@2-600"
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx}}
    interval_s: 0.5
actuators:
  operator-log:
    type: log
    inputs: [turbines]
    debounce: 2
    cooldown_s: 600
"""


def faulty_farm(state_dir: Path, *, device: str, turbines: int, head: str = "") -> str:
    """The config text: device ``device``, ``turbines`` simulated turbines, one alarm on
    ``FAULTY``; ``head`` adds top-level lines (``log:``, ``dashboard:``, ...)."""
    return (f"device: {{id: {device}}}\nstate_dir: {state_dir}\n{head}"
            + _FARM.format(turbines=turbines))
