"""A graph: every component built from one validated config, run and stopped as one.

Building instantiates components and loads what can be checked without side effects
(model manifests, files); nothing starts until :meth:`Graph.run`. A graph is never
edited: a reload builds a new one and swaps.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from edged.base.metrics import Counters
from edged.base.tasks import cancel_all
from edged.config import EdgedConfig
from edged.plugin.components import Readings, Source
from edged.plugin.config import SourceConfig, StartPolicy
from edged.runtime.actuation import ActuatorBinding
from edged.runtime.pipeline import Pipeline, Subscriber
from edged.runtime.startup import backoff_delay, start_component

log = structlog.get_logger("edged.graph")


# What the graph runs beside the components, as the graph sees it: the parts themselves
# (health, the cloud link, captures) live on the floors above and are handed in by
# edged.app.assembly, so the engine names only what it calls on them.


class Service(Protocol):
    """Entered on the graph's exit stack at start (a failure disables it, never the
    daemon) and left at shutdown: the health report, the /metrics endpoint."""

    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *exc: object) -> None: ...


class LoopService(Service, Protocol):
    """A service with a loop of its own in the graph's task group: the data budget."""

    async def run(self) -> None: ...


class CloudLink(LoopService, Protocol):
    """The fleet link (``edged.cloud.link.Cloud``): stopped first at shutdown, so a job
    never swaps a model while the pipelines go away."""

    #: Every pipeline's alarms go here too, when the cloud section asks for them.
    alarms: Subscriber | None


class Capture(Service, Subscriber, Protocol):
    """One pipeline's capture (``edged.capture.pipeline_capture.PipelineCapture``): a
    subscriber of its pipeline, with a spool writer and an uploader loop."""

    pipeline: str  # the name of the pipeline it records

    async def write_loop(self) -> None: ...
    async def upload_loop(self) -> None: ...


@dataclass
class SourceNode:
    name: str
    config: SourceConfig
    component: Source
    targets: list[Pipeline] = field(default_factory=list)

    async def emit(self, readings: Readings) -> None:
        for pipeline in self.targets:
            await pipeline.emit(readings)


