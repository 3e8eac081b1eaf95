"""``edged demo``: a simulated wind farm watched by edged, with a live view and a
summary of what was injected and what was detected; its exit status says whether every
fault was found and nothing else was (README, "The two commands")."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
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
from edged.windturbine.simulator import parse_schedule

#: How long the demo runs unless told (with --dashboard: until Ctrl-C).
DEFAULT_DURATION_S = 60.0
#: Detections closer together than this are one interval in the summary.
MERGE_GAP_S = 2.0
REFRESH_S = 2.0
#: A fault that started less than this before the end is too recent to judge: it is
#: found about a second after it starts (the next decision, over windows that now hold
#: it), and the end-to-end test allows three.
JUDGE_AFTER_S = 3.0

#: Exit statuses beside EX_OK, EX_FAILURE (a component failed to start) and EX_CONFIG;
#: both at once add up (12).
EX_NOT_DETECTED = 4  # a fault that started in time to be judged was not detected
EX_UNEXPECTED = 8  # a detection no fault explains: a healthy turbine, or the wrong group

# ANSI: cursor home; clear to the end of the line; clear to the end of the screen. Each
# frame overwrites the last in place, without the flicker of clearing the screen first.
_HOME, _CLEAR_LINE, _CLEAR_DOWN = "\x1b[H", "\x1b[K", "\x1b[J"
GROUPS = ("vibration", "rotation", "voltage")


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
    primary: str | None = None  # the diagnosis: the group furthest over its threshold
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
            view.primary = decision.primary
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


def frame(observer: DemoObserver, simulator: SimulatorSource | None) -> list[str]:
    """The live view's lines: per turbine its state, the reference rule's flag per
    group, the diagnosis (the primary group), the model, the fault injected now and the
    last action."""
    now = time.time() - observer.t0
    lines = [f"--- edged demo, t = {now:5.1f} s ---",
             f"{'turbine':<11}{'state':<12}{'vibration':<11}{'rotation':<10}{'voltage':<9}"
             f"{'diagnosis':<11}{'model':<17}{'injected':<11}action"]
    for index, (turbine, view) in enumerate(sorted(observer.turbines.items())):
        flags = [("ANOMALY" if view.groups.get(g) else "ok") if view.groups else "-"
                 for g in GROUPS]
        injected = ",".join(sorted(simulator.farm.active_faults(index))) if simulator else ""
        lines.append(f"{turbine:<11}{view.state:<12}{flags[0]:<11}{flags[1]:<10}"
                     f"{flags[2]:<9}{view.primary or '-':<11}{view.model:<17}"
                     f"{injected or '-':<11}{view.alarm or '-'}")
    return lines


def _render(lines: list[str], out, in_place: bool) -> None:
    """One frame: redrawn over the last on a terminal, appended as plain lines to a file
    or a pipe (where escape codes would be noise)."""
    if in_place:
        out.write(_HOME + "".join(f"{line}{_CLEAR_LINE}\n" for line in lines) + _CLEAR_DOWN)
    else:
        out.write("\n" + "".join(f"{line}\n" for line in lines))
    out.flush()


def summary(observer: DemoObserver, simulator: SimulatorSource | None,
            now: float | None = None) -> dict:
    """What was injected (faults that started by ``now``, a wall-clock time) and what
    was detected and flagged, per turbine, in seconds since the demo started."""
    now = time.time() if now is None else now
    injections = [i for i in (simulator.injections() if simulator else []) if i.start <= now]
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
                          "end": round(min(i.end, now) - observer.t0, 2)}
                         for i in injections if i.turbine == turbine],
            "detected": spans(view.detected),
            "flagged": spans(view.flagged),
        })
    return {"turbines": turbines}


@dataclass
class Verdict:
    """The summary's check: a line per fault and per unexplained detection, and what
    went wrong, counted."""

    lines: list[str] = field(default_factory=list)
    not_detected: int = 0
    unexpected: int = 0

    @property
    def status(self) -> int:
        return ((EX_NOT_DETECTED if self.not_detected else EX_OK)
                | (EX_UNEXPECTED if self.unexpected else EX_OK))

    def outcome(self) -> str:
        wrong = [f"{count} {what}" for count, what in (
            (self.not_detected, "fault(s) not detected"),
            (self.unexpected, "unexpected detection(s)")) if count]
        return (f"FAILED: {' and '.join(wrong)} (exit {self.status})" if wrong
                else "OK: every fault detected in its own group, nothing else (exit 0)")


def verdict(result: dict, tail_s: float, ended: float,
            not_started: list[tuple[str, str, float]] = ()) -> Verdict:
    """Every injected fault detected in its group, and nothing detected that no fault
    explains. A fault's effect outlasts it by up to the buffer's length (``tail_s``):
    the denoise runs over the whole 500-row history. ``ended``: when the demo ended;
    a fault that started less than JUDGE_AFTER_S before is not judged. ``not_started``:
    (turbine, kind, start) of faults scheduled after the end."""
    check = Verdict()
    for turbine in result["turbines"]:
        for fault in turbine["injected"]:
            hits = [d for d in turbine["detected"] if d["group"] == fault["kind"]
                    and fault["start"] <= d["first"] <= fault["end"] + tail_s]
            what = f"{turbine['id']}: {fault['kind']} fault at {fault['start']:.1f} s"
            if hits:
                check.lines.append(f"{what} detected after "
                                   f"{hits[0]['first'] - fault['start']:.1f} s")
            elif ended - fault["start"] < JUDGE_AFTER_S:
                check.lines.append(f"{what} not detected yet: it started "
                                   f"{ended - fault['start']:.1f} s before the end "
                                   f"(not judged under {JUDGE_AFTER_S:g} s)")
            else:
                check.not_detected += 1
                check.lines.append(f"{what} NOT detected")
        for found in turbine["detected"]:
            explained = any(f["kind"] == found["group"]
                            and f["start"] <= found["first"] <= f["end"] + tail_s
                            for f in turbine["injected"])
            if not explained:
                check.unexpected += 1
                check.lines.append(f"{turbine['id']}: UNEXPECTED {found['group']} detection "
                                   f"at {found['first']:.1f} s")
    for turbine, kind, start in not_started:
        check.lines.append(f"{turbine}: {kind} fault at {start:.1f} s not started: the demo "
                           f"ended at {ended:.1f} s")
    return check


def _demo_config_text(path: Path, turbines: int | None,
                      dashboard: str | None) -> tuple[str, list[str]]:
    """The demo config with ``turbines`` simulated turbines (if given) and a dashboard
    on ``dashboard`` (if given), and a note for each scheduled fault left out because
    its turbine is no longer there."""
    data, _ = load_yaml(read_config_text(path), str(path))
    if dashboard is not None:
        data["dashboard"] = {**(data.get("dashboard") or {}), "listen": dashboard}
    notes = []
    for source in data.get("sources", {}).values() if turbines is not None else ():
        if isinstance(source, dict) and source.get("type") == "simulator":
            source["turbines"] = turbines
            faults = source.get("faults", [])
            with contextlib.suppress(ValueError):  # a bad schedule: validation says why
                faults = [asdict(f) for f in parse_schedule(faults)] \
                    if isinstance(faults, str) else faults
            if not isinstance(faults, list):
                continue
            kept = []
            for fault in faults:
                turbine = fault.get("turbine") if isinstance(fault, dict) else None
                if isinstance(turbine, int) and turbine >= turbines:
                    notes.append(f"turbine-{turbine}: {fault.get('kind')} fault left out: "
                                 f"--turbines {turbines} has no turbine {turbine}")
                else:
                    kept.append(fault)
            source["faults"] = kept
    return yaml.safe_dump(data, sort_keys=False), notes


def dashboard_listen(text: str) -> str:
    """``--dashboard``'s ``[HOST:]PORT`` as the config's ``HOST:PORT``."""
    return text if ":" in text else f"127.0.0.1:{text}"


def run_demo(args: argparse.Namespace) -> int:
    path = Path(args.config) if args.config else default_config()
    args.config = str(path)
    notes: list[str] = []
    dashboard = None if args.dashboard is None else dashboard_listen(args.dashboard)
    duration = args.duration if args.duration is not None else (
        DEFAULT_DURATION_S if dashboard is None else math.inf)
    try:
        pm, registry, config = load(args, path)
        if args.turbines is not None or dashboard is not None:
            text, notes = _demo_config_text(path, args.turbines, dashboard)
            config = parse_config(text, str(path), registry)
    except (ConfigError, OSError) as exc:
        if isinstance(exc, OSError):
            print(f"edged demo: cannot read {path}: {exc}", file=sys.stderr)
            return EX_CONFIG
        return report_config_error(exc)
    configure_logs(args, config)
    view_out = sys.stderr if args.json else sys.stdout
    show_view = not args.json or sys.stderr.isatty()
    return asyncio.run(_demo(config, registry, pm, duration, args.json, view_out,
                             show_view, notes))


class Demo:
    """One demo run: the supervisor, the demo clock and the live view."""

    def __init__(self, config, registry, pm, duration: float, out, show_view: bool) -> None:
        self.observer = DemoObserver()
        self.watch = AlarmWatch(self.observer)
        self.duration = duration
        self.out = out
        self.show_view = show_view
        # Redrawn in place only on a terminal: a file or a pipe gets plain frames.
        self.in_place = show_view and out.isatty()
        self.ended: float | None = None  # wall clock
        self.banner: list[str] = []  # lines above the view (the dashboard's address)
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

    def tail_s(self) -> float:
        """How long a fault's effect can outlast it: a pipeline's history, in seconds of
        the simulator's rows (25 s: 500 rows at 20 Hz)."""
        sim = self.simulator()
        rows = max((p.preprocessor.history for p in self.graphs[-1].pipelines.values()),
                   default=500) if self.graphs else 500
        return rows / (sim.config.rate_hz if sim else 20.0)

    async def _clock(self) -> None:
        # The demo clock starts when the simulator goes live (after its history).
        await self.graph_seen.wait()
        sim = self.simulator()
        if sim is None:
            raise ConfigError(["the demo config has no simulator source"])
        await sim.live.wait()
        self.observer.t0 = sim.started_at
        dashboard = self.graphs[-1].services.get("dashboard")
        if dashboard is not None and dashboard.address is not None:
            host, port = dashboard.address
            host = f"[{host}]" if ":" in host else host
            self.banner = [f"dashboard: http://{host}:{port}/  (Ctrl-C ends the demo)"]
            # At once, not with the first frame: a script waits for the address.
            print(self.banner[0], file=self.out, flush=True)
        deadline = sim.started_at + self.duration
        while time.time() < deadline and not self.stop.is_set():
            await asyncio.sleep(min(REFRESH_S, max(0.0, deadline - time.time())))
            if self.show_view:
                _render(self.banner + frame(self.observer, sim), self.out, self.in_place)
        self.ended = time.time()
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


def _print_verdict(result: dict, check: Verdict, notes: list[str]) -> None:
    print("\nSummary (seconds since the demo started):")
    for line in check.lines + notes or ["no faults were injected"]:
        print(f"  {line}")
    healthy = [t for t in result["turbines"] if not t["injected"]]
    quiet = [t for t in healthy if not t["detected"]]
    print(f"  healthy turbines without any detection: {len(quiet)} of {len(healthy)}")
    print(check.outcome())


async def _demo(config, registry, pm, duration: float, as_json: bool, out,
                show_view: bool, notes: list[str] = ()) -> int:
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
    ended = demo.ended or time.time()  # stopped early (a signal): judged as it stands
    result = summary(demo.observer, sim, ended)
    not_started = [(i.turbine, i.kind, i.start - demo.observer.t0)
                   for i in (sim.injections() if sim else []) if i.start > ended]
    check = verdict(result, demo.tail_s(), ended - demo.observer.t0, not_started)
    if as_json:
        print(json.dumps(result))
    else:
        _print_verdict(result, check, list(notes))
    return check.status
