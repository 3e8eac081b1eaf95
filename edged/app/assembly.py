"""The assembly: a daemon's graph built from a validated config.

The one place that knows every layer: the engine's components (sources, pipelines,
actuators, built by their plugins' factories), then what watches and reports on them
(the data budget, the health report and its /metrics endpoint, pipeline captures, the
decision log and the watch socket), then the cloud link. The engine (edged.runtime)
imports none of these; it runs what this builds.
"""

from __future__ import annotations

import functools
from typing import Any

from edged.base.errors import ConfigError, PluginError
from edged.base.metrics import Counters
from edged.config import EdgedConfig
from edged.config.dependencies import missing_dependencies
from edged.plugin.components import BuildContext, SwappableBackend
from edged.plugin.registry import ComponentType, Kind, Registry
from edged.runtime.actuation import ActuatorBinding
from edged.runtime.graph import Graph, SourceNode
from edged.runtime.pipeline import Pipeline


def _build_captures(config: EdgedConfig, pipelines: dict[str, Pipeline],
                    counters: Counters, budget: Any = None) -> dict[str, Any]:
    """Each pipeline's PipelineCapture (those with a ``capture`` key), by name; their
    uploads ask the data budget (``cloud.data_budget``), when there is one, first."""
    captures: dict[str, Any] = {}
    thing = config.raw.device.id
    if config.cloud is not None:
        from edged.cloud.link import thing_name

        thing = thing_name(config.cloud, thing)
    for name, pipeline in pipelines.items():
        capture = config.pipelines[name].spec.capture
        if capture is not None:
            from edged.capture.pipeline_capture import PipelineCapture

            captures[name] = PipelineCapture(
                name, capture, device=config.raw.device.id,
                root=config.state_dir / "capture" / name, counters=counters, source=pipeline,
                budget=budget, thing=thing)
    return captures


def _keeps_its_word(ctype: ComponentType, component: Any) -> Any:
    """``component``, if it is what its type declares: check-config trusts ``hot_swap``
    (jobs may replace a ``store:`` model), so a backend that cannot is refused here, not
    at its first job."""
    if ctype.hot_swap and not isinstance(component, SwappableBackend):
        raise PluginError(f"inference type '{ctype.name}' declares hot_swap, but its backend "
                          "lacks for_model, load or directory")
    return component


def _watchers(config: EdgedConfig, pipelines: dict[str, Pipeline],
              counters: Counters) -> tuple[Any, Any, Any]:
    """The data budget, the health report and the /metrics endpoint, each only if the
    config asks for it.

    What a config does not ask for is not even imported: a device without a cloud
    section or /metrics loads neither the cloud link (and with it cryptography) nor
    prometheus_client, 12 MB of the daemon's RSS."""
    budget = health = metrics = None
    if config.cloud is not None:
        from edged.cloud.budget import build_budget

        budget = build_budget(config, counters)
    if config.raw.metrics is not None or config.raw.dashboard is not None or (
            config.cloud is not None and config.cloud.health is not None):
        from edged.health.report import Health

        health = Health(pipelines, counters, config.state_dir, device=config.raw.device.id,
                        budget=budget)
        if config.raw.metrics is not None:
            from edged.health.prometheus import MetricsServer

            metrics = MetricsServer(config.raw.metrics, health)
    return budget, health, metrics


def _watching(config: EdgedConfig, pipelines: dict[str, Pipeline],
              actuators: dict[str, ActuatorBinding], counters: Counters) -> dict[str, Any]:
    """The decision log (``log.decisions``) and the watch feed subscribed to every
    pipeline and actuator; the watch socket (``watch``), to start with the graph."""
    services: dict[str, Any] = {}
    mode = config.raw.log.decisions
    if mode != "none":
        from edged.watch.decision_log import DecisionLog

        for pipeline in pipelines.values():
            pipeline.subscribers.append(DecisionLog(mode))
    if config.raw.watch.enabled:
        from edged.watch.feed import EventFeed
        from edged.watch.protocol import socket_path
        from edged.watch.server import WatchServer

        feed = EventFeed(config.raw.device.id, counters, config.raw.watch.max_clients)
        for pipeline in pipelines.values():
            pipeline.subscribers.append(feed)
        for binding in actuators.values():
            binding.observers.append(feed.on_actuator_event)
        services["watch"] = WatchServer(config.raw.watch, socket_path(config), feed,
                                        counters)
    return services


