"""A simulated wind farm that produces rows like the reference dataset's, healthy or faulty.

Pure numpy, no I/O and no asyncio: the simulator source plugin calls :meth:`WindFarm.tick`
on its own clock and ``edged simulate`` publishes :meth:`WindFarm.records`.

Healthy data is built to look, to the reference model and its statistics
(docs/windturbine.md), like the turbine it was trained on: slowly varying wind with gusts and
turbulence, a rotor that follows it with inertia, a generator voltage that follows the rotor,
and a nacelle that vibrates a little more as the rotor speeds up. Faults overwrite readings
exactly as the reference's simulator does, so detections here mean the same as there.

Determinism: every random number comes from a stream of its own (one per purpose), drawn in
a fixed amount per tick, so ``ticks(n)`` equals ``n`` calls of ``tick()`` bit for bit and a
fault never changes the healthy readings of the other columns or turbines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from edged.windturbine.layout import DATASET_COLUMNS, FAULT_KINDS

__all__ = ["DRIFT_KINDS", "Drift", "Fault", "WindFarm", "parse_drifts", "parse_schedule"]

_COL = {name: i for i, name in enumerate(DATASET_COLUMNS)}
_TEXT_COLUMNS = ("nanoId", "turbineId", "eventTime")
_INT_COLUMNS = ("arduino_timestamp", "nanoFreemem")
# Columns each fault overwrites, and the exclusive upper bound of its uniform values.
_FAULT_COLUMNS: dict[str, tuple[tuple[int, ...], float]] = {
    "vibration": (tuple(_COL[c] for c in ("qw", "qx", "qy", "qz")), 100.0),
    "rotation": ((_COL["rps"],), 100.0),
    "voltage": ((_COL["voltage"],), 10000.0),
}
# voltage faults are integers (the reference draws randint), the others real numbers.
_INTEGER_FAULTS = frozenset({"voltage"})

GRAVITY = 9.81  # m/s²

# -- Climate and machine constants. The wind, rotor and voltage levels and spreads are fitted
# to the reference statistics; the rest only has to be plausible and stay well-behaved.
WIND_MEAN = 2.15  # anemometer rps, the reference mean
# (tau seconds, stationary std) of the farm-wide Ornstein-Uhlenbeck states, in _FARM order.
_FARM_OU = {
    "wind": (120.0, 0.22),  # weather-scale wind changes, shared by every turbine
    "direction": (300.0, 0.45),  # wind direction, which the nacelles yaw to follow
    "ambtemp": (900.0, 0.5),
    "humidity": (900.0, 2.0),
    "pressure": (1800.0, 1.0),
}
# Per-turbine OU states, in _TURB order.
_TURBINE_OU = {
    "wind": (30.0, 0.20),  # local wind (wakes, terrain) drifting around the farm's
    "turbulence": (1.0, 0.12),
    "yaw_error": (20.0, 0.05),  # the yaw drive lags the wind direction
    "gas": (60.0, 4.0),
}
_SITE_WIND_STD = 0.10  # fixed per-turbine wind offset (some sites are windier)
# Gusts: (rate per second, amplitude range rps, duration range seconds).
_FARM_GUSTS = (1 / 40, (0.3, 0.8), (2.0, 6.0))
_TURBINE_GUSTS = (1 / 90, (0.2, 0.5), (1.5, 4.0))
_ANEMOMETER_NOISE = 0.10

# Rotor: rps = gain * (wind - cut_in), reached with first-order lag (rotor inertia).
# gain and cut_in put the healthy mean at the reference's 1.61 rps.
_ROTOR_GAIN = 1.45
_ROTOR_CUT_IN = WIND_MEAN - 1.61 / _ROTOR_GAIN
_ROTOR_TAU = 1.5
_ROTOR_NOISE = 0.12
_GAIN_SPREAD = 0.03  # relative turbine-to-turbine spread of rotor and generator gains
_VOLTS_PER_RPS = 47.79 / 1.61  # mV per rps: the reference means' ratio
_VOLTAGE_NOISE = 6.0

# Orientation (radians): mounting tilt plus vibration that grows with rotor speed.
_ROLL_MEAN, _PITCH_MEAN, _YAW_MEAN = -0.008, 0.0012, -0.107
_MOUNT_STD = 0.002
_VIBRATION_STD = (0.011, 0.003)  # std = a + b * rps: grows gently, so spikes stay noise
_YAW_NOISE = 0.01
_GRAVITY_NOISE = 0.01
_ACCEL_STD = (0.02, 0.02)  # m/s², std = a + b * rps

# Gearbox warms towards ambient + a + b * rps over many minutes.
_GEARBOX_RISE = (9.0, 4.0)
_GEARBOX_TAU = 600.0
_ENV_MEANS = {"ambtemp": 20.0, "humidity": 50.0, "pressure": 1013.0, "gas": 100.0}
_ENV_OFFSET_STD = {"ambtemp": 0.3, "humidity": 1.5, "pressure": 0.3, "gas": 8.0}
_ENV_NOISE = {"gearboxtemp": 0.05, "ambtemp": 0.03, "humidity": 0.2, "pressure": 0.05, "gas": 0.5}
_FREEMEM = (1150, 1250, 32, 0.05)  # base range, dip size bytes, dip probability per tick

_FARM = tuple(_FARM_OU)
_TURB = tuple(_TURBINE_OU)
# Per-tick measurement noises, one standard normal per turbine each, in this order.
_NOISES = (
    "wind", "rps", "voltage", "roll", "pitch", "yaw", "gx", "gy", "gz", "ax", "ay", "az",
    "gearboxtemp", "ambtemp", "humidity", "pressure", "gas",
)  # fmt: skip
_NOISE = {name: i for i, name in enumerate(_NOISES)}


@dataclass(frozen=True)
class Drift:
    """One slow drift of turbine ``turbine``: nothing before ``start``, growing linearly
    to its full size at ``end``, and staying there (worn parts do not mend themselves).

    ``bias``: the voltage sensor reads high by up to ``DRIFT_SIZES['bias']`` volts;
    ``bearing``: the nacelle's vibration (roll and pitch) grows by up to that many times
    its healthy amplitude;
    ``wind``: the wind regime shifts, wind, rotor speed and voltage up to that fraction
    higher. None of them draws a random number: the healthy rows stay the same."""

    turbine: int
    kind: str
    start: float
    end: float

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"unknown drift kind {self.kind!r} (expected "
                             f"{', '.join(DRIFT_KINDS)})")
        if not self.end > self.start:
            raise ValueError(f"drift {self.kind} on turbine {self.turbine} must end after "
                             "it starts")


#: Each drift's full size (see Drift): 2 training std of voltage; 4x the vibration; +40 %.
DRIFT_SIZES = {"bias": 32.0, "bearing": 3.0, "wind": 0.4}
DRIFT_KINDS = tuple(DRIFT_SIZES)
#: How long a drift started by command takes to grow to its full size: long enough to
#: watch it grow, short enough for a demo.
DRIFT_RAMP_S = 60.0


@dataclass(frozen=True)
class Fault:
    """One fault: ``kind`` overwrites turbine ``turbine``'s readings for start <= t < end."""

    turbine: int
    kind: str
    start: float
    end: float

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (expected {_kinds_text()})")
        if isinstance(self.turbine, bool) or not isinstance(self.turbine, int | np.integer):
            raise ValueError(f"turbine must be an integer, got {self.turbine!r}")
        if self.turbine < 0:
            raise ValueError(f"turbine must be >= 0, got {self.turbine}")
        if not (math.isfinite(self.start) and self.start >= 0):
            raise ValueError(f"start must be a finite time >= 0 s, got {self.start!r}")
        if math.isnan(self.end) or self.end <= self.start:
            raise ValueError(f"end ({self.end!r} s) must come after start ({self.start!r} s)")

    def active(self, t: float) -> bool:
        return self.start <= t < self.end


