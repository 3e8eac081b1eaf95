"""TurbineBuffers against a plain per-turbine model: one deque(maxlen=history) each."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from edged.runtime.buffers import TurbineBuffers

FEATURES = 3


class Model:
    """What TurbineBuffers must behave like, written the obvious way."""

    def __init__(self, history: int) -> None:
        self.history = history
        self.rows: dict[str, deque] = {}
        self.count: dict[str, int] = {}

    def write(self, turbines: list[str], rows: np.ndarray) -> None:
        for turbine, row in zip(turbines, rows, strict=True):
            self.rows.setdefault(turbine, deque(maxlen=self.history)).append(row.copy())
            self.count[turbine] = self.count.get(turbine, 0) + 1


def _write(buffers: TurbineBuffers, model: Model, turbines: list[str], rows: np.ndarray,
           now: float = 0.0) -> None:
    slots = np.array([buffers.index(t) for t in turbines], dtype=np.int64)
    buffers.write(slots, rows, now)
    model.write(turbines, rows)


def _check(buffers: TurbineBuffers, model: Model) -> None:
    assert set(buffers.names) == set(model.rows)
    ready = {buffers.names[s] for s in buffers.ready().tolist()}
    assert ready == {t for t, c in model.count.items() if c >= model.history}
    for turbine in model.rows:
        slot = buffers.ids[turbine]
        assert buffers.count[slot] == model.count[turbine]
    if ready:
        names = sorted(ready)
        gathered = buffers.gather(np.array([buffers.ids[t] for t in names]))
        assert gathered.shape == (len(names), model.history, FEATURES)
        for i, turbine in enumerate(names):
            np.testing.assert_array_equal(gathered[i], np.array(model.rows[turbine]),
                                          err_msg=turbine)


@pytest.mark.parametrize("seed", range(6))
def test_random_interleaved_writes_match_the_model(seed):
    rng = np.random.default_rng(seed)
    history = int(rng.integers(1, 12))
    turbines = [f"t{i}" for i in range(int(rng.integers(1, 150)))]
    buffers = TurbineBuffers(history, FEATURES, max_turbines=1000)
    model = Model(history)
    serial = 0
    for _ in range(60):
        # Batch sizes from empty to several histories' worth for one turbine.
        size = int(rng.integers(0, 4 * history * 3 + 2))
        if rng.random() < 0.3:
            # All rows for one or two turbines: batches larger than the history.
            chosen = rng.choice(turbines, size=min(2, len(turbines)), replace=False)
            batch = list(rng.choice(chosen, size=size))
        else:
            batch = list(rng.choice(turbines, size=size))
        # Each row carries a unique serial, so any reordering or loss shows.
        rows = np.stack([np.arange(serial, serial + size, dtype=np.float64),
                         rng.standard_normal(size), np.full(size, float(seed))], axis=1)
        serial += size
        _write(buffers, model, [str(t) for t in batch], rows)
        _check(buffers, model)


def test_gather_returns_oldest_first():
    buffers = TurbineBuffers(history=4, features=1, max_turbines=10)
    model = Model(4)
    for value in range(10):  # wraps the ring twice
        _write(buffers, model, ["a"], np.array([[float(value)]]))
    gathered = buffers.gather(np.array([buffers.ids["a"]]))
    assert gathered[0, :, 0].tolist() == [6.0, 7.0, 8.0, 9.0]


def test_batch_larger_than_history_keeps_its_last_rows_in_order():
    buffers = TurbineBuffers(history=5, features=1, max_turbines=10)
    _write(buffers, Model(5), ["a"] * 3, np.array([[1.0], [2.0], [3.0]]))
    rows = np.arange(100.0, 113.0)[:, None]
    _write(buffers, Model(5), ["a"] * 13, rows)
    slot = buffers.ids["a"]
    assert buffers.count[slot] == 16
    assert buffers.gather(np.array([slot]))[0, :, 0].tolist() == [108.0, 109.0, 110.0,
                                                                   111.0, 112.0]


def test_interleaved_turbines_in_one_batch_keep_their_own_order():
    buffers = TurbineBuffers(history=3, features=1, max_turbines=10)
    turbines = ["a", "b", "a", "c", "b", "a", "a", "b"]
    rows = np.arange(len(turbines), dtype=np.float64)[:, None]
    _write(buffers, Model(3), turbines, rows)
    gathered = buffers.gather(np.array([buffers.ids["a"], buffers.ids["b"]]))
    assert gathered[0, :, 0].tolist() == [2.0, 5.0, 6.0]
    assert gathered[1, :, 0].tolist() == [1.0, 4.0, 7.0]


def test_ready_needs_a_full_history():
    buffers = TurbineBuffers(history=3, features=1, max_turbines=10)
    _write(buffers, Model(3), ["a", "a", "b"], np.zeros((3, 1)))
    assert buffers.ready().tolist() == []
    _write(buffers, Model(3), ["a"], np.zeros((1, 1)))
    assert buffers.ready().tolist() == [buffers.ids["a"]]
    _write(buffers, Model(3), ["b"] * 2, np.zeros((2, 1)))
    assert sorted(buffers.ready().tolist()) == sorted([buffers.ids["a"], buffers.ids["b"]])


def test_growth_beyond_the_initial_capacity_keeps_every_ring():
    history = 4
    buffers = TurbineBuffers(history, FEATURES, max_turbines=500)
    initial = buffers._data.shape[0]
    model = Model(history)
    rng = np.random.default_rng(1)
    names = [f"t{i}" for i in range(300)]
    # Half a history for every turbine, then the rest: rings written before a growth
    # must survive it.
    for _ in range(2):
        for start in range(0, len(names), 37):
            chunk = names[start:start + 37] * (history // 2)
            _write(buffers, model, chunk, rng.standard_normal((len(chunk), FEATURES)))
    assert initial < 300 <= buffers._data.shape[0] <= 500
    assert len(buffers.names) == 300
    _check(buffers, model)


def test_index_is_stable_and_max_turbines_returns_none():
    buffers = TurbineBuffers(history=2, features=1, max_turbines=3)
    slots = [buffers.index(name) for name in ("a", "b", "c")]
    assert slots == [0, 1, 2]
    assert buffers.index("d") is None
    assert buffers.index("b") == 1, "known turbines keep their slot at the limit"
    assert buffers.names == ["a", "b", "c"]


def test_last_seen_is_set_for_written_turbines_only():
    buffers = TurbineBuffers(history=2, features=1, max_turbines=10)
    _write(buffers, Model(2), ["a", "b"], np.zeros((2, 1)), now=5.0)
    _write(buffers, Model(2), ["a"], np.zeros((1, 1)), now=9.0)
    assert buffers.last_seen[buffers.ids["a"]] == 9.0
    assert buffers.last_seen[buffers.ids["b"]] == 5.0


def test_empty_write_changes_nothing():
    buffers = TurbineBuffers(history=2, features=1, max_turbines=10)
    buffers.write(np.array([], dtype=np.int64), np.zeros((0, 1)), 1.0)
    assert buffers.names == []
    assert buffers.ready().tolist() == []


@pytest.mark.parametrize("seed", range(6))
def test_removals_interleaved_with_writes_match_the_model(seed):
    """An evicted turbine's slot goes to another (the last one moves into it), and a
    turbine given a freed slot never sees the rows of the one before: removal is the
    model forgetting the turbine."""
    rng = np.random.default_rng(seed)
    history = int(rng.integers(1, 6))
    turbines = [f"t{i}" for i in range(30)]
    buffers = TurbineBuffers(history, FEATURES, max_turbines=12, inputs=2)
    model = Model(history)
    serial = 0
    for _ in range(80):
        if buffers.names and rng.random() < 0.4:
            victim = str(rng.choice(buffers.names))
            slot, last = buffers.ids[victim], len(buffers.names) - 1
            moved = buffers.names[last]
            assert buffers.remove(slot) == (None if slot == last else last)
            assert victim not in buffers.ids and len(buffers.names) == last
            if slot != last:
                assert buffers.ids[moved] == slot and buffers.names[slot] == moved
            del model.rows[victim], model.count[victim]
        batch = [str(t) for t in rng.choice(turbines, size=int(rng.integers(0, 3 * history)))]
        batch = [t for t in batch if t in buffers.ids or buffers.index(t) is not None]
        rows = np.stack([np.arange(serial, serial + len(batch), dtype=np.float64),
                         rng.standard_normal(len(batch)), np.zeros(len(batch))], axis=1)
        serial += len(batch)
        slots = np.array([buffers.ids[t] for t in batch], dtype=np.int64)
        buffers.write(slots, rows, float(serial), raw=rows[:, :2])
        model.write(batch, rows)
        _check(buffers, model)
        # The raw ring moves with its turbine too.
        ready = buffers.ready()
        if len(ready):
            np.testing.assert_array_equal(buffers.gather_raw(ready),
                                          buffers.gather(ready)[:, :, :2])
    # Slots past the last are all zeros: the next turbine starts empty.
    known = len(buffers.names)
    assert not buffers.count[known:].any() and not buffers._data[known:].any()
