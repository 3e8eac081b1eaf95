"""``edged demo``: a simulated wind farm watched by edged, with a live view and a
summary of what was injected and what was detected."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import yaml

from edged.app.assembly import build_graph
from edged.app.loading import (
    EX_CONFIG,
    EX_FAILURE,
    EX_OK,
    configure_logs,
    load,
    report_config_error,
)
from edged.base.errors import ComponentStartError, ConfigError
from edged.builtin.simulator import SimulatorSource
from edged.config import parse_config
from edged.config.yamlfile import load_yaml, read_config_text
from edged.plugin.events import Event, Round
from edged.runtime.graph import Graph
from edged.runtime.supervisor import Supervisor

#: Detections closer together than this are one interval in the summary.
MERGE_GAP_S = 2.0
REFRESH_S = 2.0


def default_config() -> Path:
    local = Path("configs/demo.yaml")
    return local if local.is_file() else Path(str(files("edged") / "demo.yaml"))


@dataclass
class Interval:
    start: float
    end: float


@dataclass
class TurbineView:
    state: str = "warming up"
    groups: dict[str, bool] = field(default_factory=dict)
    model: str = "-"
    # Per group: intervals in which the group was the primary anomaly (the diagnosis).
    detected: dict[str, list[Interval]] = field(default_factory=dict)
    # Per group: intervals in which the reference rule flagged the group at all.
    flagged: dict[str, list[Interval]] = field(default_factory=dict)
    alarm: str = ""


def _extend(intervals: dict[str, list[Interval]], group: str, at: float) -> None:
    runs = intervals.setdefault(group, [])
    if runs and at - runs[-1].end <= MERGE_GAP_S:
        runs[-1].end = at
    else:
        runs.append(Interval(at, at))


class DemoObserver:
    """Subscribes to every pipeline (like an actuator binding, without debounce) and
    keeps what the view and the summary need."""

    def __init__(self) -> None:
        self.turbines: dict[str, TurbineView] = {}
        self.t0 = time.time()

    def on_round(self, round: Round) -> None:
        for decision in round.decisions:
            view = self.turbines.setdefault(decision.turbine, TurbineView())
            at = decision.time - self.t0
            view.groups = decision.groups
            view.model = f"{decision.model.name} v{decision.model.version}"
            view.state = "ANOMALY" if decision.is_anomalous else "ok"
            if decision.primary is not None:
                _extend(view.detected, decision.primary, at)
            for group, flagged in decision.groups.items():
                if flagged:
                    _extend(view.flagged, group, at)

    def on_event(self, event: Event) -> None:
        view = self.turbines.setdefault(event.turbine, TurbineView())
        if event.kind == "sensor_stale":
            view.state = "stale"


class AlarmWatch:
    """Records the alarms the runtime raised (after debounce), for the live view."""

    def __init__(self, observer: DemoObserver) -> None:
        self.observer = observer

    def on_graph(self, graph: Graph) -> None:
        for binding in graph.actuators.values():
            original = binding.on_event

            def watched(event: Event, original=original) -> None:
                if event.kind in ("alarm", "clear"):
                    view = self.observer.turbines.setdefault(event.turbine, TurbineView())
                    view.alarm = ("ALARM " + ",".join(event.groups)) if event.kind == "alarm" \
                        else "cleared"
                original(event)

            binding.on_event = watched


def _render(observer: DemoObserver, simulator: SimulatorSource | None, out) -> None:
    now = time.time() - observer.t0
    print(f"\n--- edged demo, t = {now:5.1f} s ---", file=out)
    print(f"{'turbine':<11}{'state':<12}{'vibration':<11}{'rotation':<10}{'voltage':<9}"
          f"{'model':<17}{'injected':<11}action", file=out)
    for index, (turbine, view) in enumerate(sorted(observer.turbines.items())):
        flags = [("ANOMALY" if view.groups.get(g) else "ok") if view.groups else "-"
                 for g in ("vibration", "rotation", "voltage")]
        injected = ",".join(sorted(simulator.farm.active_faults(index))) if simulator else ""
        print(f"{turbine:<11}{view.state:<12}{flags[0]:<11}{flags[1]:<10}{flags[2]:<9}"
              f"{view.model:<17}{injected or '-':<11}{view.alarm or '-'}", file=out)
    out.flush()


def summary(observer: DemoObserver, simulator: SimulatorSource | None) -> dict:
    injections = simulator.injections() if simulator else []
    turbines = []
    names = simulator.farm.turbine_ids if simulator else sorted(observer.turbines)
    for turbine in names:
        view = observer.turbines.get(turbine, TurbineView())

        def spans(intervals: dict[str, list[Interval]]) -> list[dict]:
            return sorted(({"group": g, "first": round(i.start, 2), "last": round(i.end, 2)}
                           for g, runs in intervals.items() for i in runs),
                          key=lambda d: (d["first"], d["group"]))

        turbines.append({
            "id": turbine,
            "injected": [{"kind": i.kind, "start": round(i.start - observer.t0, 2),
                          "end": round(min(i.end, time.time()) - observer.t0, 2)}
                         for i in injections if i.turbine == turbine],
            "detected": spans(view.detected),
            "flagged": spans(view.flagged),
        })
    return {"turbines": turbines}


def verdict(result: dict, tail_s: float) -> list[str]:
    """Human-readable check: every injected fault detected in its group, and nothing
    detected that no fault explains. A fault's effect outlasts it by up to the
    buffer's length (``tail_s``): the denoise runs over the whole 500-row history."""
    lines = []
    for turbine in result["turbines"]:
        for fault in turbine["injected"]:
            hits = [d for d in turbine["detected"] if d["group"] == fault["kind"]
                    and fault["start"] <= d["first"] <= fault["end"] + tail_s]
            lines.append(
                f"{turbine['id']}: {fault['kind']} fault at {fault['start']:.1f} s detected "
                f"after {hits[0]['first'] - fault['start']:.1f} s" if hits else
                f"{turbine['id']}: {fault['kind']} fault at {fault['start']:.1f} s NOT detected")
        for found in turbine["detected"]:
            explained = any(f["kind"] == found["group"]
                            and f["start"] <= found["first"] <= f["end"] + tail_s
                            for f in turbine["injected"])
            if not explained:
                lines.append(f"{turbine['id']}: UNEXPECTED {found['group']} detection at "
                             f"{found['first']:.1f} s")
    return lines