def _kinds_text() -> str:
    return ", ".join(FAULT_KINDS[:-1]) + " or " + FAULT_KINDS[-1]


class _Gusts:
    """Independent gust channels: each occasionally blows a sin² bump of random size/length.

    A channel ignores new arrivals while it is still blowing, so gusts never stack.
    """

    UNIFORMS = 3  # per channel per tick: arrival, amplitude, duration

    def __init__(self, channels: int, spec: tuple, dt: float) -> None:
        rate, self._amp, self._dur = spec
        self._p = rate * dt
        self._dt = dt
        # Idle state: age >= duration. Duration never 0, so age / duration is always finite.
        self.age = np.ones(channels)
        self.duration = np.ones(channels)
        self.amplitude = np.zeros(channels)

    @property
    def mean(self) -> float:
        """Long-run average added to the wind (mean of sin² is 1/2)."""
        rate = self._p / self._dt
        return rate * float(np.mean(self._dur)) * float(np.mean(self._amp)) / 2

    def step(self, u: np.ndarray) -> np.ndarray:
        """Advance one tick with (3, channels) uniforms; the gusts' current values."""
        self.age += self._dt
        start = (self.age >= self.duration) & (u[0] < self._p)
        lo, hi = self._amp
        self.amplitude = np.where(start, lo + (hi - lo) * u[1], self.amplitude)
        lo, hi = self._dur
        self.duration = np.where(start, lo + (hi - lo) * u[2], self.duration)
        self.age = np.where(start, 0.0, self.age)
        phase = np.minimum(self.age / self.duration, 1.0)
        blowing = self.age < self.duration
        return self.amplitude * np.sin(np.pi * phase) ** 2 * blowing


