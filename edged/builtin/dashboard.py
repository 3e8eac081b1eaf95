"""Service ``dashboard``: the operator's dashboard over HTTP (docs/dashboard.md), built
for a graph whose config has a ``dashboard:`` section. Nothing of it is imported until
then: aiohttp is the optional extra ``edged[dashboard]``."""

from __future__ import annotations

from typing import Any

from edged import hookimpl
from edged.plugin.registry import ServiceType


def build_dashboard(config: Any, graph: Any) -> Any:
    """The dashboard's server: its board and its own event feed (its streams never take
    the watch socket's places), subscribed to every pipeline and actuator, with the
    controls of every source that has them (the simulator); None without ``dashboard:``."""
    spec = config.raw.dashboard
    if spec is None:
        return None
    from edged.dashboard.board import TurbineBoard
    from edged.dashboard.controls import FarmControl
    from edged.dashboard.server import DashboardServer
    from edged.watch.feed import EventFeed

    pipelines, counters = graph.pipelines, graph.counters
    controls = {name: node.component for name, node in graph.sources.items()
                if isinstance(node.component, FarmControl)}
    board = TurbineBoard(config.raw.device.id, pipelines, graph.health, controls,
                         jobs=graph.cloud.jobs_in_progress if graph.cloud else None)
    feed = EventFeed(config.raw.device.id, counters, spec.max_clients)
    for pipeline in pipelines.values():
        pipeline.subscribers += [board, feed]
    for binding in graph.actuators.values():
        binding.observers += [board.on_actuator_event, feed.on_actuator_event]
        binding.outcomes.append(board.on_actuator_outcome)
    return DashboardServer(spec, board, feed, counters)


@hookimpl
def edged_service_types() -> list[ServiceType]:
    return [ServiceType("dashboard", build_dashboard,
                        "the operator's dashboard over HTTP (`dashboard:`)")]
