"""Per-turbine ring buffers of feature rows (and, optionally, of the raw rows they were
computed from), written in batches, read in order."""

from __future__ import annotations

import numpy as np


class TurbineBuffers:
    """The last ``history`` feature rows of up to ``max_turbines`` turbines.

    One (turbines, history, features) array holds every ring, so a decision over many
    turbines gathers them with one fancy-indexing call instead of a Python loop.

    With ``inputs`` > 0 a second (turbines, history, inputs) array keeps the raw rows
    each feature row was computed from, in the same slots (pipeline capture's
    ``include_rows``); with 0 (the default) there is none and nothing is copied.

    Slots are always 0..len(names)-1: :meth:`remove` moves the last turbine into the slot
    it frees. Every slot from len(names) on is all zeros, so a turbine given one starts
    with an empty history (count 0: not ready until ``history`` rows of its own).
    """

    def __init__(self, history: int, features: int, max_turbines: int,
                 inputs: int = 0) -> None:
        self.history = history
        self.features = features
        self.inputs = inputs
        self.max_turbines = max_turbines
        self._capacity = min(max_turbines, 64)
        self._data = np.zeros((self._capacity, history, features))
        self._raw = np.zeros((self._capacity, history, inputs)) if inputs else None
        self._pos = np.zeros(self._capacity, dtype=np.int64)  # next write slot
        self.count = np.zeros(self._capacity, dtype=np.int64)  # rows ever written
        self.last_seen = np.zeros(self._capacity)  # monotonic time of the last row
        self.ids: dict[str, int] = {}
        self.names: list[str] = []

    def index(self, turbine: str) -> int | None:
        """The slot of ``turbine``, allocating one; None when ``max_turbines`` is reached."""
        slot = self.ids.get(turbine)
        if slot is not None:
            return slot
        if len(self.names) >= self.max_turbines:
            return None
        slot = len(self.names)
        if slot >= self._capacity:
            self._grow()
        self.ids[turbine] = slot
        self.names.append(turbine)
        return slot

    def remove(self, slot: int) -> int | None:
        """Forget the turbine in ``slot``. The last slot's turbine moves into it, its
        rows, position, count and time with it; returns the slot it moved from (None
        if ``slot`` was the last), for the caller to move its own per-slot state."""
        last = len(self.names) - 1
        del self.ids[self.names[slot]]
        moved = self.names.pop()
        arrays = self._per_slot()
        if slot != last:
            self.names[slot] = moved
            self.ids[moved] = slot
            for array in arrays:
                array[slot] = array[last]
        for array in arrays:
            array[last] = 0
        return None if slot == last else last

    def _per_slot(self) -> list[np.ndarray]:
        arrays = [self._data, self._pos, self.count, self.last_seen]
        return arrays if self._raw is None else [*arrays, self._raw]

    def _grow(self) -> None:
        new = min(self.max_turbines, self._capacity * 2)
        pad = new - self._capacity
        self._data = np.concatenate([self._data, np.zeros((pad, *self._data.shape[1:]))])
        if self._raw is not None:
            self._raw = np.concatenate([self._raw, np.zeros((pad, *self._raw.shape[1:]))])
        self._pos = np.concatenate([self._pos, np.zeros(pad, dtype=np.int64)])
        self.count = np.concatenate([self.count, np.zeros(pad, dtype=np.int64)])
        self.last_seen = np.concatenate([self.last_seen, np.zeros(pad)])
        self._capacity = new

    @property
    def keeps_raw(self) -> bool:
        return self._raw is not None

    def write(self, slots: np.ndarray, rows: np.ndarray, now: float,
              raw: np.ndarray | None = None) -> None:
        """Append ``rows[i]`` to turbine ``slots[i]``, keeping each turbine's order, and
        ``raw[i]`` to its raw ring when there is one (``raw`` is then required)."""
        if len(slots) == 0:
            return
        order = np.argsort(slots, kind="stable")
        slots, rows = slots[order], rows[order]
        if self._raw is not None:
            if raw is None:
                raise ValueError("these buffers keep raw rows: write() needs raw")
            raw = raw[order]
        unique, first, per_turbine = np.unique(slots, return_index=True, return_counts=True)
        rank = np.arange(len(slots)) - np.repeat(first, per_turbine)
        # Only the last `history` rows of a turbine survive; writing the others would make
        # two rows target one ring slot.
        keep = rank >= np.repeat(per_turbine, per_turbine) - self.history
        slots, rows, rank = slots[keep], rows[keep], rank[keep]
        ring = (self._pos[slots] + rank) % self.history
        self._data[slots, ring] = rows
        if self._raw is not None:
            self._raw[slots, ring] = raw[keep]  # type: ignore[index]
        self._pos[unique] = (self._pos[unique] + per_turbine) % self.history
        self.count[unique] += per_turbine
        self.last_seen[unique] = now

    def ready(self) -> np.ndarray:
        """Slots with a full history."""
        return np.flatnonzero(self.count[: len(self.names)] >= self.history)

    def gather(self, slots: np.ndarray) -> np.ndarray:
        """(len(slots), history, features), each turbine's rows oldest first."""
        return self._take(self._data, slots)

    def gather_raw(self, slots: np.ndarray) -> np.ndarray:
        """(len(slots), history, inputs): the raw rows behind :meth:`gather`'s, in the
        same order. Only for buffers made with ``inputs``."""
        if self._raw is None:
            raise ValueError("these buffers keep no raw rows (inputs=0)")
        return self._take(self._raw, slots)

    def _take(self, data: np.ndarray, slots: np.ndarray) -> np.ndarray:
        # Whole rows by their flat index: one take along the first axis is about twice
        # as fast as indexing (slot, ring position) pairs.
        rows = (slots[:, None] * self.history + self._offsets(slots)).ravel()
        width = data.shape[-1]
        return data.reshape(-1, width).take(rows, axis=0).reshape(len(slots), -1, width)

    def _offsets(self, slots: np.ndarray) -> np.ndarray:
        return (self._pos[slots, None] + np.arange(self.history)) % self.history
