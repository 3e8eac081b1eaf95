"""The raw ring beside the feature ring (pipeline capture's ``include_rows``): the same
slots, rows and order as the features, and nothing at all when it is off."""

from __future__ import annotations

import numpy as np
import pytest

from edged.base.metrics import Counters
from edged.builtin.onnx import OnnxBackend, OnnxConfig
from edged.builtin.windturbine import WindTurbineConfig, WindTurbineStage, params_for
from edged.config import PipelineSpec
from edged.plugin.components import Readings
from edged.plugin.events import Round
from edged.runtime.buffers import TurbineBuffers
from edged.runtime.pipeline import Pipeline
from edged.windturbine import layout
from edged.windturbine.simulator import WindFarm

COLUMNS = np.array([layout.DATASET_COLUMNS.index(c) for c in layout.INPUTS])


@pytest.mark.parametrize("seed", range(4))
def test_raw_ring_follows_the_feature_ring_row_for_row(seed):
    """Feature row = -raw row, so any row of one ring in another place than its
    counterpart in the other shows; batches interleave turbines and overflow a history,
    and the turbines outgrow the initial capacity."""
    rng = np.random.default_rng(seed)
    history = int(rng.integers(1, 9))
    buffers = TurbineBuffers(history, 2, max_turbines=500, inputs=3)
    names = [f"t{i}" for i in range(int(rng.integers(1, 120)))]
    sent: dict[str, list[list[float]]] = {}
    serial = 0
    for _ in range(40):
        size = int(rng.integers(0, 3 * history + 2))
        batch = [str(t) for t in rng.choice(names, size=size)]
        raw = np.stack([np.arange(serial, serial + size, dtype=np.float64),
                        rng.standard_normal(size), np.full(size, float(seed))], axis=1)
        serial += size
        slots = np.array([buffers.index(t) for t in batch], dtype=np.int64)
        buffers.write(slots, -raw[:, :2], 0.0, raw)
        for turbine, row in zip(batch, raw.tolist(), strict=True):
            sent.setdefault(turbine, []).append(row)
    ready = buffers.ready()
    gathered, gathered_raw = buffers.gather(ready), buffers.gather_raw(ready)
    assert gathered_raw.shape == (len(ready), history, 3)
    np.testing.assert_array_equal(gathered, -gathered_raw[:, :, :2])
    for i, slot in enumerate(ready.tolist()):
        assert gathered_raw[i].tolist() == sent[buffers.names[slot]][-history:]


def test_no_raw_ring_unless_asked():
    buffers = TurbineBuffers(4, 2, max_turbines=10)
    assert not buffers.keeps_raw and buffers._raw is None
    buffers.write(np.array([buffers.index("a")]), np.zeros((1, 2)), 0.0, np.ones((1, 7)))
    with pytest.raises(ValueError, match="no raw rows"):
        buffers.gather_raw(np.array([0]))
    keeping = TurbineBuffers(4, 2, max_turbines=10, inputs=7)
    with pytest.raises(ValueError, match="needs raw"):
        keeping.write(np.array([keeping.index("a")]), np.zeros((1, 2)), 0.0)


class Rounds:
    """A subscriber that keeps what each round handed over while it ran."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.rounds: list[tuple[list, np.ndarray | None, np.ndarray | None]] = []

    def on_round(self, round: Round) -> None:
        assert round.inputs == (layout.INPUTS if round.raw is not None else ())
        raw, window = round.raw, round.window
        self.rounds.append((list(round.decisions), None if raw is None else raw.copy(),
                            None if window is None else window.copy()))

    def on_event(self, event) -> None:
        pass


def make_pipeline(backend: OnnxBackend, include_rows: bool | None) -> Pipeline:
    stage = WindTurbineStage(params_for(WindTurbineConfig(type="windturbine"),
                                        backend.manifest))
    capture = None if include_rows is None else {
        "rate": {"every": 1}, "spool": {"include_rows": include_rows},
        "destination": {"type": "disk", "path": "/nonexistent"}}
    spec = PipelineSpec(inputs=["farm"], preprocessor={"type": "windturbine"},
                        inference={"type": "onnx"}, max_turbines=3, capture=capture)
    return Pipeline("turbines", spec, stage, backend, Counters())


async def test_a_round_hands_over_the_source_rows_behind_each_decision():
    farm = WindFarm(turbines=3, rate_hz=20, seed=5)
    ids = tuple(farm.turbine_ids)
    async with OnnxBackend(OnnxConfig(type="onnx")) as backend:
        pipeline = make_pipeline(backend, include_rows=True)
        rounds = Rounds(pipeline)
        pipeline.subscribers.append(rounds)
        history = pipeline.preprocessor.history
        sent: dict[str, list[list[float]]] = {t: [] for t in ids}
        for ticks in (history + 3, 7):
            rows = farm.ticks(ticks)[:, :, COLUMNS]  # (ticks, turbines, inputs)
            values = rows.reshape(-1, len(COLUMNS)).copy()
            turbines = list(ids * ticks)
            # Rows the pipeline rejects (not finite; a fourth turbine over max_turbines)
            # must not enter the raw ring either.
            values[5, 2] = np.nan
            turbines[7] = "intruder"
            for turbine, row, ok in zip(turbines, values.tolist(),
                                        np.isfinite(values).all(axis=1), strict=True):
                if ok and turbine in sent:
                    sent[turbine].append(row)
            pipeline.ingest([Readings(tuple(turbines), values)])
            assert await pipeline.decide_once()
        assert pipeline.counters.get("rows_rejected", pipeline="turbines",
                                     reason="too_many_turbines") == 2
    assert len(rounds.rounds) == 2
    for decisions, raw, window in rounds.rounds:
        assert raw.shape == (len(decisions), history, len(layout.INPUTS))
        for i, d in enumerate(decisions):
            assert raw[i].tolist() == sent[d.turbine][d.rows - history:d.rows]
            # The feature row of the same slot was computed from that raw row.
            np.testing.assert_allclose(window[i], pipeline.preprocessor.row_features(raw[i]))


@pytest.mark.parametrize("include_rows", [None, False])
async def test_without_include_rows_there_is_no_raw_ring(include_rows):
    farm = WindFarm(turbines=2, rate_hz=20, seed=5)
    async with OnnxBackend(OnnxConfig(type="onnx")) as backend:
        pipeline = make_pipeline(backend, include_rows)
        rounds = Rounds(pipeline)
        pipeline.subscribers.append(rounds)
        ticks = pipeline.preprocessor.history
        rows = farm.ticks(ticks)[:, :, COLUMNS]
        pipeline.ingest([Readings(tuple(farm.turbine_ids) * ticks,
                                  rows.reshape(-1, len(COLUMNS)))])
        assert await pipeline.decide_once()
    assert not pipeline.buffers.keeps_raw
    [(decisions, raw, window)] = rounds.rounds
    assert raw is None and window is not None and len(decisions) == 2
