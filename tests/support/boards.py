"""The dashboard's board on a real pipeline: the built-in wind-turbine model on ONNX,
fed the simulated farm and decided round by round by the test (no loop, no sleeping),
with the board and an event feed subscribed as the daemon's assembly subscribes them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

from edged.base.metrics import Counters
from edged.builtin.onnx import OnnxBackend, OnnxConfig
from edged.builtin.windturbine import WindTurbineConfig, WindTurbineStage, params_for
from edged.config import PipelineSpec
from edged.dashboard.board import TurbineBoard
from edged.dashboard.controls import FarmControl
from edged.plugin.events import Decision
from edged.runtime.pipeline import Pipeline
from edged.watch.feed import EventFeed
from tests.runtime.test_pipeline import HISTORY, Farm

PIPELINE = "turbines"


class FarmBoard:
    """``pipeline`` deciding ``farm``'s turbines, ``board`` and ``feed`` subscribed."""

    def __init__(self, pipeline: Pipeline, board: TurbineBoard, feed: EventFeed,
                 farm: Farm) -> None:
        self.pipeline = pipeline
        self.board = board
        self.feed = feed
        self.farm = farm
        self.counters = pipeline.counters

    async def decide(self, rounds: int = 1) -> list[Decision]:
        """``rounds`` rounds, each after one more row of every turbine (the first of
        all after a full window of rows); the last round's decisions."""
        decisions: list[Decision] = []
        for _ in range(rounds):
            ticks = 1 if self.pipeline.buffers.names else HISTORY
            self.pipeline.ingest([self.farm.readings(ticks)])
            decisions = await self.pipeline.decide_once()
            assert decisions, "a round without decisions"
        return decisions


@contextlib.asynccontextmanager
async def farm_board(turbines: int = 3, *, device: str = "gw-7", max_turbines: int = 10,
                     stale_after_s: float = 3600.0, max_clients: int = 8,
                     controls: Mapping[str, FarmControl] | None = None,
                     counters: Counters | None = None) -> AsyncIterator[FarmBoard]:
    async with OnnxBackend(OnnxConfig(type="onnx")) as backend:
        stage = WindTurbineStage(params_for(WindTurbineConfig(type="windturbine"),
                                            backend.manifest))
        spec = PipelineSpec(inputs=["farm"], preprocessor={"type": "windturbine"},
                            inference={"type": "onnx"}, max_turbines=max_turbines,
                            stale_after_s=stale_after_s)
        counters = counters or Counters()
        pipeline = Pipeline(PIPELINE, spec, stage, backend, counters)
        board = TurbineBoard(device, {PIPELINE: pipeline}, controls=controls)
        feed = EventFeed(device, counters, max_clients)
        pipeline.subscribers += [board, feed]
        yield FarmBoard(pipeline, board, feed, Farm(turbines))
