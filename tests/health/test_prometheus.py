"""The local Prometheus endpoint of a running daemon graph, scraped over real HTTP."""

from __future__ import annotations

import asyncio
import re
import sys
import urllib.request
from pathlib import Path

import pytest

from edged.base.errors import ConfigError
from edged.config import MetricsSpec, load_config, split_listen
from tests.support import free_port

from .conftest import REGISTRY, daemon, eventually, write_config


def scrape(address: tuple[str, int]) -> str:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=5) as r:
        return r.read().decode()


def value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{series} not in\n{text}"
    return float(match.group(1))


async def test_the_endpoint_serves_growing_decisions_and_stops_with_the_graph(
        tmp_path: Path):
    config = write_config(tmp_path, f'metrics: {{listen: "127.0.0.1:{free_port()}"}}\n')
    async with daemon(config) as graph:
        address = graph.metrics.address
        assert address[0] == "127.0.0.1"
        series = ('edged_decisions_total{model="windturbine",pipeline="turbines",'
                  'version="1"}')
        await eventually(lambda: graph.counters.get("decisions", pipeline="turbines") > 0)
        first = value(await asyncio.to_thread(scrape, address), series)
        await eventually(lambda: graph.counters.get("decisions", pipeline="turbines")
                         > first)
        text = await asyncio.to_thread(scrape, address)
    assert value(text, series) > first
    assert value(text, 'edged_turbines{pipeline="turbines"}') == 4
    assert value(text, "edged_starts_total") == 1
    assert value(text, "edged_uptime_seconds") > 0
    assert value(text, 'edged_inference_latency_seconds{pipeline="turbines",'
                       'quantile="0.95"}') > 0
    assert 'edged_turbine_stalest_sample_age_seconds{pipeline="turbines"}' in text
    assert value(text, 'edged_rows_accepted_total{pipeline="turbines"}') > 0
    assert 'edged_anomalous_decisions_total{model="windturbine"' in text
    # decisions are exposed once, with the model's labels, not again generically
    assert text.count("edged_decisions_total{") == 1
    with pytest.raises(OSError):
        scrape(address)  # stopped with the graph


def test_the_endpoint_binds_localhost_by_default(tmp_path: Path):
    config = load_config(write_config(tmp_path, "metrics: {}\n"), REGISTRY)
    assert split_listen(config.raw.metrics.listen) == ("127.0.0.1", 9464)
    assert load_config(write_config(tmp_path), REGISTRY).raw.metrics is None  # opt-in
    assert split_listen(MetricsSpec(listen="[::1]:9000").listen) == ("::1", 9000)


@pytest.mark.parametrize("listen", ["9464", "localhost:99999", "127.0.0.1:", "a b:1"])
def test_a_bad_listen_is_a_config_error(tmp_path: Path, listen: str):
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, f'metrics: {{listen: "{listen}"}}\n'), REGISTRY)
    message = "\n".join(error.value.problems)
    assert "metrics.listen" in message and "HOST:PORT" in message and "line 12" in message


async def test_a_port_already_taken_leaves_the_daemon_running_without_it(tmp_path: Path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, f'metrics: {{listen: "127.0.0.1:{port}"}}\n')
        async with daemon(config) as graph:
            await eventually(lambda: graph.counters.get("decisions", pipeline="turbines"))
        assert graph.metrics.address is None


async def test_the_data_budget_is_scraped_as_today_s_figures(tmp_path: Path):
    # No broker: the budget counts whatever uploads, cloud link up or not.
    config = write_config(tmp_path, (
        f'metrics: {{listen: "127.0.0.1:{free_port()}"}}\n'
        f"cloud:\n  broker: {{host: 127.0.0.1, port: {free_port()}}}\n"
        "  data_budget: {daily_mb: 2, capture_share: 0.5}\n"))
    async with daemon(config) as graph:
        graph.budget.charge("capture", 1234)
        assert not graph.budget.allows("capture", 1_000_000)
        text = await asyncio.to_thread(scrape, graph.metrics.address)
    assert value(text, "edged_data_budget_bytes") == 2_000_000
    assert value(text, 'edged_data_budget_used_bytes{priority="capture"}') == 1234
    assert value(text, 'edged_data_budget_used_bytes{priority="critical"}') == 0
    assert value(text, 'edged_data_budget_ceiling_bytes{priority="capture"}') == 1_000_000
    assert value(text, 'edged_data_budget_ceiling_bytes{priority="heartbeat"}') == 1_800_000
    assert value(text, 'edged_data_budget_deferred{priority="capture"}') == 1
    assert value(text, "edged_data_budget_over_bytes") == 0
    assert 0 < value(text, "edged_data_budget_reset_seconds") <= 86400
    # Since the start, through the daemon's counters:
    assert value(text, 'edged_budget_bytes_total{priority="capture"}') == 1234
    assert value(text, 'edged_budget_deferred_total{priority="capture"}') == 1


async def test_counters_with_known_labels_are_zero_from_the_start(tmp_path: Path):
    """Prometheus' convention: a counter whose label values are known is exported at 0
    before anything is counted, so a zero tells apart from a counter that is not wired;
    the health report (and the heartbeat) list only what was counted."""
    config = write_config(tmp_path, f'metrics: {{listen: "127.0.0.1:{free_port()}"}}\n'
                          "actuators:\n  relay:\n    type: command\n    inputs: [turbines]\n"
                          f"    argv: [{sys.executable}, -c, pass]\n")
    async with daemon(config) as graph:
        text = await asyncio.to_thread(scrape, graph.metrics.address)
        report = graph.health.report()
    for reason in ("wrong_width", "wrong_length", "not_finite", "bad_turbine_id",
                   "too_many_turbines"):
        assert value(text, f'edged_rows_rejected_total{{pipeline="turbines",'
                           f'reason="{reason}"}}') == 0
    assert value(text, 'edged_turbines_evicted_total{pipeline="turbines",reason="full"}') == 0
    assert value(text, 'edged_command_failures_total{actuator="relay",reason="timeout"}') == 0
    assert value(text, 'edged_watch_clients_dropped_total{reason="too_slow"}') == 0
    assert value(text, 'edged_rounds_failed_total{pipeline="turbines"}') == 0
    assert value(text, 'edged_rows_accepted_total{pipeline="turbines"}') > 0  # counted
    # The format is otherwise as before: one HELP and TYPE per family.
    assert text.count("# TYPE edged_rows_rejected_total counter") == 1
    assert not any(key.startswith("rows_rejected") for key in report["counters"])
