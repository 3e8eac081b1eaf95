"""The local Prometheus endpoint (``metrics: {listen: 127.0.0.1:9464}``; docs/health.md).

prometheus_client serves ``/metrics`` from its own thread. Nothing is counted twice: a
custom collector builds every figure at scrape time from the same health report the
heartbeat sends and from the counters as data (names and labels, never parsed back from
the report's text keys), both asked of the event loop (the counters and turbine buffers
belong to it), so a scrape costs the loop one report and a blocked loop shows as a failed
scrape.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edged.base.metrics import Sample
from edged.config import MetricsSpec, split_listen
from edged.health.report import Health

log = structlog.get_logger("edged.health.prometheus")

#: Longest a scrape waits for the event loop to build the report.
SCRAPE_TIMEOUT_S = 5.0
#: Counters exposed with the model's labels rather than generically.
_PER_MODEL = ("decisions", "anomalous_decisions")


class HealthCollector:
    """Every health figure as Prometheus metrics, built per scrape."""

    def __init__(self, health: Health, loop: asyncio.AbstractEventLoop) -> None:
        self.health = health
        self.loop = loop

    async def _read(self) -> tuple[dict[str, Any], list[Sample]]:
        # One step of the loop: the report and the counters are the same instant.
        return self.health.report(), self.health.counters.samples()

    def collect(self) -> Iterator[Metric]:
        report, counters = asyncio.run_coroutine_threadsafe(self._read(), self.loop).result(
            SCRAPE_TIMEOUT_S)
        yield from metrics(report, counters)


def metrics(report: dict[str, Any], counters: list[Sample]) -> Iterator[Metric]:
    """The metric families of one health report and the counters read with it."""
    info = GaugeMetricFamily("edged_info", "The daemon: version, device and thing.",
                             labels=["version", "device", "thing"])
    info.add_metric([report["version"], report["device"], report["thing"]], 1)
    yield info
    yield GaugeMetricFamily("edged_uptime_seconds", "Seconds since the daemon started.",
                            value=report["uptime_s"])
    yield CounterMetricFamily("edged_starts", "Daemon starts recorded in the state "
                              "directory (restarts + 1).", value=report["starts"])

    labels = ["pipeline", "model", "version"]
    model = GaugeMetricFamily("edged_model_info", "The model each pipeline serves.",
                              labels=labels)
    decisions = CounterMetricFamily("edged_decisions", "Decisions made.", labels=labels)
    anomalous = CounterMetricFamily("edged_anomalous_decisions",
                                    "Decisions that flagged an anomaly.", labels=labels)
    latency = GaugeMetricFamily(
        "edged_inference_latency_seconds", "Model call time of a decision round over "
        "the last 1024 rounds, by quantile.", labels=["pipeline", "quantile"])
    rounds = CounterMetricFamily("edged_inference_rounds", "Decision rounds timed.",
                                 labels=["pipeline"])
    turbines = GaugeMetricFamily("edged_turbines", "Turbines tracked.", labels=["pipeline"])
    stale = GaugeMetricFamily("edged_turbines_stale", "Turbines silent for longer than "
                              "stale_after_s.", labels=["pipeline"])
    stalest = GaugeMetricFamily("edged_turbine_stalest_sample_age_seconds",
                                "Age of the oldest turbine's last sample.",
                                labels=["pipeline"])
    for name, p in report["pipelines"].items():
        values = [name, p["model"], str(p["version"])]
        model.add_metric(values, 1)
        decisions.add_metric(values, p["decisions"])
        anomalous.add_metric(values, p["anomalous_decisions"])
        for quantile, ms in (p["latency_ms"] or {}).items():
            latency.add_metric([name, str(int(quantile[1:]) / 100)], ms / 1000)
        rounds.add_metric([name], p["rounds"])
        turbines.add_metric([name], p["turbines"])
        stale.add_metric([name], p["stale"])
        if p["stalest_age_s"] is not None:
            stalest.add_metric([name], p["stalest_age_s"])
    yield from (model, decisions, anomalous, latency, rounds, turbines, stale, stalest)

    spool = report["spool"]
    if spool is not None:
        yield GaugeMetricFamily("edged_spool_depth", "Records waiting in the capture "
                                "spool.", value=spool.get("depth", 0))
        yield CounterMetricFamily("edged_spool_dropped", "Records the spool dropped.",
                                  value=spool.get("dropped", 0))
        if "bytes" in spool:
            yield GaugeMetricFamily("edged_spool_bytes", "Bytes the capture spool's "
                                    "records take on disk.", value=spool["bytes"])
        if "refusing" in spool:
            yield GaugeMetricFamily("edged_spool_refusing", "Capture spools refusing new "
                                    "records now (no room left, a full or failing disk).",
                                    value=spool["refusing"])

    budget = report.get("budget")
    if budget is not None:
        yield from budget_metrics(budget)

    # Every other counter, as edged_<name>_total with its own labels.
    families: dict[str, Metric] = {}
    for name, labels, value in counters:
        if name in _PER_MODEL:
            continue
        metric_name = "edged_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)
        family = families.get(metric_name)
        if family is None:
            family = families[metric_name] = CounterMetricFamily(
                metric_name, f"The daemon's {name} counter.")
        family.add_sample(metric_name + "_total", labels, value)
    yield from families.values()


def budget_metrics(usage: dict[str, Any]) -> Iterator[Metric]:
    """The data budget's figures for today (they start from zero each UTC day; the
    cumulative ones are the generic edged_budget_bytes_total and friends)."""
    yield GaugeMetricFamily("edged_data_budget_bytes", "The daily upload budget.",
                            value=usage["budget_bytes"])
    used = GaugeMetricFamily("edged_data_budget_used_bytes", "Bytes uploaded today, by "
                             "priority.", labels=["priority"])
    deferred = GaugeMetricFamily("edged_data_budget_deferred", "Refusals by the budget "
                                 "today, by priority.", labels=["priority"])
    for priority, value in usage["used_bytes"].items():
        if priority != "total":
            used.add_metric([priority], value)
            deferred.add_metric([priority], usage["deferred"][priority])
    ceilings = GaugeMetricFamily("edged_data_budget_ceiling_bytes", "Usage past which a "
                                 "priority is held back.", labels=["priority"])
    for priority, value in usage["ceilings_bytes"].items():
        ceilings.add_metric([priority], value)
    yield from (used, deferred, ceilings)
    yield GaugeMetricFamily("edged_data_budget_over_bytes", "Bytes uploaded today past "
                            "the budget (critical traffic is never held back).",
                            value=usage["over_bytes"])
    yield GaugeMetricFamily("edged_data_budget_reset_seconds", "Seconds until the "
                            "budget starts again (UTC midnight).", value=usage["reset_in_s"])


class MetricsServer:
    """The endpoint, as a graph component: listening while entered."""

    def __init__(self, spec: MetricsSpec, health: Health) -> None:
        self.spec = spec
        self.health = health
        self.address: tuple[str, int] | None = None  # where it listens, once started
        self._server: Any = None
        self._thread: Any = None

    async def __aenter__(self) -> MetricsServer:
        registry = CollectorRegistry(auto_describe=False)  # collect() only per scrape
        registry.register(HealthCollector(self.health, asyncio.get_running_loop()))
        host, port = split_listen(self.spec.listen)
        self._server, self._thread = await asyncio.to_thread(
            start_http_server, port, host, registry)
        self.address = self._server.server_address[:2]
        log.info("metrics_listening", host=self.address[0], port=self.address[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
