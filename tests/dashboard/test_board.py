"""The dashboard's board on a real pipeline (the built-in model on ONNX, fed the simulated
farm): each turbine's ring of its last HISTORY decisions, its score, a model with other
features, turbines the pipeline evicted, and the page as JSON."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from edged.dashboard.board import HISTORY, TurbineBoard
from edged.plugin.components import Readings
from edged.plugin.events import Decision, ModelRef, Round
from edged.windturbine import layout
from tests.support.boards import PIPELINE, farm_board
from tests.support.clock import FakeClock
from tests.support.payloads import tracked_events
from tests.support.rounds import round_of

FOCUS = (PIPELINE, "turbine-0")


class Kept:
    """What each round handed over for one turbine: its scores and its newest model
    input row (copied: a round's arrays are the pipeline's, read and not kept)."""

    def __init__(self, turbine: str) -> None:
        self.turbine = turbine
        self.errors: list[tuple[float, ...]] = []
        self.inputs: list[np.ndarray] = []
        self.thresholds: tuple[float, ...] = ()
        self.anomalous: list[bool] = []

    def on_round(self, round: Round) -> None:
        for i, decision in enumerate(round.decisions):
            if decision.turbine == self.turbine:
                self.errors.append(decision.values)
                self.anomalous.append(decision.is_anomalous)
                self.inputs.append(round.window[i, -1].copy())
                self.thresholds = tuple(round.thresholds)

    def on_event(self, event) -> None:
        pass


def page(board: TurbineBoard, **query) -> dict:
    """The board's page as a client reads it: through orjson, float32 arrays and all."""
    return orjson.loads(orjson.dumps(board.state(time.monotonic(), **query),
                                     option=orjson.OPT_SERIALIZE_NUMPY))


def f32(values) -> np.ndarray:
    # A sparkline is float32 written in its shortest form: read back, the same float32.
    return np.array(values, np.float32)


@pytest.mark.parametrize("rounds", [5, HISTORY, HISTORY + 17])
async def test_the_ring_keeps_the_last_history_decisions_in_time_order(rounds):
    async with farm_board(3) as farm:
        kept = Kept("turbine-0")
        farm.pipeline.subscribers.append(kept)
        await farm.decide(rounds)
        assert len(kept.errors) == rounds
        focus = page(farm.board, focus=FOCUS)["focus"]
        assert (focus["pipeline"], focus["turbine"]) == FOCUS
        last = slice(-min(rounds, HISTORY), None)
        errors, inputs = np.array(kept.errors[last]), np.array(kept.inputs[last])
        history = focus["history"]
        assert list(history["errors"]) == list(history["features"]) == list(layout.FEATURES)
        for i, feature in enumerate(layout.FEATURES):
            np.testing.assert_array_equal(f32(history["errors"][feature]), f32(errors[:, i]))
            np.testing.assert_array_equal(f32(history["features"][feature]),
                                          f32(inputs[:, i]))
        # The latest decision, as sent: its errors, its newest model input row.
        assert focus["errors"] == dict(zip(layout.FEATURES, kept.errors[-1], strict=True))
        np.testing.assert_array_equal(f32(list(focus["features"].values())), f32(inputs[-1]))
        # Only the focus carries its history; every turbine its score.
        items = page(farm.board)["turbines"]["items"]
        assert [item["turbine"] for item in items] == ["turbine-0", "turbine-1", "turbine-2"]
        assert all("history" not in item for item in items)
        assert items[0]["score"] == focus["score"]


async def test_the_score_is_the_worst_error_over_its_threshold_and_over_1_flags():
    async with farm_board(3) as farm:
        kept = Kept("turbine-1")
        farm.pipeline.subscribers.append(kept)
        await farm.decide(10)
        farm.farm.farm.inject(1, "vibration")  # turbine-1 breaks: its errors rise
        await farm.decide(HISTORY)
        score = f32(page(farm.board, focus=(PIPELINE, "turbine-1"))["focus"]["score"])
        expected = (f32(kept.errors[-HISTORY:]) / f32(kept.thresholds)).max(axis=1)
        np.testing.assert_allclose(score, expected, rtol=1e-6)
        assert ((score > 1) == np.array(kept.anomalous[-HISTORY:])).all()
        assert score[0] < 1 < score[-1]  # healthy before, flagged by the end


def narrow_round(turbine: str) -> Round:
    """A round of another model, with three features, and no model input kept."""
    decision = Decision(pipeline=PIPELINE, turbine=turbine, time=time.time(),
                        values=(0.1, 0.2, 0.9), anomalous=(False, False, True),
                        groups={"all": True}, model=ModelRef("narrow", 2), primary="all",
                        rows=1)
    return round_of([decision], ("a", "b", "c"), (0.5, 0.5, 0.5))