def _add_services(config: EdgedConfig, registry: Registry, graph: Graph) -> None:
    """Every plugin service the config asks for (the dashboard), built with the graph
    they watch; ConfigError naming each that cannot be built."""
    problems = []
    for name, service in registry.services.items():
        try:
            built = service.build(config, graph)
        except Exception as exc:  # a factory's error is a config problem, named as such
            problems.append(f"Cannot build service '{name}' from {config.path}: {exc}")
            continue
        if built is not None:
            graph.services[name] = built
    if problems:
        raise ConfigError(problems)


def build_graph(config: EdgedConfig, registry: Registry,
                counters: Counters | None = None) -> Graph:
    """Instantiate every component; raise :class:`ConfigError` if any cannot be built.
    Nothing is started."""
    # What the config's features import, before anything is built with them: a missing
    # package is a config error (exit 78, a refused reload), never a feature disabled
    # while the daemon reports itself running.
    problems = missing_dependencies(config)
    if problems:
        raise ConfigError(problems)
    counters = counters or Counters()

    def build(name: str, label: str, kind: Kind, cfg: Any, *, inputs: tuple[str, ...] = (),
              manifest: dict[str, Any] | None = None) -> Any:
        ctx = BuildContext(name=name, device_id=config.raw.device.id,
                           state_dir=config.state_dir, counters=counters, inputs=inputs)
        try:
            ctype = registry.component(kind, cfg.type)
            return _keeps_its_word(ctype, ctype.build(cfg, ctx, manifest=manifest))
        except Exception as exc:  # a factory's error is a config problem, named as such
            problems.append(f"Cannot build '{label}' from {config.path}: {exc}")
            return None

    pipelines: dict[str, Pipeline] = {}
    for name, pc in config.pipelines.items():
        backend = build(name, f"pipelines.{name}.inference", "inference", pc.inference)
        if backend is None:
            continue
        pre = build(name, f"pipelines.{name}.preprocessor", "preprocessor", pc.preprocessor,
                    manifest=backend.manifest)
        if pre is not None:
            pipelines[name] = Pipeline(name, pc.spec, pre, backend, counters)

    sources: dict[str, SourceNode] = {}
    for name, sc in config.sources.items():
        targets = [pipelines[p] for p, pc in config.pipelines.items()
                   if name in pc.spec.inputs and p in pipelines]
        wanted = {t.preprocessor.inputs for t in targets}
        if len(wanted) > 1:
            problems.append(f"Cannot build 'sources.{name}': its pipelines want different "
                            f"inputs {sorted(wanted)}")
            continue
        inputs = next(iter(wanted), ())
        component = build(name, f"sources.{name}", "source", sc, inputs=inputs)
        if component is not None:
            sources[name] = SourceNode(name, sc, component, targets)

    actuators: dict[str, ActuatorBinding] = {}
    for name, ac in config.actuators.items():
        component = build(name, f"actuators.{name}", "actuator", ac)
        if component is not None:
            actuators[name] = ActuatorBinding(name, ac, component, counters)

    budget, health, metrics = _watchers(config, pipelines, counters)
    # Before the cloud: capture on demand (a cloud service) acts on them.
    captures = _build_captures(config, pipelines, counters, budget)
    cloud = None
    if config.cloud is not None:
        from edged.cloud.link import build_cloud

        try:
            cloud = build_cloud(config, registry, pipelines, counters, health, captures,
                                budget)
        except ConfigError as exc:
            problems += [f"Cannot build 'cloud' from {config.path}: {p}"
                         for p in exc.problems]

    if problems:
        raise ConfigError(problems)
    graph = Graph(config, sources, pipelines, actuators, counters, cloud, health, metrics,
                  captures, budget, _watching(config, pipelines, actuators, counters))
    _add_services(config, registry, graph)
    if health is not None and graph.captures:
        health.spool = functools.partial(spool_figures, list(graph.captures.values()))
        health.sketch = functools.partial(sketch_totals, list(graph.captures.values()))
    return graph


def sketch_totals(captures: list[Any]) -> dict[str, Any]:
    """Fleet health's ``sketch``: each pipeline's open hour (decisions, anomalous,
    psi_max against the manifest's expected_input, else null)."""
    return {c.pipeline: c.sketch_totals() for c in captures}


def spool_figures(captures: list[Any]) -> dict[str, int]:
    """Fleet health's ``spool``: every pipeline's capture spool, summed."""
    return {"depth": sum(c.pending for c in captures),
            "bytes": sum(c.pending_bytes for c in captures),
            "dropped": sum(c.dropped() for c in captures),
            "refusing": sum(c.refusing for c in captures)}
