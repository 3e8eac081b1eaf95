"""The supervisor with real components: start, staged shutdown, start-up failure
policies, reload (valid, invalid, failing to start) and the real signals of `edged run`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import Field

from edged import hookimpl
from edged.app.assembly import build_graph
from edged.base.errors import ComponentStartError
from edged.config import load_config
from edged.model.package import resolve_model_path
from edged.plugin.config import ActuatorConfig
from edged.plugin.events import Event
from edged.plugin.manager import make_plugin_manager
from edged.plugin.registry import ComponentType
from edged.runtime import supervisor as supervisor_module
from edged.runtime.graph import Graph
from edged.runtime.supervisor import Supervisor
from tests.support import EdgedProcess, hostile_configs

REPO = Path(__file__).resolve().parents[2]
PIPELINE = "turbines"


# -- an in-process test plugin --------------------------------------------------------------


class RecorderConfig(ActuatorConfig):
    type: Literal["recorder"]
    fail_starts: int = Field(0, ge=0, description="Start attempts that raise before one works.")
    swallow_cancel: bool = Field(False, description="The first handle() waits until it is "
                                 "cancelled and swallows that, as Python 3.11's wait_for "
                                 "under an MQTT publish can.")


class Recorder:
    """A real actuator that records what happens to it."""

    def __init__(self, config: RecorderConfig, name: str) -> None:
        self.config = config
        self.name = name
        self.attempts = 0
        self.entered = False
        self.exited = False
        self.running_at_exit: list[str] | None = None
        self.events: list[Event] = []
        self.swallowed = 0

    async def __aenter__(self) -> Recorder:
        self.attempts += 1
        if self.attempts <= self.config.fail_starts:
            raise RuntimeError(f"relay board not found (attempt {self.attempts})")
        self.entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited = True
        # Staged shutdown: every loop has stopped before components are closed.
        self.running_at_exit = sorted(
            t.get_name() for t in asyncio.all_tasks()
            if not t.done() and t.get_name().startswith(("edged[source", "edged[pipeline",
                                                         "edged[actuator")))

    async def handle(self, event: Event) -> None:
        self.events.append(event)
        if self.config.swallow_cancel and not self.swallowed:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.swallowed += 1


class Journal:
    """The plugin object: registers the recorder and observes the lifecycle hooks."""

    def __init__(self) -> None:
        self.recorders: list[Recorder] = []
        self.started: list[Graph] = []
        self.stopping: list[str] = []

    @hookimpl
    def edged_component_types(self) -> list[ComponentType]:
        return [ComponentType("actuator", "recorder", RecorderConfig, self.build,
                              "records events for tests")]

    def build(self, config: RecorderConfig, ctx) -> Recorder:
        recorder = Recorder(config, ctx.name)
        self.recorders.append(recorder)
        return recorder

    @hookimpl
    def edged_started(self, graph, config) -> None:
        self.started.append(graph)

    @hookimpl
    def edged_stopping(self, graph, reason) -> None:
        self.stopping.append(reason)


# -- configs --------------------------------------------------------------------------------


def config_text(tmp_path: Path, *, recorder: dict | None = None,
                extra_actuators: dict | None = None, history_s: float = 25,
                faults: str = "1:voltage@0-600", log: str = "warning") -> str:
    config = {
        "device": {"id": "test-device"},
        "log": {"level": log, "format": "json"},
        "state_dir": str(tmp_path / "state"),
        "shutdown": {"stage_timeout_s": 2},
        "sources": {"farm": {"type": "simulator", "turbines": 3, "rate_hz": 20, "seed": 3,
                             "history_s": history_s, "faults": faults}},
        "pipelines": {PIPELINE: {
            "inputs": ["farm"],
            "preprocessor": {"type": "windturbine"},
            "inference": {"type": "onnx", "model": "builtin:windturbine-v1"},
            "interval_s": 0.1,
        }},
        "actuators": {"log": {"type": "log", "inputs": [PIPELINE], "level": "info"}},
    }
    if recorder is not None:
        config["actuators"]["rec"] = recorder
    config["actuators"].update(extra_actuators or {})
    return yaml.safe_dump(config, sort_keys=False)


def rec_cfg(**fields) -> dict:
    return {"type": "recorder", "inputs": [PIPELINE], "debounce": 1, "cooldown_s": 0,
            **fields}


class Harness:
    def __init__(self, tmp_path: Path, text: str) -> None:
        self.path = tmp_path / "edged.yaml"
        self.path.write_text(text)
        self.journal = Journal()
        self.pm, self.registry = make_plugin_manager(extra=[("recorder", self.journal)])
        self.stop = asyncio.Event()
        self.reload = asyncio.Event()
        self.graphs: list[Graph] = []
        self.supervisor = Supervisor(load_config(self.path, self.registry), self.registry,
                                     self.pm, stop=self.stop, reload=self.reload,
                                     on_graph=self.graphs.append, build=build_graph)
        self.task: asyncio.Task | None = None

    def start(self) -> asyncio.Task:
        self.task = asyncio.create_task(self.supervisor.run(), name="test-supervisor")
        return self.task

    def decisions(self) -> int:
        return self.supervisor.counters.get("decisions", pipeline=PIPELINE)

    async def wait_decisions(self, more_than: int = 0, within: float = 10.0) -> int:
        await until(lambda: self.decisions() > more_than, within,
                    f"decisions beyond {more_than}")
        return self.decisions()

    async def shutdown(self, within: float = 10.0) -> float:
        started = time.monotonic()
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, within)
        return time.monotonic() - started


async def until(condition, within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def cleanup():
    """Stops whatever supervisor a test left running, so a failure cannot leak tasks."""
    harnesses: list[Harness] = []
    yield harnesses.append
    for h in harnesses:
        if h.task is not None and not h.task.done():
            h.stop.set()
            try:
                await asyncio.wait_for(h.task, 10)
            except Exception:  # the test has failed already; do not hide that
                h.task.cancel()


# -- start and stop -------------------------------------------------------------------------


async def test_starts_every_component_and_stops_in_stages(tmp_path, cleanup):
    h = Harness(tmp_path, config_text(tmp_path, recorder=rec_cfg()))
    cleanup(h)
    h.start()
    await h.wait_decisions()
    (graph,) = h.graphs
    assert h.journal.started == [graph]
    (recorder,) = h.journal.recorders
    assert recorder.entered and not recorder.exited
    assert graph.pipelines[PIPELINE].backend._session is not None, "model loaded"
    await until(lambda: any(e.kind == "alarm" for e in recorder.events), 5, "an alarm")
    assert recorder.events[0].turbine == "turbine-1"

    names = {name for tasks in graph.running.values() for name in
             (t.get_name() for t in tasks)}
    assert names == {
        "edged[source.farm].run",
        f"edged[pipeline.{PIPELINE}].ingest_loop",
        f"edged[pipeline.{PIPELINE}].decide_loop",
        f"edged[pipeline.{PIPELINE}].watch_loop",
        "edged[graph].stats",
        "edged[actuator.log].run",
        "edged[actuator.rec].run",
    }
    ours = {asyncio.current_task(), h.task}
    unnamed = [t.get_name() for t in asyncio.all_tasks() - ours
               if not t.get_name().startswith("edged[")]
    assert unnamed == [], "every task of the daemon is named edged[...]"

    elapsed = await h.shutdown()
    assert elapsed < 4.0, "shutdown is bounded by the stage timeouts"
    assert all(t.done() for tasks in graph.running.values() for t in tasks)
    assert recorder.exited
    assert recorder.running_at_exit == [], "loops stop before components close"
    assert h.journal.stopping == ["shutdown"]
    assert not [t for t in asyncio.all_tasks() - {asyncio.current_task()}
                if t.get_name().startswith("edged[")]


async def test_a_swallowed_cancellation_does_not_hold_the_shutdown(tmp_path, cleanup):
    """An actuator whose cancellation is swallowed runs on after its stage cancelled it;
    it is cancelled again, and the daemon still stops within its stage bounds."""
    h = Harness(tmp_path, config_text(tmp_path, recorder=rec_cfg(swallow_cancel=True)))
    cleanup(h)
    h.start()
    (recorder,) = h.journal.recorders
    await until(lambda: recorder.events, 10, "the recorder's first event")
    elapsed = await h.shutdown()
    assert recorder.swallowed == 1
    assert elapsed < 4.0, "the stages' bounds hold with a cancellation swallowed"
    (graph,) = h.graphs
    assert all(t.done() for tasks in graph.running.values() for t in tasks)
    assert recorder.exited


class FaultyLifecycle:
    """A third-party plugin whose lifecycle hooks raise."""

    @hookimpl
    def edged_started(self, graph, config) -> None:
        raise RuntimeError("started hook bug")

    @hookimpl
    def edged_stopping(self, graph, reason) -> None:
        raise RuntimeError("stopping hook bug")


async def test_a_raising_lifecycle_hook_is_counted_and_the_daemon_goes_on(tmp_path, cleanup):
    h = Harness(tmp_path, config_text(tmp_path, recorder=rec_cfg()))
    # Registered after the journal, so pluggy calls it first (LIFO): the journal must
    # still hear both hooks although this one raised before it.
    h.pm.register(FaultyLifecycle(), name="faulty")
    cleanup(h)
    h.start()
    before = await h.wait_decisions()
    await h.wait_decisions(more_than=before)  # still deciding after the hook raised
    (graph,) = h.graphs
    assert h.journal.started == [graph]
    counters = h.supervisor.counters
    assert counters.get("plugin_hook_failed", hook="edged_started", plugin="faulty") == 1
    await h.shutdown()
    assert h.journal.stopping == ["shutdown"]
    assert counters.get("plugin_hook_failed", hook="edged_stopping", plugin="faulty") == 1


# -- start-up failure policies --------------------------------------------------------------


async def test_fail_policy_raises_and_no_source_ever_ran(tmp_path, cleanup):
    h = Harness(tmp_path, config_text(
        tmp_path, recorder=rec_cfg(fail_starts=1, on_start_failure={"policy": "fail"})))
    cleanup(h)
    with pytest.raises(ComponentStartError, match=r"actuators\.rec failed to start.*relay"):
        await asyncio.wait_for(h.start(), 10)
    (graph,) = h.graphs
    simulator = graph.sources["farm"].component
    assert not simulator.live.is_set() and simulator.started_at is None
    assert h.supervisor.counters.get("rows_accepted", pipeline=PIPELINE) == 0
    assert h.journal.started == []
    assert graph.running == {}, "no loop was ever started"


async def test_disable_policy_runs_without_the_component(tmp_path, cleanup):
    h = Harness(tmp_path, config_text(
        tmp_path, recorder=rec_cfg(fail_starts=100, on_start_failure={"policy": "disable"})))
    cleanup(h)
    h.start()
    await h.wait_decisions()
    (graph,) = h.graphs
    (recorder,) = h.journal.recorders
    assert recorder.attempts == 1
    assert [t.get_name() for t in graph.running["actuators"]] == ["edged[actuator.log].run"]
    # Of the actuators, only the one that started hears the pipeline (beside them: the
    # decision log and the watch feed).
    assert [s for s in graph.pipelines[PIPELINE].subscribers
            if s in graph.actuators.values()] == [graph.actuators["log"]]
    await h.shutdown()
    assert not recorder.exited, "cleanup runs only for what started"


async def test_retry_policy_succeeds_on_a_later_attempt(tmp_path, cleanup):
    h = Harness(tmp_path, config_text(tmp_path, recorder=rec_cfg(fail_starts=1, on_start_failure={
        "policy": "retry", "attempts": 3, "backoff_s": 0.05})))
    cleanup(h)
    h.start()
    await h.wait_decisions()
    (recorder,) = h.journal.recorders
    assert recorder.attempts == 2 and recorder.entered
    await until(lambda: recorder.events, 5, "an event for the retried actuator")
    await h.shutdown()
    assert recorder.exited


async def test_retry_policy_gives_up_after_its_attempts(tmp_path, cleanup):
    h = Harness(tmp_path, config_text(tmp_path, recorder=rec_cfg(fail_starts=5, on_start_failure={
        "policy": "retry", "attempts": 3, "backoff_s": 0.02})))
    cleanup(h)
    with pytest.raises(ComponentStartError, match="attempt 3"):
        await asyncio.wait_for(h.start(), 10)
    assert h.journal.recorders[0].attempts == 3


# -- reload ---------------------------------------------------------------------------------


async def test_reload_swaps_in_a_valid_config(tmp_path, cleanup):
    h = Harness(tmp_path, config_text(tmp_path, recorder=rec_cfg()))
    cleanup(h)
    h.start()
    await h.wait_decisions()
    old_graph = h.supervisor.graph
    old_recorder = h.journal.recorders[0]
    # A changed debounce, an added actuator, and a source without simulated history:
    # decisions can only continue at once if the turbines' histories were carried over.
    h.path.write_text(config_text(
        tmp_path, recorder=rec_cfg(debounce=2), history_s=0,
        extra_actuators={"rec2": rec_cfg()}))
    h.reload.set()
    await until(lambda: h.supervisor.reloads == 1, 10, "the reload")
    new_graph = h.supervisor.graph
    assert new_graph is not old_graph and h.graphs == [old_graph, new_graph]
    assert h.journal.started == [old_graph, new_graph]
    assert h.journal.stopping == ["reload"]
    assert new_graph.config.actuators["rec"].debounce == 2
    assert set(new_graph.actuators) == {"log", "rec", "rec2"}
    assert old_recorder.exited
    assert new_graph.pipelines[PIPELINE].buffers is old_graph.pipelines[PIPELINE].buffers

    reloaded_at = h.decisions()
    await h.wait_decisions(reloaded_at, within=2.0)
    new_recorders = h.journal.recorders[1:]
    assert [r.name for r in new_recorders] == ["rec", "rec2"]
    await until(lambda: all(r.events for r in new_recorders), 5, "events in the new graph")
    assert h.supervisor.counters.total("reloads_refused") == 0
    await h.shutdown()


@pytest.mark.parametrize("garbage", [
    "sources: [\n  - {unclosed",  # not YAML
    "pipelines: {}\n",  # YAML, but not a config
])
async def test_reload_refuses_an_invalid_config(tmp_path, cleanup, garbage):
    h = Harness(tmp_path, config_text(tmp_path, recorder=rec_cfg()))
    cleanup(h)
    h.start()
    await h.wait_decisions()
    graph = h.supervisor.graph
    recorder = h.journal.recorders[0]
    h.path.write_text(garbage)
    h.reload.set()
    await until(lambda: h.supervisor.counters.total("reloads_refused") == 1, 10,
                "the refusal")
    assert h.supervisor.graph is graph and h.graphs == [graph]
    assert h.supervisor.reloads == 0
    assert h.journal.stopping == []
    assert not recorder.exited
    assert all(not t.done() for tasks in graph.running.values() for t in tasks)
    await h.wait_decisions(h.decisions(), within=2.0)

    # Fixing the file makes the next reload succeed.
    h.path.write_text(config_text(tmp_path, recorder=rec_cfg()))
    h.reload.set()
    await until(lambda: h.supervisor.reloads == 1, 10, "the second reload")
    assert h.supervisor.counters.total("reloads_refused") == 1
    await h.shutdown()


async def test_reload_that_fails_to_start_goes_back_to_the_old_config(tmp_path, cleanup):
    h = Harness(tmp_path, config_text(tmp_path, recorder=rec_cfg()))
    cleanup(h)
    h.start()
    await h.wait_decisions()
    first = h.supervisor.graph
    old_config = h.supervisor.config
    h.path.write_text(config_text(
        tmp_path, recorder=rec_cfg(fail_starts=1, on_start_failure={"policy": "fail"})))
    h.reload.set()
    await until(lambda: len(h.journal.started) == 2, 10, "the old config to run again")
    failed, fallback = h.graphs[1:]
    assert failed.config.actuators["rec"].fail_starts == 1
    assert failed.running == {}, "the new graph never ran"
    assert h.supervisor.graph is fallback
    assert h.supervisor.config is old_config
    assert h.supervisor.reloads == 0
    assert h.journal.started == [first, fallback]
    assert fallback.config.actuators["rec"] == first.config.actuators["rec"]
    # The histories survive the detour.
    assert fallback.pipelines[PIPELINE].buffers is first.pipelines[PIPELINE].buffers
    await h.wait_decisions(h.decisions(), within=2.0)
    await h.shutdown()


async def test_a_reload_past_its_time_bound_is_refused_while_decisions_go_on(
        tmp_path, cleanup, monkeypatch):
    """The file is read and checked in a worker thread: a read that takes too long (a
    slow disk, a file the bounds let through slowly) is refused, once its bound is
    over, and decisions never wait for it."""
    h = Harness(tmp_path, config_text(tmp_path, recorder=rec_cfg()).replace(
        "shutdown:", "reload:\n  timeout_s: 0.5\nshutdown:"))
    cleanup(h)
    release = threading.Event()
    real_load = supervisor_module.load_config

    def slow_load(path, registry):
        release.wait(30)  # blocks its thread, as parsing a hostile file would
        return real_load(path, registry)

    monkeypatch.setattr(supervisor_module, "load_config", slow_load)
    h.start()
    await h.wait_decisions()
    graph = h.supervisor.graph
    counters = h.supervisor.counters
    h.reload.set()
    before = h.decisions()
    await h.wait_decisions(before + 2, within=2.0)  # deciding while the file is read
    await until(lambda: counters.get("reloads_refused", reason="timeout") == 1, 5,
                "the refusal at the time bound")
    # A second SIGHUP while that read still runs is refused, not stacked.
    h.reload.set()
    await until(lambda: counters.get("reloads_refused", reason="busy") == 1, 5, "busy")
    release.set()
    await until(h.supervisor._building.done, 5, "the abandoned read to end")
    assert h.supervisor.graph is graph and h.supervisor.reloads == 0
    h.reload.set()
    await until(lambda: h.supervisor.reloads == 1, 10, "a reload that works")
    await h.wait_decisions(h.decisions(), within=2.0)
    await h.shutdown()


# -- real signals ---------------------------------------------------------------------------


def _events(log_file: Path) -> list[dict]:
    return _events_text(log_file.read_text(errors="replace"))


def _events_text(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _wait_for(proc: subprocess.Popen, log_file: Path, predicate, timeout: float,
              what: str) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in _events(log_file):
            if predicate(record):
                return record
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {what} in the log (exit status {proc.poll()}):\n"
                         f"{log_file.read_text()[-3000:]}")


def test_edged_run_reloads_on_sighup_and_stops_on_sigterm(tmp_path):
    config = tmp_path / "edged.yaml"
    # turbine-0 misbehaves at once; turbine-1 only after the refused reload.
    config.write_text(config_text(tmp_path, faults="0:voltage@0-600,1:rotation@4-600",
                                  log="info"))
    log_file = tmp_path / "edged.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_file.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(config)],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    try:
        _wait_for(proc, log_file, lambda r: r.get("event") == "graph_started", 30,
                  "graph_started")
        _wait_for(proc, log_file, lambda r: r.get("event") == "turbine_alarm"
                  and r.get("turbine") == "turbine-0", 10, "alarm for turbine-0")

        config.write_text("sources: [\n  - {broken")
        proc.send_signal(signal.SIGHUP)
        refused = _wait_for(proc, log_file, lambda r: r.get("event") == "reload_refused",
                            10, "reload_refused")
        assert refused["path"] == str(config)
        # Still deciding with the old config: the later fault is detected.
        _wait_for(proc, log_file, lambda r: r.get("event") == "turbine_alarm"
                  and r.get("turbine") == "turbine-1", 15, "alarm for turbine-1")
        assert proc.poll() is None
        assert sum(r.get("event") == "graph_started" for r in _events(log_file)) == 1

        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - stopping < 5
        events = [r.get("event") for r in _events(log_file)]
        assert events.index("graph_stopping") < events.index("graph_stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_edged_run_exits_1_without_a_traceback_when_a_component_fails_to_start(tmp_path):
    model = tmp_path / "broken-model"
    shutil.copytree(resolve_model_path("builtin:windturbine-v1"), model)
    (model / "model.onnx").write_bytes(b"not a model")
    data = yaml.safe_load(config_text(tmp_path, log="info"))
    data["pipelines"][PIPELINE]["inference"] = {"type": "onnx", "model": str(model),
                                                "verify": False}
    config = tmp_path / "edged.yaml"
    config.write_text(yaml.safe_dump(data))
    done = subprocess.run([sys.executable, "-m", "edged", "run", "-c", str(config)],
                          check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    failed = [r for r in _events_text(done.stderr) if r.get("event") == "start_failed"]
    assert len(failed) == 1
    assert "pipelines.turbines.inference failed to start" in failed[0]["error"]
    assert "ONNX Runtime cannot load it" in failed[0]["error"]


def _decisions(stats: dict) -> int:
    return stats["counters"].get(f"decisions{{pipeline={PIPELINE}}}", 0)


def _longest_gap(stats: list[dict]) -> float:
    """The longest time between two log lines of the stats loop, which runs on the event
    loop: how long the loop was held."""
    times = [datetime.fromisoformat(line["timestamp"]).timestamp() for line in stats]
    return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


async def _next(daemon: EdgedProcess, event: str, seen: int, seconds: float = 30) -> dict:
    """The log line of ``event`` after the first ``seen`` ones."""
    deadline = time.monotonic() + seconds
    while len(found := daemon.events(event)) <= seen:
        assert daemon.proc.poll() is None, f"edged exited {daemon.proc.poll()}: " + \
            "\n".join(json.dumps(line) for line in daemon.lines[-20:])
        assert time.monotonic() < deadline, f"no {event} within {seconds} s"
        await asyncio.sleep(0.05)
    return found[seen]


async def test_edged_run_refuses_every_hostile_file_on_sighup_and_keeps_deciding(tmp_path):
    """Issue 13, items 2 and 3: before, a file not UTF-8 or nested 100,000 levels ended
    the daemon on SIGHUP (exit 1), and an alias bomb or a large file held the event loop
    (no decisions, no /metrics, no watchdog) while it parsed."""
    data = yaml.safe_load(config_text(tmp_path, faults="0:voltage@0-600", log="info"))
    data["log"]["stats_interval_s"] = 0.2  # a line from the event loop 5 times a second
    data["reload"] = {"timeout_s": 60}  # the reasons below, however slow this machine is
    good = yaml.safe_dump(data, sort_keys=False)
    config = tmp_path / "edged.yaml"
    config.write_text(good)
    hostile = hostile_configs(tmp_path, good)
    with EdgedProcess(config, env={"PYTHONUNBUFFERED": "1"}, cwd=REPO) as daemon:
        await daemon.wait_for("graph_started", 30)
        await daemon.wait_for("stats")
        for count, (name, (path, reason)) in enumerate(hostile.items()):
            config.write_bytes(path.read_bytes())
            daemon.proc.send_signal(signal.SIGHUP)
            refused = await _next(daemon, "reload_refused", count)
            assert refused["reason"] == reason, (name, refused)
            assert str(config) in refused["problems"][0], refused
            # Deciding after the refusal as before it.
            stats = await _next(daemon, "stats", len(daemon.events("stats")))
            later = await _next(daemon, "stats", len(daemon.events("stats")) + 2)
            assert _decisions(later) > _decisions(stats), name
            assert later["counters"][f"reloads_refused{{reason={reason}}}"] >= 1
        gap = _longest_gap(daemon.events("stats"))
        assert gap < 2.5, f"the event loop was held {gap:.1f} s"
        assert len(daemon.events("graph_started")) == 1

        # A good file still reloads, and a fault that starts after the abuse is seen.
        data["sources"]["farm"]["faults"] = "0:voltage@0-600,1:rotation@0-600"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        daemon.proc.send_signal(signal.SIGHUP)
        await daemon.wait_for("config_reloaded", 30)
        await _next(daemon, "turbine_alarm", 0, 30)
        deadline = time.monotonic() + 20
        while not any(line.get("turbine") == "turbine-1"
                      for line in daemon.events("turbine_alarm")):
            assert time.monotonic() < deadline, "no alarm for turbine-1 after the reload"
            await asyncio.sleep(0.1)
        assert daemon.stop() == 0