class Graph:
    def __init__(self, config: EdgedConfig, sources: dict[str, SourceNode],
                 pipelines: dict[str, Pipeline], actuators: dict[str, ActuatorBinding],
                 counters: Counters, cloud: CloudLink | None = None,
                 health: Service | None = None, metrics: Service | None = None,
                 captures: dict[str, Capture] | None = None,
                 budget: LoopService | None = None,
                 services: dict[str, Service] | None = None) -> None:
        self.config = config
        self.sources = sources
        self.pipelines = pipelines
        self.actuators = actuators
        self.cloud = cloud  # edged.cloud.link.Cloud: the fleet link and the jobs executor
        self.counters = counters
        self.health = health  # edged.health.report.Health, with cloud.health or metrics only
        self.metrics = metrics  # edged.health.prometheus.MetricsServer: the `metrics:` endpoint
        # edged.cloud.budget.DataBudget with cloud.data_budget: charged by the cloud link's
        # publishes and the capture uploads.
        self.budget = budget
        self._stop = asyncio.Event()
        self.stop_reason = "shutdown"
        self.running: dict[str, list[asyncio.Task]] = {}
        self.captures: dict[str, Capture] = {} if captures is None else captures  # by pipeline
        # More for watching, by name (the watch socket): started beside /metrics.
        self.services: dict[str, Service] = {} if services is None else services

    def stop(self, reason: str = "shutdown") -> None:
        self.stop_reason = reason
        self._stop.set()

    def adopt_buffers(self, old: Graph) -> None:
        """Carry turbine histories over a reload, so decisions resume at once."""
        for name, pipeline in self.pipelines.items():
            previous = old.pipelines.get(name)
            if previous is not None and (
                previous.buffers.history, previous.buffers.features
            ) == (pipeline.buffers.history, pipeline.buffers.features):
                pipeline.buffers = previous.buffers

    async def run(self, on_ready: Callable[[], None] = lambda: None) -> None:
        """Start every component (actuators first, sources last), run until
        :meth:`stop`, then shut down in bounded stages."""
        timeout = self.config.raw.shutdown.stage_timeout_s
        async with AsyncExitStack() as stack:
            # First, so today's usage is loaded before anything uploads; a state dir it
            # cannot read costs the day's count, never the daemon.
            budget = self.budget is not None and await start_component(
                stack, "budget", self.budget, StartPolicy(policy="disable"))
            actuators = [b for name, b in self.actuators.items()
                         if await start_component(stack, f"actuators.{name}", b.actuator,
                                                  b.config.on_start_failure)]
            pipelines = [p for p in self.pipelines.values() if await self._start_pipeline(
                stack, p)]
            # Capture never holds the turbines hostage: a spool it cannot open disables it.
            captures = [c for n, c in self.captures.items()
                        if self.pipelines[n] in pipelines and await start_component(
                            stack, f"pipelines.{n}.capture", c, StartPolicy(policy="disable"))]
            # Health and the local metrics endpoint are for watching, never a reason not
            # to run (a port already taken, say): disabled with a logged reason.
            if self.health is not None:
                await start_component(stack, "health", self.health,
                                      StartPolicy(policy="disable"))
            if self.metrics is not None:
                await start_component(stack, "metrics", self.metrics,
                                      StartPolicy(policy="disable"))
            for name, service in self.services.items():
                await start_component(stack, name, service, StartPolicy(policy="disable"))
            # The cloud never holds the turbines hostage: it connects in the background,
            # and if it cannot even start (unreadable certificates) the daemon runs on.
            cloud = self.cloud is not None and await start_component(
                stack, "cloud", self.cloud, StartPolicy(policy="disable"))
            sources = [s for s in self.sources.values()
                       if await start_component(stack, f"sources.{s.name}", s.component,
                                                s.config.on_start_failure)]
            self._wire(actuators, pipelines, sources, cloud)
            for capture in captures:
                self.pipelines[capture.pipeline].subscribers.append(capture)
            async with asyncio.TaskGroup() as tg:
                self.running = {
                    "actuators": [tg.create_task(b.run(), name=f"edged[actuator.{b.name}].run")
                                  for b in actuators],
                    "pipelines": [
                        tg.create_task(loop(), name=f"edged[pipeline.{p.name}].{loop.__name__}")
                        for p in pipelines
                        for loop in (p.ingest_loop, p.decide_loop, p.watch_loop)
                    ],
                    "sources": [tg.create_task(self._supervise(s),
                                               name=f"edged[source.{s.name}].run")
                                for s in sources],
                }
                self.running["capture"] = [
                    tg.create_task(loop(), name=f"edged[capture.{c.pipeline}].{name}")
                    for c in captures
                    for name, loop in (("write", c.write_loop), ("upload", c.upload_loop))
                ]
                if cloud:
                    self.running["cloud"] = [tg.create_task(self.cloud.run(),
                                                            name="edged[cloud].run")]
                if budget:
                    self.running["budget"] = [tg.create_task(self.budget.run(),
                                                             name="edged[budget].save")]
                if self.config.raw.log.stats_interval_s > 0:
                    self.running["pipelines"].append(
                        tg.create_task(self._stats_loop(), name="edged[graph].stats"))
                log.info("graph_started", sources=[s.name for s in sources],
                         pipelines=[p.name for p in pipelines],
                         actuators=[b.name for b in actuators], cloud=bool(cloud))
                on_ready()
                # What is built by now (modules, config, components) lasts as long as the
                # graph: frozen, it is out of the collector's way, and a full collection
                # walks only what rounds allocate (a few ms, not a ~100 ms pause of the
                # loop with 1,000 turbines). Thawed when the graph stops, so what it
                # leaves in reference cycles is collected after a reload.
                gc.freeze()
                try:
                    await self._stop.wait()
                finally:
                    gc.unfreeze()
                log.info("graph_stopping", reason=self.stop_reason)
                # A job stops first: its journal resumes it, and a swap must not start
                # while the pipelines are going away.
                await self._stop_stage("cloud", timeout)
                await self._stop_stage("sources", timeout)
                await self._stop_stage("pipelines", timeout)
                # After the pipelines: the writer spools what they queued before it ends.
                await self._stop_stage("capture", timeout)
                await self._stop_stage("actuators", timeout, drain=actuators)
                # Last, after every upload: leaving it (stack.aclose) saves the final usage.
                await self._stop_stage("budget", timeout)
                # What overran its stage is cancelled until it ends: the task group
                # would otherwise wait for it without end.
                await cancel_all(t for tasks in self.running.values() for t in tasks)
            await self._bounded("components", stack.aclose(), timeout)
        log.info("graph_stopped", reason=self.stop_reason)

    async def _start_pipeline(self, stack: AsyncExitStack, pipeline: Pipeline) -> bool:
        spec = self.config.pipelines[pipeline.name]
        started = await start_component(
            stack, f"pipelines.{pipeline.name}.inference", pipeline.backend,
            spec.inference.on_start_failure)
        if started and hasattr(pipeline.preprocessor, "__aenter__"):
            started = await start_component(
                stack, f"pipelines.{pipeline.name}.preprocessor", pipeline.preprocessor,
                spec.preprocessor.on_start_failure)
        return started

    def _wire(self, actuators, pipelines, sources, cloud: bool) -> None:
        for binding in actuators:
            for name in binding.config.inputs:
                if self.pipelines[name] in pipelines:
                    self.pipelines[name].subscribers.append(binding)
        alarms = self.cloud.alarms if cloud else None
        if alarms is not None:  # cloud.alarms: every pipeline's alarms go to the cloud
            for pipeline in pipelines:
                pipeline.subscribers.append(alarms)
        for source in sources:
            source.targets = [p for p in source.targets if p in pipelines]

    def stats(self) -> dict[str, Any]:
        """Every counter, queue and turbine count: what the periodic `stats` log shows."""
        queues = {p.queue.name: p.queue.stats() for p in self.pipelines.values()}
        queues |= {b.queue.name: b.queue.stats() for b in self.actuators.values()}
        return {"counters": self.counters.snapshot(), "queues": queues,
                "turbines": {n: len(p.buffers.names) for n, p in self.pipelines.items()}}

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.raw.log.stats_interval_s)
            log.info("stats", **self.stats())

    async def _supervise(self, source: SourceNode) -> None:
        """Run a source; if it crashes, log it and run it again after a backoff."""
        attempt = 0
        while True:
            try:
                await source.component.run(source.emit)
                log.info("source_finished", source=source.name)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                self.counters.inc("source_failures", source=source.name)
                delay = backoff_delay(source.config.on_start_failure, attempt)
                log.error("source_failed", source=source.name, error=repr(exc),
                          restart_in_s=round(delay, 2))
                await asyncio.sleep(delay)

    async def _stop_stage(self, stage: str, limit_s: float,
                          drain: Iterable[ActuatorBinding] = ()) -> None:
        # Cancelled again while they run on: a cancellation can be swallowed (see
        # edged.base.tasks), and one task left running holds the whole shutdown.
        pending = await cancel_all(self.running.get(stage, []), seconds=limit_s)
        if pending:
            log.warning("shutdown_stage_overran", stage=stage,
                        still_running=sorted(t.get_name() for t in pending))
        for binding in drain:  # deliver alarms already decided before closing actuators
            await self._bounded(f"actuator.{binding.name}.drain", binding.drain(), limit_s)

    @staticmethod
    async def _bounded(what: str, awaitable: Awaitable, limit_s: float) -> None:
        try:
            async with asyncio.timeout(limit_s):
                await awaitable
        except TimeoutError:
            log.warning("shutdown_stage_overran", stage=what, limit_s=limit_s)


