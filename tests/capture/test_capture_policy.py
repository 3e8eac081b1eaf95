"""Sampling policies: pure functions of the rounds they see."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edged.capture.policy import (
    AnomalyPolicy,
    OnDemand,
    Pick,
    RatePolicy,
    ReservoirPolicy,
    RoundClock,
    Sampler,
)
from edged.plugin.events import Decision, ModelRef

MODEL = ModelRef("m", 1)


def decision(turbine: str, rows: int, anomalous: bool = False) -> Decision:
    return Decision("p", turbine, 0.0, (0.1, 0.2), (anomalous, False),
                    {"g": anomalous}, MODEL, rows=rows)


def rows_of(picks):
    return [(p.decision.turbine, p.decision.rows, tuple(p.reasons)) for p in picks]


def test_rate_counter_is_per_turbine_and_deterministic():
    policy = RatePolicy(3)
    seen = []
    for r in range(7):
        round_ = [decision("a", r), decision("b", r)]
        seen += [(round_[i].turbine, r) for i in policy.select(round_)]
    assert seen == [("a", 0), ("b", 0), ("a", 3), ("b", 3), ("a", 6), ("b", 6)]


def test_rate_random_is_seeded_and_near_rate():
    decisions = [decision(str(i), 0) for i in range(10_000)]
    a = RatePolicy(100, mode="random", seed=7).select(decisions)
    b = RatePolicy(100, mode="random", seed=7).select(decisions)
    assert a == b
    assert 60 < len(a) < 140


def test_rate_one_takes_everything():
    assert RatePolicy(1).select([decision("a", 0)] * 5) == [0, 1, 2, 3, 4]


def test_reservoir_keeps_k_per_window_uniformly():
    counts = np.zeros(100)
    for seed in range(400):
        policy = ReservoirPolicy(10, 1.0, seed=seed)
        policy.offer([Pick(decision("a", r), [], r) for r in range(100)], 0.0)
        closed = policy.offer([], 1.0)
        assert len(closed) == 10
        assert all(p.reasons == ["reservoir"] for p in closed)
        for p in closed:
            counts[p.decision.rows] += 1
    # Each of 100 items is kept with p = 0.1: 40 expected per item over 400 runs.
    assert counts.min() > 15 and counts.max() < 70


def test_reservoir_window_closes_on_a_later_round_and_on_drain():
    policy = ReservoirPolicy(2, 10.0, seed=1)
    assert policy.offer([Pick(decision("a", 0), [], 0)], 0.0) == []
    assert policy.offer([Pick(decision("a", 1), [], 0)], 5.0) == []
    closed = policy.offer([Pick(decision("a", 2), [], 0)], 25.0)
    assert sorted(p.decision.rows for p in closed) == [0, 1]
    assert [p.decision.rows for p in policy.drain()] == [2]
    assert policy.drain() == []


def test_anomaly_with_context_before_and_after():
    sampler = Sampler(anomalies=AnomalyPolicy(before=2, after=2))
    picks = []
    for r in range(10):
        picks += sampler.select([decision("a", r, anomalous=(r == 5)), decision("b", r)], r)
    assert rows_of(picks) == [("a", 3, ("before",)), ("a", 4, ("before",)),
                              ("a", 5, ("anomaly",)), ("a", 6, ("after",)),
                              ("a", 7, ("after",))]


def test_anomaly_in_the_after_context_restarts_the_count():
    sampler = Sampler(anomalies=AnomalyPolicy(before=0, after=1))
    flags = [True, False, True, False, False]
    picks = []
    for r, flag in enumerate(flags):
        picks += sampler.select([decision("a", r, flag)], r)
    assert [p.decision.rows for p in picks] == [0, 1, 2, 3]


def test_before_context_skips_decisions_already_captured():
    sampler = Sampler(rate=RatePolicy(2), anomalies=AnomalyPolicy(before=3))
    picks = []
    for r in range(4):
        picks += sampler.select([decision("a", r, anomalous=(r == 3))], r)
    # 0 and 2 by rate; 1 is the only uncaptured one before the anomaly at 3, and is
    # captured when the anomaly comes.
    assert rows_of(picks) == [("a", 0, ("rate",)), ("a", 2, ("rate",)),
                              ("a", 1, ("before",)), ("a", 3, ("anomaly",))]


def test_on_demand_expires_and_merges_reasons():
    sampler = Sampler(rate=RatePolicy(1))
    sampler.on_demand.request("b", until_monotonic=10.0)
    picks = sampler.select([decision("a", 0), decision("b", 0)], 5.0)
    assert rows_of(picks) == [("a", 0, ("rate",)), ("b", 0, ("rate", "on_demand"))]
    demand = OnDemand()
    demand.request("*", 3.0)
    assert demand.select([decision("a", 0), decision("b", 0)], 2.0) == [0, 1]
    assert demand.select([decision("a", 0)], 3.0) == []
    assert not demand.active(3.0)


def test_window_rows_are_handed_to_picks():
    window = np.arange(12.0).reshape(2, 3, 2)
    sampler = Sampler(rate=RatePolicy(1))
    picks = sampler.select([decision("a", 0), decision("b", 0)], 0.0, window)
    assert picks[1].window.tolist() == window[1].tolist()
    assert picks[1].index == 1


def test_sampler_without_policies_picks_nothing():
    assert Sampler().select([decision("a", 0, True)], 0.0) == []


def test_before_context_carries_copies_of_its_own_rounds_rows():
    sampler = Sampler(anomalies=AnomalyPolicy(before=2))
    rounds = []
    picks = []
    for r in range(4):
        window = np.full((2, 3, 2), float(r))  # (turbines, history, features)
        raw = np.full((2, 3, 4), 10.0 + r)  # (turbines, history, inputs)
        rounds.append((window, raw))
        picks = sampler.select([decision("a", r, anomalous=(r == 3)), decision("b", r)],
                               float(r), window, raw, ("i1", "i2", "i3", "i4"))
        window[:] = -1.0  # the pipeline's next gather is a new array; this one is dead
        raw[:] = -1.0
    assert rows_of(picks) == [("a", 1, ("before",)), ("a", 2, ("before",)),
                              ("a", 3, ("anomaly",))]
    before = picks[:2]
    for pick, r in zip(before, (1, 2), strict=True):
        # Copies taken in its own round: what the round's arrays held then.
        assert pick.window.tolist() == [[float(r)] * 2] * 3
        assert pick.raw.tolist() == [[10.0 + r] * 4] * 3
        assert pick.raw_inputs == ("i1", "i2", "i3", "i4")
        assert not any(np.shares_memory(pick.window, w) for w, _ in rounds)
        assert not any(np.shares_memory(pick.raw, x) for _, x in rounds)
    # The anomaly's own rows are views of its round (read before the round ends).
    assert np.shares_memory(picks[2].window, rounds[3][0])


def test_before_context_without_rows_holds_none():
    sampler = Sampler(anomalies=AnomalyPolicy(before=1))
    sampler.select([decision("a", 0)], 0.0)
    [before, anomaly] = sampler.select([decision("a", 1, anomalous=True)], 1.0)
    assert before.window is None and before.raw is None and before.raw_inputs == ()
    assert anomaly.window is None and anomaly.raw is None


def test_picks_are_stamped_with_their_own_round():
    sampler = Sampler(rate=RatePolicy(2), anomalies=AnomalyPolicy(before=1))
    picks = []
    for r in range(4):
        # Wall clock = monotonic + 1.7e9: no step.
        round_ = [replace(d, time=1.7e9 + 100.0 + r)
                  for d in (decision("a", r, anomalous=(r == 3)), decision("b", r))]
        picks += sampler.select(round_, 100.0 + r)
    by_row = {(p.decision.turbine, p.decision.rows): p for p in picks}
    # The before-context of the anomaly at round 3 was decided in round 1 and says so.
    before = by_row[("a", 1)]
    assert before.reasons == ["before"] and before.monotonic == 101.0
    assert before.seq == 101_000_000_000  # turbine a is first in its round
    assert by_row[("b", 2)].seq == 102_000_000_001 and by_row[("b", 2)].index == 1
    assert by_row[("a", 3)].monotonic == 103.0
    ordered = sorted(picks, key=lambda p: p.seq)
    assert [p.monotonic for p in ordered] == sorted(p.monotonic for p in picks)
    assert all(p.clock_step_s is None for p in picks)


def test_sequence_numbers_grow_even_when_monotonic_time_does_not():
    clock = RoundClock()
    first, _ = clock.stamp(5.0, None, 3)
    again, _ = clock.stamp(5.0, None, 2)  # same instant: continue after the last
    assert (first, again) == (5_000_000_000, 5_000_000_003)
    later, _ = clock.stamp(6.0, None, 1)
    assert later == 6_000_000_000
    # A daemon restarted in the same boot starts from its own, later, monotonic time.
    assert RoundClock().stamp(7.0, None, 1)[0] > later


def test_round_clock_reports_a_wall_clock_step_once_either_way():
    clock = RoundClock()
    offset = 1_700_000_000.0

    def step_at(now: float, wall_offset: float) -> float | None:
        return clock.stamp(now, now + wall_offset, 1)[1]

    assert step_at(10.0, offset) is None  # nothing to compare with yet
    assert step_at(11.0, offset + 0.01) is None  # jitter
    assert step_at(1011.0, offset + 0.01 + 0.4) is None  # slewed, 400 ppm over 1000 s
    assert step_at(1012.0, offset - 3600) == pytest.approx(-3600.41)
    assert step_at(1013.0, offset - 3600) is None  # reported at its round only
    assert step_at(1014.0, offset + 3600) == pytest.approx(7200.0)
    assert step_at(1015.0, offset + 3600.2) == pytest.approx(0.2)  # a small one too