def _demo_config_text(path: Path, turbines: int) -> str:
    """The demo config with ``turbines`` simulated turbines."""
    data, _ = load_yaml(read_config_text(path), str(path))
    for source in data.get("sources", {}).values():
        if isinstance(source, dict) and source.get("type") == "simulator":
            source["turbines"] = turbines
    return yaml.safe_dump(data, sort_keys=False)


def run_demo(args: argparse.Namespace) -> int:
    path = Path(args.config) if args.config else default_config()
    args.config = str(path)
    try:
        pm, registry, config = load(args, path)
        if args.turbines is not None:
            config = parse_config(_demo_config_text(path, args.turbines), str(path),
                                  registry)
    except (ConfigError, OSError) as exc:
        if isinstance(exc, OSError):
            print(f"edged demo: cannot read {path}: {exc}", file=sys.stderr)
            return EX_CONFIG
        return report_config_error(exc)
    configure_logs(args, config)
    view_out = sys.stderr if args.json else sys.stdout
    show_view = not args.json or sys.stderr.isatty()
    return asyncio.run(_demo(config, registry, pm, args.duration, args.json, view_out,
                             show_view))


class Demo:
    """One demo run: the supervisor, the demo clock and the live view."""

    def __init__(self, config, registry, pm, duration: float, out, show_view: bool) -> None:
        self.observer = DemoObserver()
        self.watch = AlarmWatch(self.observer)
        self.duration = duration
        self.out = out
        self.show_view = show_view
        self.stop = asyncio.Event()
        self.graph_seen = asyncio.Event()
        self.graphs: list[Graph] = []
        self.supervisor = Supervisor(config, registry, pm, stop=self.stop,
                                     reload=asyncio.Event(), on_graph=self._on_graph,
                                     build=build_graph)

    def _on_graph(self, graph: Graph) -> None:
        self.graphs.append(graph)
        for pipeline in graph.pipelines.values():
            pipeline.subscribers.append(self.observer)
        self.watch.on_graph(graph)
        self.graph_seen.set()

    def simulator(self) -> SimulatorSource | None:
        for node in self.graphs[-1].sources.values() if self.graphs else ():
            if isinstance(node.component, SimulatorSource):
                return node.component
        return None

    async def _clock(self) -> None:
        # The demo clock starts when the simulator goes live (after its history).
        await self.graph_seen.wait()
        sim = self.simulator()
        if sim is None:
            raise ConfigError(["the demo config has no simulator source"])
        await sim.live.wait()
        self.observer.t0 = sim.started_at
        deadline = sim.started_at + self.duration
        while time.time() < deadline and not self.stop.is_set():
            await asyncio.sleep(min(REFRESH_S, max(0.0, deadline - time.time())))
            if self.show_view:
                _render(self.observer, sim, self.out)
        self.stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.supervisor.run(), name="edged[demo].supervisor")
                tg.create_task(self._clock(), name="edged[demo].clock")
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _print_verdict(result: dict, tail_s: float) -> None:
    print("\nSummary (seconds since the demo started):")
    for line in verdict(result, tail_s) or ["no faults were injected"]:
        print(f"  {line}")
    healthy = [t for t in result["turbines"] if not t["injected"]]
    quiet = [t for t in healthy if not t["detected"]]
    print(f"  healthy turbines without any detection: {len(quiet)} of {len(healthy)}")


async def _demo(config, registry, pm, duration: float, as_json: bool, out,
                show_view: bool) -> int:
    try:
        demo = Demo(config, registry, pm, duration, out, show_view)
    except ConfigError as exc:
        return report_config_error(exc)
    try:
        await demo.run()
    except ExceptionGroup as group:
        failure = group.subgroup((ComponentStartError, ConfigError))
        if failure is None:
            raise
        print(f"edged demo: {failure.exceptions[0]}", file=sys.stderr)
        return EX_FAILURE
    sim = demo.simulator()
    result = summary(demo.observer, sim)
    if as_json:
        print(json.dumps(result))
    else:
        _print_verdict(result, sim.config.history_s if sim else 25.0)
    return EX_OK
