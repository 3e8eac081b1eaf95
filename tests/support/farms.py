"""The config of a daemon watching a simulated farm, by default with one fault
(turbine-1 vibrating from 2 s on): the daemon the watch and dashboard tests read from."""

from __future__ import annotations

from pathlib import Path

FAULTY = "turbine-1"

_FARM = """\
sources:
  farm:
    type: simulator
    turbines: {turbines}
    rate_hz: {rate_hz}
    seed: 5
    history_s: {history_s}
    faults: "{faults}"
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx}}
    interval_s: {interval_s}
    stale_after_s: {stale_after_s}
actuators:
  operator-log:
    type: log
    inputs: [turbines]
    debounce: 2
    cooldown_s: 600
"""


def faulty_farm(state_dir: Path, *, device: str, turbines: int, head: str = "",
                faults: str = f"{FAULTY.removeprefix('turbine-')}:vibration@2-600",
                rate_hz: float = 20, interval_s: float = 0.5,
                stale_after_s: float = 5) -> str:
    """The config text: device ``device``, ``turbines`` simulated turbines sending
    ``rate_hz`` rows a second each (the history a window needs sent at once), the
    ``faults`` schedule (default: one alarm on ``FAULTY``); ``head`` adds top-level lines
    (``log:``, ``dashboard:``, ...)."""
    return (f"device: {{id: {device}}}\nstate_dir: {state_dir}\n{head}"
            + _FARM.format(turbines=turbines, faults=faults, rate_hz=rate_hz,
                           history_s=500 / rate_hz, interval_s=interval_s,
                           stale_after_s=stale_after_s))
