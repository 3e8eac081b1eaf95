"""The wind-turbine reference application's data layout: columns, features and groups.

Facts from the public workshop material (see docs/windturbine.md); every other module
takes its column positions and feature order from here.
"""

from __future__ import annotations

# The recorded dataset's 23 columns, in order.
DATASET_COLUMNS: tuple[str, ...] = (
    "nanoId", "turbineId", "arduino_timestamp", "nanoFreemem", "eventTime",
    "rps", "voltage", "qw", "qx", "qy", "qz",
    "gx", "gy", "gz", "ax", "ay", "az",
    "gearboxtemp", "ambtemp", "humidity", "pressure", "gas", "wind_speed_rps",
)  # fmt: skip

# The 20-field CSV line that AWS's successor sample publishes on `turbine/raw`.
SUCCESSOR_COLUMNS: tuple[str, ...] = (
    "arduino_timestamp", "nanoFreemem", "rps", "wind_speed_rps", "voltage",
    "qw", "qx", "qy", "qz", "gx", "gy", "gz", "ax", "ay", "az",
    "gearboxtemp", "ambtemp", "humidity", "pressure", "gas",
)  # fmt: skip

# The raw readings the model's features are computed from, in this order.
INPUTS: tuple[str, ...] = ("qx", "qy", "qz", "qw", "wind_speed_rps", "rps", "voltage")

# The model's six features, always in this order.
FEATURES: tuple[str, ...] = ("roll", "pitch", "yaw", "wind_speed_rps", "rps", "voltage")

# Feature groups shown to the operator (indices into FEATURES).
GROUPS: dict[str, tuple[int, ...]] = {
    "vibration": (0, 1, 2),
    "rotation": (3, 4),
    "voltage": (5,),
}

# The faults the reference simulator injects, named like the groups they disturb.
FAULT_KINDS: tuple[str, ...] = ("vibration", "rotation", "voltage")


def input_indices(columns: tuple[str, ...]) -> tuple[int, ...]:
    """Positions of INPUTS within a row laid out as `columns`."""
    return tuple(columns.index(name) for name in INPUTS)