async def test_a_model_with_other_features_starts_the_ring_anew():
    async with farm_board(3) as farm:
        await farm.decide(30)
        farm.board.on_round(narrow_round("turbine-0"))
        focus = page(farm.board, focus=FOCUS)["focus"]
        assert focus["history"]["errors"] == {"a": [0.1], "b": [0.2], "c": [0.9]}
        assert focus["history"]["features"] == {"a": [None], "b": [None], "c": [None]}
        assert focus["features"] is None  # no model input kept for the round
        assert focus["flagged"] == ["c"] and focus["state"] == "anomaly"
        assert f32(focus["score"]) == f32([1.8])
        # A turbine the other model has not scored yet keeps its latest decision, and
        # shows no history of the old model's features.
        other = page(farm.board, focus=(PIPELINE, "turbine-1"))
        assert other["focus"]["errors"].keys() == set(layout.FEATURES)
        assert other["focus"]["history"]["errors"] == {f: [] for f in layout.FEATURES}
        assert other["summary"]["turbines"] == 3
        # Back to six features: anew again.
        await farm.decide(2)
        focus = page(farm.board, focus=FOCUS)["focus"]
        assert {len(v) for v in focus["history"]["errors"].values()} == {2}


async def test_turbines_the_pipeline_evicted_free_their_rows():
    """A hundred turbines pass through a pipeline of two slots: the board's rows of
    turbines gone are reused before it would grow (it never does), and a turbine that
    comes back after its row went to another starts its history anew."""
    async with farm_board(1, max_turbines=2, stale_after_s=1.0) as farm:
        clock = farm.pipeline.monotonic_clock = FakeClock()
        window = farm.pipeline.preprocessor.history  # rows before a first decision
        template = farm.farm.readings(window)
        names = [f"visitor-{i}" for i in range(100)]
        for name in [*names, "visitor-0"]:
            clock.advance(2.0)  # everyone else is stale: the newcomer takes a slot
            farm.pipeline.ingest([Readings((name,) * window, template.values)])
            assert [d.turbine for d in await farm.pipeline.decide_once()] == [name]
            track = farm.board._tracks[PIPELINE]
            assert len(track.rows) <= 64
            assert track.ring.shape[0] == len(track.latest) == 64  # never grew
        assert farm.counters.get("turbines_evicted", pipeline=PIPELINE, reason="full") == 99
        state = farm.board.state(clock.now)
        assert [i["turbine"] for i in state["turbines"]["items"]] == ["visitor-0",
                                                                       "visitor-99"]
        back = farm.board.state(clock.now, focus=(PIPELINE, "visitor-0"))["focus"]
        assert len(back["score"]) == 1  # its first visit's decision is gone with its row


async def test_the_page_is_json_with_numpy_arrays_only_through_orjsons_option():
    async with farm_board(2) as farm:
        await farm.decide(3)
        state = farm.board.state(time.monotonic(), focus=FOCUS)
        assert state["focus"]["score"].dtype == np.float32
        with pytest.raises(TypeError):
            orjson.dumps(state)
        farm.board.on_round(narrow_round("turbine-1"))
        read = page(farm.board, focus=(PIPELINE, "turbine-1"))
        # A value with no model input kept (NaN in the ring) is null.
        assert read["focus"]["history"]["features"]["a"] == [None]
        assert read["summary"] == {"turbines": 2, "ok": 1, "anomaly": 1, "stale": 0,
                                   "no_model": 0}


async def test_alarms_come_newest_first_once_each():
    async with farm_board(1) as farm:
        alarm, clear, *sensor = tracked_events()
        for event in (alarm, clear, *sensor, alarm):  # a second actuator's alike alarm
            farm.board.on_actuator_event(event)
        alarms = farm.board.state(time.monotonic())["alarms"]
        assert [a["event"] for a in alarms] == ["clear", "alarm"]
        assert {a["device"] for a in alarms} == {"gw-7"}


def test_what_each_actuator_did_with_an_alarm_is_kept_with_it():
    from edged.dashboard.board import TurbineBoard
    from edged.plugin.events import Event, ModelRef

    board = TurbineBoard("gw", {})
    alarm = Event("alarm", "turbines", "turbine-4", 1_800_000_000.0, ("voltage",),
                  model=ModelRef("windturbine", 1))
    board.on_actuator_event(alarm)
    board.on_actuator_event(alarm)  # a second actuator's tracker raised it alike
    board.on_actuator_outcome("brake", alarm, None)
    board.on_actuator_outcome("pager", alarm, "ConnectionError('refused')")
    other = Event("alarm", "turbines", "turbine-5", 1_800_000_001.0, ("vibration",))
    board.on_actuator_outcome("brake", other, None)  # not on the page: nothing to add to
    [shown] = board.state(0.0)["alarms"]
    assert shown["turbine"] == "turbine-4"
    assert shown["actions"] == [
        {"actuator": "brake", "ok": True, "error": None},
        {"actuator": "pager", "ok": False, "error": "ConnectionError('refused')"}]
