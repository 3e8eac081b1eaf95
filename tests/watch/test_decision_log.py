"""The decision log (log.decisions): which decisions it writes, how, and at what cost."""

from __future__ import annotations

import logging

import pytest
import structlog
import structlog.testing

from edged.watch.decision_log import DecisionLog
from tests.support.payloads import FEATURES, THRESHOLDS, decision
from tests.support.rounds import round_of


def a_round(anomalous: list[str], healthy: list[str], at: float = 100.0):
    decisions = [decision(t) for t in healthy] + [
        decision(t, ("vibration", "voltage")) for t in anomalous]
    return round_of(decisions, FEATURES, THRESHOLDS, monotonic=at)


def test_anomalies_logs_the_anomalous_decisions_only():
    with structlog.testing.capture_logs() as logs:
        DecisionLog("anomalies").on_round(a_round(["turbine-2"], ["turbine-0", "turbine-1"]))
    [line] = logs
    assert line == {
        "event": "decision", "log_level": "info", "pipeline": "turbines",
        "turbine": "turbine-2", "anomalous": True, "groups": ["vibration", "voltage"],
        "primary": "vibration", "model": "windturbine/1", "rows": 600,
        "scores": "roll=0.5>0.2 pitch=0.5>0.2 yaw=0.5>0.2 wind_speed_rps=0.15<=0.3 "
                  "rps=0.15<=0.3 voltage=1>0.4"}


def test_all_logs_every_decision():
    with structlog.testing.capture_logs() as logs:
        DecisionLog("all").on_round(a_round(["turbine-2"], ["turbine-0", "turbine-1"]))
    assert [(line["turbine"], line["anomalous"], line["groups"]) for line in logs] == [
        ("turbine-0", False, []), ("turbine-1", False, []),
        ("turbine-2", True, ["vibration", "voltage"])]
    assert logs[0]["primary"] is None


def test_anomalies_are_capped_per_second_and_the_rest_counted():
    log = DecisionLog("anomalies", per_second=3)
    many = [f"turbine-{i}" for i in range(5)]
    with structlog.testing.capture_logs() as logs:
        log.on_round(a_round(many, [], at=100.1))
        log.on_round(a_round(many, [], at=100.6))   # the same second: nothing more
        log.on_round(a_round([], ["turbine-0"], at=101.2))  # next second: the count
        log.on_round(a_round(many[:1], [], at=101.3))
    assert [line["event"] for line in logs] == ["decision"] * 3 + [
        "decisions_unlogged", "decision"]
    assert logs[3]["anomalous"] == 7 and logs[3]["per_second"] == 3


def test_below_the_info_level_nothing_is_formatted(monkeypatch):
    before = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        monkeypatch.setattr("edged.watch.decision_log.scores_text",
                            lambda *a: pytest.fail("formatted a decision nobody logs"))
        DecisionLog("all").on_round(a_round(["turbine-2"], ["turbine-0"]))
    finally:
        structlog.configure(**before)


def test_a_healthy_round_formats_nothing_with_anomalies(monkeypatch):
    monkeypatch.setattr("edged.watch.decision_log.scores_text",
                        lambda *a: pytest.fail("formatted a healthy decision"))
    with structlog.testing.capture_logs() as logs:
        DecisionLog("anomalies").on_round(a_round([], ["turbine-0", "turbine-1"]))
    assert logs == []
