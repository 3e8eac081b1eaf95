"""Health reports: restarts, the turbine list cap, latency percentiles, the shadow's
size, and the cloud.health config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.app.assembly import build_graph
from edged.base.errors import ConfigError
from edged.base.metrics import Counters
from edged.config import load_config
from edged.health.report import SHADOW_STATE_LIMIT, Health, to_json
from edged.runtime.latency import LatencyRing

from .conftest import REGISTRY, daemon, eventually, write_config

METRICS = 'metrics: {listen: "127.0.0.1:0"}\n'


async def test_starts_are_counted_across_daemon_runs_but_not_reloads(tmp_path: Path):
    config = write_config(tmp_path, METRICS)
    async with daemon(config) as graph:
        assert graph.health.starts == 1
    async with daemon(config) as graph:
        assert graph.health.starts == 2
        report = graph.health.report()
    assert report["starts"] == 2
    assert (tmp_path / "state" / "health" / "starts").read_text() == "2\n"
    # A reload builds a new graph on the daemon's counters: the same start.
    counters = Counters()
    for _ in range(2):
        graph = build_graph(load_config(config, REGISTRY), REGISTRY, counters)
        async with graph.health:
            assert graph.health.starts == 3


async def test_a_report_lists_only_the_stalest_turbines(tmp_path: Path):
    config = write_config(tmp_path, METRICS, turbines=120)
    async with daemon(config) as graph:
        pipeline = graph.pipelines["turbines"]
        await eventually(lambda: len(pipeline.buffers.names) == 120)
        report = graph.health.report()
    turbines = report["turbines"]
    assert turbines["count"] == 120 and len(turbines["stalest"]) == 50
    ages = [t["age_s"] for t in turbines["stalest"]]
    assert ages == sorted(ages, reverse=True)
    assert {t["pipeline"] for t in turbines["stalest"]} == {"turbines"}
    assert len(to_json(Health.shadow_state(report))) < 1024


def test_the_shadow_state_falls_back_to_totals_when_too_big():
    pipelines = {f"p{i:03d}": {"model": "windturbine", "version": 1, "decisions": i,
                               "anomalous_decisions": 1, "latency_ms": None,
                               "turbines": 1, "stale": 0} for i in range(200)}
    report = {"schema": 1, "version": "0.1.0", "time": 0.0, "uptime_s": 1.0, "starts": 1,
              "turbines": {"count": 200, "stalest": []}, "spool": None,
              "pipelines": pipelines}
    state = Health.shadow_state(report)
    assert len(to_json(state)) < SHADOW_STATE_LIMIT
    assert state["pipelines_count"] == 200 and state["decisions"] == sum(range(200))


def test_latency_percentiles_over_a_bounded_ring():
    ring = LatencyRing(size=100)
    assert ring.percentiles() is None
    for value in np.linspace(0.0, 1.0, 1000):
        ring.record(float(value))
    p = ring.percentiles()
    assert ring.recorded == 1000 and p[0.5] > 0.9  # only the last 100 are kept
    assert p[0.5] <= p[0.95] <= p[0.99] <= 1.0


@pytest.mark.parametrize("health", ['{topic: "edged/#"}', '{topic: "x/{device}"}',
                                    "{interval_s: 0}", "{shadow: 'a b'}", "{every: 3}"])
def test_a_bad_health_section_is_a_config_error(tmp_path: Path, health: str):
    cloud = f"cloud:\n  broker: {{host: 127.0.0.1, port: 1883}}\n  health: {health}\n"
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, cloud), REGISTRY)
    assert "cloud" in "\n".join(error.value.problems)


def test_the_docs_sample_config_validates():
    from edged.config import parse_config

    page = Path(__file__).resolve().parents[2] / "docs" / "health.md"
    sample = page.read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(sample, str(page), REGISTRY)
    assert config.cloud.health.topic == "edged/{thing}/health"
    assert config.raw.metrics.listen == "127.0.0.1:9464"
