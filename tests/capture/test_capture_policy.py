"""Sampling policies: pure functions of the rounds they see."""

from __future__ import annotations

import numpy as np

from edged.capture.policy import (
    AnomalyPolicy,
    OnDemand,
    Pick,
    RatePolicy,
    ReservoirPolicy,
    Sampler,
)
from edged.events import Decision, ModelRef

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