def _ou_coefficients(spec: dict[str, tuple[float, float]], dt: float) -> tuple:
    """Exact discretisation of dx = -x/tau dt + noise: x' = a x + b z keeps std stationary."""
    tau = np.array([s[0] for s in spec.values()])
    std = np.array([s[1] for s in spec.values()])
    a = np.exp(-dt / tau)
    return a, std * np.sqrt(1 - a * a), std


def _quaternion(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> tuple:
    """ZYX (yaw, pitch, roll) Euler angles -> (qw, qx, qy, qz), inverse of the reference's."""
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    return (
        cr * cp * cy + sr * sp * sy,
        sr * cp * cy - cr * sp * sy,
        cr * sp * cy + sr * cp * sy,
        cr * cp * sy - sr * sp * cy,
    )


class WindFarm:
    """``turbines`` simulated turbines sampled at ``rate_hz``; see the module docstring."""

    def __init__(
        self,
        turbines: int = 5,
        rate_hz: float = 20.0,
        seed: int | None = None,
        faults: Sequence[Fault] = (),
        farm_id: str = "farm",
        drifts: Sequence[Drift] = (),
    ) -> None:
        if isinstance(turbines, bool) or not isinstance(turbines, int) or turbines < 1:
            raise ValueError(f"turbines must be a positive integer, got {turbines!r}")
        if not (isinstance(rate_hz, int | float) and math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive number, got {rate_hz!r}")
        self.rate_hz = float(rate_hz)
        self.farm_id = farm_id
        self.turbine_ids = [f"turbine-{i}" for i in range(turbines)]
        self._n = turbines
        self._dt = 1.0 / self.rate_hz
        self._tick = 0
        self._faults: list[Fault] = []
        for fault in faults:
            self._add_fault(fault)
        for drift in drifts:
            if drift.turbine >= turbines:
                raise ValueError(f"{drift}: turbine {drift.turbine} out of range "
                                 f"0..{turbines - 1}")
        self.drifts = tuple(drifts)

        streams = np.random.SeedSequence(seed).spawn(3 + len(FAULT_KINDS))
        init, self._normals, self._uniforms, *fault_streams = map(np.random.default_rng, streams)
        # One stream per fault kind, so a fault's draws never shift another's.
        self._fault_rng = dict(zip(FAULT_KINDS, fault_streams, strict=True))
        self._farm_a, self._farm_b, farm_std = _ou_coefficients(_FARM_OU, self._dt)
        self._turb_a, self._turb_b, turb_std = _ou_coefficients(_TURBINE_OU, self._dt)
        self._farm_gusts = _Gusts(1, _FARM_GUSTS, self._dt)
        self._turbine_gusts = _Gusts(turbines, _TURBINE_GUSTS, self._dt)
        self._init_turbines(init, farm_std, turb_std)

    # -- construction -------------------------------------------------------------------------

    def _init_turbines(self, rng: np.random.Generator, farm_std, turb_std) -> None:
        """Fixed per-turbine properties, and states drawn from their stationary distributions
        so the very first rows are already typical (no warm-up transient for the model)."""
        n = self._n
        gusts = self._farm_gusts.mean + self._turbine_gusts.mean
        self._wind_base = WIND_MEAN - gusts + _SITE_WIND_STD * rng.standard_normal(n)
        self._rotor_gain = _ROTOR_GAIN * (1 + _GAIN_SPREAD * rng.standard_normal(n))
        self._volts_per_rps = _VOLTS_PER_RPS * (1 + _GAIN_SPREAD * rng.standard_normal(n))
        self._mount = (
            _ROLL_MEAN + _MOUNT_STD * rng.standard_normal(n),
            _PITCH_MEAN + _MOUNT_STD * rng.standard_normal(n),
        )
        self._env_offset = {
            name: mean + std * rng.standard_normal(n)
            for (name, mean), std in zip(_ENV_MEANS.items(), _ENV_OFFSET_STD.values(), strict=True)
        }
        lo, hi, _, _ = _FREEMEM
        self._freemem = rng.integers(lo, hi, n, endpoint=True).astype(np.float64)
        # millis() since each board booted: up to a day ago.
        self._boot_ms = rng.integers(10_000, 86_400_000, n).astype(np.float64)
        self._farm_state = farm_std * rng.standard_normal(len(_FARM))
        self._turb_state = turb_std[:, None] * rng.standard_normal((len(_TURB), n))
        self._rotor = self._rotor_target(self._wind_true(np.zeros(n)))
        ambient = _ENV_MEANS["ambtemp"] + self._farm_state[_FARM.index("ambtemp")]
        self._gearbox = self._gearbox_target(ambient, self._rotor) + rng.standard_normal(n)

    def _add_fault(self, fault: Fault) -> None:
        if fault.turbine >= self._n:
            raise ValueError(f"{fault}: turbine {fault.turbine} out of range 0..{self._n - 1}")
        self._faults.append(fault)

    # -- public state ------------------------------------------------------------------------

    @property
    def time(self) -> float:
        """Simulated seconds elapsed; also the sample time of the next row."""
        return self._tick / self.rate_hz

    @property
    def turbines(self) -> int:
        return self._n

    @property
    def faults(self) -> tuple[Fault, ...]:
        """Faults active now or scheduled later (ended ones are forgotten)."""
        now = self.time
        return tuple(f for f in self._faults if f.end > now)

    def active_faults(self, turbine: int) -> set[str]:
        """Kinds of fault that will overwrite ``turbine``'s next row."""
        self._check_turbine(turbine)
        now = self.time
        return {f.kind for f in self._faults if f.turbine == turbine and f.active(now)}

    def inject(self, turbine: int, kind: str, duration: float | None = None) -> None:
        """Start a fault with the next row, for ``duration`` seconds or until :meth:`clear`."""
        self._check_turbine(turbine)
        if duration is not None and not duration > 0:
            raise ValueError(f"duration must be positive seconds or None, got {duration!r}")
        end = math.inf if duration is None else self.time + duration
        self._add_fault(Fault(turbine, kind, self.time, end))

    def clear(self, turbine: int, kind: str | None = None) -> None:
        """End ``turbine``'s active faults (of one ``kind``, or all) before the next row.

        Faults scheduled to start later are kept: clearing answers what is wrong now.
        """
        self._check_turbine(turbine)
        if kind is not None and kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (expected {_kinds_text()})")
        now = self.time
        kept = []
        for f in self._faults:
            if f.turbine == turbine and kind in (None, f.kind) and f.active(now):
                if f.start < now:
                    kept.append(replace(f, end=now))
                continue  # cleared before its first row: it never happened
            kept.append(f)
        self._faults = kept

    def active_drifts(self, turbine: int) -> set[str]:
        """Kinds of drift that have begun on ``turbine`` (and stay until ended)."""
        self._check_turbine(turbine)
        now = self.time
        return {d.kind for d in self.drifts if d.turbine == turbine and d.start <= now}

    def start_drift(self, turbine: int, kind: str, ramp_s: float = DRIFT_RAMP_S) -> None:
        """Begin a drift of ``turbine`` with the next row, at its full size after
        ``ramp_s`` seconds (by command: a schedule's drifts are given at construction)."""
        self._check_turbine(turbine)
        self.drifts = (*self.drifts, Drift(turbine, kind, self.time, self.time + ramp_s))

    def end_drift(self, turbine: int, kind: str) -> None:
        """Mend ``turbine``'s drifts of ``kind`` at once, begun or scheduled."""
        self._check_turbine(turbine)
        if kind not in DRIFT_KINDS:  # a misspelt kind would mend nothing, silently
            raise ValueError(f"unknown drift kind {kind!r} (expected {', '.join(DRIFT_KINDS)})")
        self.drifts = tuple(d for d in self.drifts
                            if not (d.turbine == turbine and d.kind == kind))

    def _check_turbine(self, turbine: int) -> None:
        if isinstance(turbine, bool) or not isinstance(turbine, int | np.integer):
            raise ValueError(f"turbine must be an integer, got {turbine!r}")
        if not 0 <= turbine < self._n:
            raise ValueError(f"turbine {turbine} out of range 0..{self._n - 1}")

    # -- simulation --------------------------------------------------------------------------

    def tick(self) -> np.ndarray:
        """Advance one sample period: (turbines, 23) float64 rows in DATASET_COLUMNS layout.

        nanoId, turbineId and eventTime are NaN here; :meth:`records` fills them in.
        """
        return self.ticks(1)[0]

    def ticks(self, n: int) -> np.ndarray:
        """``n`` ticks at once, (n, turbines, 23): the same rows as ``n`` calls of tick()."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        n = int(n)
        t = self._n
        normals = self._normals.standard_normal((n, len(_FARM) + (len(_TURB) + len(_NOISES)) * t))
        farm_z = normals[:, : len(_FARM)]
        turb_z = normals[:, len(_FARM) :].reshape(n, len(_TURB) + len(_NOISES), t)
        width = _Gusts.UNIFORMS * (1 + t) + t
        uniforms = self._uniforms.random((n, width))
        gust_u = uniforms[:, : _Gusts.UNIFORMS * (1 + t)].reshape(n, _Gusts.UNIFORMS, 1 + t)
        history = self._integrate(farm_z, turb_z[:, : len(_TURB)], gust_u)
        rows = self._observe(history, turb_z[:, len(_TURB) :], uniforms[:, -t:],
                             self._drift_progress(n))
        self._apply_faults(rows)
        self._tick += n
        now = self.time
        self._faults = [f for f in self._faults if f.end > now]
        return rows

    def _wind_true(self, gust: np.ndarray) -> np.ndarray:
        """Wind at each rotor (no anemometer noise) from the current states and gusts."""
        farm = self._farm_state[_FARM.index("wind")]
        local = self._turb_state[_TURB.index("wind")] + self._turb_state[_TURB.index("turbulence")]
        return np.maximum(self._wind_base + farm + local + gust, 0.0)

    def _rotor_target(self, wind: np.ndarray) -> np.ndarray:
        return self._rotor_gain * np.maximum(wind - _ROTOR_CUT_IN, 0.0)

    @staticmethod
    def _gearbox_target(ambient, rotor: np.ndarray) -> np.ndarray:
        rise, per_rps = _GEARBOX_RISE
        return ambient + rise + per_rps * rotor

    def _integrate(self, farm_z, turb_z, gust_u) -> dict[str, np.ndarray]:
        """Step the stateful physics tick by tick (the recurrences cannot be vectorised over
        time without changing the floating-point result); record what the sensors need."""
        n, t = farm_z.shape[0], self._n
        wind, rotor, gearbox = (np.empty((n, t)) for _ in range(3))
        farm = np.empty((n, len(_FARM)))
        turb = np.empty((n, len(_TURB), t))
        rotor_alpha = -math.expm1(-self._dt / _ROTOR_TAU)
        gear_alpha = -math.expm1(-self._dt / _GEARBOX_TAU)
        ambtemp = _FARM.index("ambtemp")
        turb_a, turb_b = self._turb_a[:, None], self._turb_b[:, None]
        for k in range(n):
            self._farm_state = self._farm_a * self._farm_state + self._farm_b * farm_z[k]
            self._turb_state = turb_a * self._turb_state + turb_b * turb_z[k]
            farm_gust = self._farm_gusts.step(gust_u[k, :, :1])
            gust = farm_gust + self._turbine_gusts.step(gust_u[k, :, 1:])
            wind[k] = self._wind_true(gust)
            self._rotor = self._rotor + rotor_alpha * (self._rotor_target(wind[k]) - self._rotor)
            ambient = _ENV_MEANS["ambtemp"] + self._farm_state[ambtemp]
            target = self._gearbox_target(ambient, self._rotor)
            self._gearbox = self._gearbox + gear_alpha * (target - self._gearbox)
            rotor[k], gearbox[k] = self._rotor, self._gearbox
            farm[k], turb[k] = self._farm_state, self._turb_state
        return {"wind": wind, "rotor": rotor, "gearbox": gearbox, "farm": farm, "turb": turb}

    def _drift_progress(self, n: int) -> dict[str, np.ndarray]:
        """(n, turbines) in [0, 1] for each drift kind: how far each drift has grown at
        each of the next n rows (0 before it starts, 1 from its end on)."""
        t = (self._tick + np.arange(n)) / self.rate_hz
        progress = {kind: np.zeros((n, self._n)) for kind in DRIFT_KINDS}
        for d in self.drifts:
            grown = np.clip((t - d.start) / (d.end - d.start), 0.0, 1.0)
            progress[d.kind][:, d.turbine] = np.maximum(progress[d.kind][:, d.turbine], grown)
        return progress

    def _observe(self, h: dict[str, np.ndarray], noise: np.ndarray, mem_u,
                 drift: dict[str, np.ndarray]) -> np.ndarray:
        """What the sensors report for the integrated states: (n, turbines, 23)."""
        n, t = h["wind"].shape
        rows = np.full((n, t, len(DATASET_COLUMNS)), np.nan)

        def put(column: str, value) -> None:
            rows[:, :, _COL[column]] = value

        def z(name: str) -> np.ndarray:
            return noise[:, _NOISE[name]]

        def farm(name: str) -> np.ndarray:
            return h["farm"][:, _FARM.index(name), None]

        # A changed wind regime: more wind, so a faster rotor and a higher voltage.
        regime = 1.0 + DRIFT_SIZES["wind"] * drift["wind"]
        rotor = h["rotor"] * regime
        ticks = self._tick + np.arange(n)
        put("arduino_timestamp", self._boot_ms + np.floor(ticks * 1000.0 / self.rate_hz)[:, None])
        _, _, dip, p_dip = _FREEMEM
        put("nanoFreemem", self._freemem - dip * (mem_u < p_dip))
        put("wind_speed_rps",
            np.maximum(h["wind"] * regime + _ANEMOMETER_NOISE * z("wind"), 0.0))
        put("rps", np.maximum(rotor + _ROTOR_NOISE * z("rps"), 0.0))
        put("voltage", np.maximum(self._volts_per_rps * rotor + _VOLTAGE_NOISE * z("voltage"), 0)
            + DRIFT_SIZES["bias"] * drift["bias"])
        self._observe_motion(put, z, farm, h["turb"], rotor,
                             1.0 + DRIFT_SIZES["bearing"] * drift["bearing"])
        put("gearboxtemp", h["gearbox"] + _ENV_NOISE["gearboxtemp"] * z("gearboxtemp"))
        ambient = self._env_offset["ambtemp"] + farm("ambtemp")
        put("ambtemp", ambient + _ENV_NOISE["ambtemp"] * z("ambtemp"))
        # Warmer air holds the same water at a lower relative humidity.
        humidity = self._env_offset["humidity"] + farm("humidity") - 2.0 * (ambient - 20.0)
        put("humidity", np.clip(humidity + _ENV_NOISE["humidity"] * z("humidity"), 0, 100))
        pressure = self._env_offset["pressure"] + farm("pressure")
        put("pressure", pressure + _ENV_NOISE["pressure"] * z("pressure"))
        gas = self._env_offset["gas"] + h["turb"][:, _TURB.index("gas")]
        put("gas", np.maximum(gas + _ENV_NOISE["gas"] * z("gas"), 0.0))
        return rows

    def _observe_motion(self, put, z, farm, turb: np.ndarray, rotor: np.ndarray,
                        wear: np.ndarray) -> None:
        """Orientation quaternion, gravity and linear acceleration of each nacelle;
        ``wear``: each row's vibration gain (a worn bearing's drift, else 1)."""
        vibration = (_VIBRATION_STD[0] + _VIBRATION_STD[1] * rotor) * wear
        roll = self._mount[0] + vibration * z("roll")
        pitch = self._mount[1] + vibration * z("pitch")
        heading = _YAW_MEAN + farm("direction") + turb[:, _TURB.index("yaw_error")]
        yaw = heading + _YAW_NOISE * z("yaw")
        quaternion = _quaternion(roll, pitch, yaw)
        for column, value in zip(("qw", "qx", "qy", "qz"), quaternion, strict=True):
            put(column, value)
        # Gravity seen in the sensor frame (yaw does not change it).
        gravity = (
            -GRAVITY * np.sin(pitch),
            GRAVITY * np.sin(roll) * np.cos(pitch),
            GRAVITY * np.cos(roll) * np.cos(pitch),
        )
        shake = _ACCEL_STD[0] + _ACCEL_STD[1] * rotor
        for axis, g in zip("xyz", gravity, strict=True):
            put(f"g{axis}", g + _GRAVITY_NOISE * z(f"g{axis}"))
            put(f"a{axis}", shake * z(f"a{axis}"))

    def _fault_mask(self, n: int) -> np.ndarray:
        """(n, turbines, kinds) bool: which faults cover each of the next n rows."""
        mask = np.zeros((n, self._n, len(FAULT_KINDS)), dtype=bool)
        if not self._faults or n == 0:
            return mask
        times = (self._tick + np.arange(n)) / self.rate_hz
        start = np.array([f.start for f in self._faults])
        end = np.array([f.end for f in self._faults])
        turbine = np.array([f.turbine for f in self._faults])
        kind = np.array([FAULT_KINDS.index(f.kind) for f in self._faults])
        row, which = np.nonzero((start <= times[:, None]) & (times[:, None] < end))
        mask[row, turbine[which], kind[which]] = True
        return mask

    def _apply_faults(self, rows: np.ndarray) -> None:
        """Overwrite faulty readings like the reference does; draws only for faulty rows, in
        (tick, turbine) order, so batching does not change which value lands where."""
        mask = self._fault_mask(rows.shape[0])
        for k, kind in enumerate(FAULT_KINDS):
            where = mask[:, :, k]
            count = int(where.sum())
            if not count:
                continue
            columns, high = _FAULT_COLUMNS[kind]
            values = high * self._fault_rng[kind].random((count, len(columns)))
            if kind in _INTEGER_FAULTS:
                values = np.floor(values)
            rows[where[:, :, None] & _column_mask(columns)] = values.ravel()

    # -- output ------------------------------------------------------------------------------

    def records(self, rows: np.ndarray, wall_time: float) -> list[list[str]]:
        """Rows as the dataset's 23 strings each, for CSV or JSON.

        ``rows`` is one tick, (turbines, 23), stamped ``wall_time`` (Unix seconds), or
        several, (n, turbines, 23), stamped ``wall_time + k / rate_hz``.
        """
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim == 2:
            rows = rows[None]
        if rows.ndim != 3 or rows.shape[1:] != (self._n, len(DATASET_COLUMNS)):
            raise ValueError(
                f"expected ({self._n}, {len(DATASET_COLUMNS)}) or "
                f"(n, {self._n}, {len(DATASET_COLUMNS)}) rows, got shape {rows.shape}"
            )
        out = []
        for k, tick_rows in enumerate(rows):
            stamp = _iso_time(wall_time + k / self.rate_hz)
            for turbine_id, values in zip(self.turbine_ids, tick_rows.tolist(), strict=True):
                out.append(self._record(turbine_id, stamp, values))
        return out

    def _record(self, turbine_id: str, stamp: str, values: list[float]) -> list[str]:
        record = list(map(_format_number, values))
        for column in _INT_COLUMNS:
            record[_COL[column]] = str(int(values[_COL[column]]))
        record[_COL["nanoId"]] = self.farm_id
        record[_COL["turbineId"]] = turbine_id
        record[_COL["eventTime"]] = stamp
        return record


def _column_mask(columns: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(len(DATASET_COLUMNS), dtype=bool)
    mask[list(columns)] = True
    return mask


# Seven significant digits carry everything the sensors resolve (and more than the float32
# model sees) without printing 17 digits of simulated noise; %-formatting through map() is
# about twice as fast as an f-string per value, which matters at 20,000 rows a second.
_format_number = "%.7g".__mod__


def _iso_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds")


# -- schedules --------------------------------------------------------------------------------

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_TIMES = re.compile(rf"{_NUMBER}\s*([-+])\s*{_NUMBER}")
_SCHEDULE_FORM = "TURBINE:KIND@START-END or TURBINE:KIND@START+DURATION (seconds)"


def parse_drifts(text: str) -> list[Drift]:
    """Parse e.g. ``"1:bias@60+600,2:bearing@0-3600"`` (the fault schedule's form, with
    the kinds of DRIFT_KINDS) into drifts; ValueError says which item is wrong."""
    if not text.strip():
        return []
    drifts = []
    for i, item in enumerate(text.split(","), start=1):
        head, at, times = item.strip().partition("@")
        turbine, _, kind = (s.strip() for s in head.partition(":"))
        if kind not in DRIFT_KINDS:
            raise ValueError(f"drift item {i} {item.strip()!r}: unknown drift kind {kind!r} "
                             f"(expected {', '.join(DRIFT_KINDS)})")
        # The same TURBINE:KIND@START-END / @START+DURATION grammar as a fault's.
        try:
            fault = _parse_item(i, f"{turbine}:{FAULT_KINDS[0]}{at}{times}")
        except ValueError as exc:
            why = str(exc).split(": ", 1)[-1]
            raise ValueError(f"drift item {i} {item.strip()!r}: {why}") from None
        drifts.append(Drift(fault.turbine, kind, fault.start, fault.end))
    return drifts


def parse_schedule(text: str) -> list[Fault]:
    """Parse e.g. ``"2:vibration@5-12,3:rotation@10-16,4:voltage@15+5"`` into faults.

    ``@START-END`` gives the end time, ``@START+DURATION`` the length; both in seconds of
    simulated time. ValueError says which item is wrong and why.
    """
    if not text.strip():
        return []
    return [_parse_item(i, item.strip()) for i, item in enumerate(text.split(","), start=1)]


def _parse_item(index: int, item: str) -> Fault:
    def fail(why: str) -> ValueError:
        return ValueError(f"schedule item {index} {item!r}: {why}")

    if not item:
        raise fail(f"empty; expected {_SCHEDULE_FORM}")
    head, at, times = item.partition("@")
    turbine_text, colon, kind = (s.strip() for s in head.partition(":"))
    if not colon or not at:
        raise fail(f"expected {_SCHEDULE_FORM}")
    if not turbine_text.isdecimal():
        raise fail(f"turbine {turbine_text!r} is not a non-negative integer")
    if kind not in FAULT_KINDS:
        raise fail(f"unknown fault kind {kind!r} (expected {_kinds_text()})")
    match = _TIMES.fullmatch(times.strip())
    if not match:
        raise fail(f"times {times.strip()!r} are not START-END or START+DURATION (seconds)")
    start, sign, other = float(match[1]), match[2], float(match[3])
    if sign == "+" and other <= 0:
        raise fail(f"duration must be positive, got {match[3]}")
    end = start + other if sign == "+" else other
    if end <= start:
        raise fail(f"ends at {match[3]} s, not after it starts at {match[1]} s")
    return Fault(int(turbine_text), kind, start, end)
