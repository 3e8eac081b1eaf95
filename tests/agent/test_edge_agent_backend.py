"""Inference backend ``edge_agent`` against a real ``edged agent`` on a Unix socket: the
same predictions as ONNX Runtime in-process, batches split, reconnection after the agent
restarts, deadlines, start-up checks, and a whole daemon pipeline detecting a fault."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import grpc
import numpy as np
import pytest
import yaml

from edged import hookimpl
from edged.agent.proto import agent_pb2, agent_pb2_grpc
from edged.app.assembly import build_graph
from edged.base.errors import ModelError
from edged.builtin.edge_agent import EdgeAgentBackend, EdgeAgentConfig
from edged.builtin.onnx import OnnxBackend, OnnxConfig
from edged.config import load_config
from edged.model.package import resolve_model_path
from edged.plugin.config import ActuatorConfig
from edged.plugin.events import Decision, Event, Round
from edged.plugin.manager import make_plugin_manager
from edged.plugin.registry import ComponentType
from edged.runtime.supervisor import Supervisor

BUILTIN = "builtin:windturbine-v1"
MODEL = "windturbine"
PIPELINE = "turbines"


# -- a real agent in a subprocess ----------------------------------------------------------


class Agent:
    """``python -m edged agent -a SOCKET -c CONFIG``, restartable on the same socket."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "agent.sock"
        self.models = root / "models"
        self.model_dir = self.models / "windturbine-v1"
        if not self.model_dir.exists():
            shutil.copytree(resolve_model_path(BUILTIN), self.model_dir)
        self.config = root / "agent.yaml"
        self.config.write_text(yaml.safe_dump({
            "log": {"level": "warning", "format": "json"},
            "agent": {"device_name": "test-device", "model_roots": [str(self.models)],
                      "predict_threads": 4,
                      "capture": {"disk_path": str(root / "capture")}},
        }))
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 30.0) -> Agent:
        self.starts += 1
        log = (self.root / f"agent-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edged", "agent", "-a", str(self.socket), "-c",
             str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        with grpc.insecure_channel(f"unix://{self.socket}") as channel:
            stub = agent_pb2_grpc.AgentStub(channel)
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the agent exited with {self.proc.returncode}: "
                                       f"{self.log()}")
                try:
                    stub.ListModels(agent_pb2.ListModelsRequest(), timeout=0.5,
                                    wait_for_ready=True)
                    return self
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the agent did not answer: {self.log()}") from None

    def log(self) -> str:
        return (self.root / f"agent-{self.starts}.log").read_text()[-3000:]

    def kill(self) -> None:
        """SIGKILL: no goodbye, the socket file stays behind (as after a crash)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def stub(self, channel: grpc.Channel) -> agent_pb2_grpc.AgentStub:
        return agent_pb2_grpc.AgentStub(channel)

    def loaded(self) -> list[str]:
        with grpc.insecure_channel(f"unix://{self.socket}") as channel:
            reply = self.stub(channel).ListModels(agent_pb2.ListModelsRequest(), timeout=5)
        return [m.name for m in reply.models]


def _short_dir(factory: pytest.TempPathFactory) -> Path:
    # A Unix socket path must stay under 108 bytes: a short name under pytest's base.
    return factory.mktemp("ea")


@pytest.fixture(scope="module")
def shared_agent(tmp_path_factory) -> Iterator[Agent]:
    """One agent for the tests that do not restart it."""
    a = Agent(_short_dir(tmp_path_factory)).start()
    yield a
    a.stop()


@pytest.fixture
def own_agent(tmp_path_factory) -> Iterator[Agent]:
    """An agent a test may kill, stop or restart."""
    a = Agent(_short_dir(tmp_path_factory)).start()
    yield a
    a.stop()


def config(agent: Agent, **fields) -> EdgeAgentConfig:
    base = {"type": "edge_agent", "socket": str(agent.socket), "model_name": MODEL,
            "model_url": str(agent.model_dir)}
    return EdgeAgentConfig.model_validate(base | fields)


def windows(rows: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 6, 10, 10)).astype(np.float32)


@pytest.fixture(scope="module")
def onnx() -> OnnxBackend:
    b = OnnxBackend(OnnxConfig(type="onnx", model=BUILTIN))
    b.load()
    return b


# -- predictions ---------------------------------------------------------------------------


async def test_predictions_equal_onnx_runtime_in_process(shared_agent, onnx):
    backend = EdgeAgentBackend(config(shared_agent))
    assert backend.model.name == "windturbine" and backend.model.version == 1
    assert backend.manifest["preprocessing"]["type"] == "windturbine"
    async with backend:
        assert MODEL in shared_agent.loaded()
        for rows in (1, 5, 64):
            x = windows(rows, seed=rows)
            y = backend.predict(x)
            assert y.shape == x.shape and y.dtype == np.float32
            np.testing.assert_allclose(y, onnx.predict(x), rtol=0, atol=1e-6)
        # The golden pairs shipped with the model, through the socket.
        with np.load(onnx.directory / onnx.manifest["golden"]) as golden:
            np.testing.assert_allclose(backend.predict(golden["inputs"]),
                                       onnx.predict(golden["inputs"]), rtol=0, atol=1e-6)
        # float64 input (what the preprocessor produces) is sent as float32.
        x = windows(3).astype(np.float64)
        np.testing.assert_allclose(backend.predict(x), onnx.predict(x), rtol=0, atol=1e-6)
        assert backend.predict(windows(0)).shape == (0, 6, 10, 10)


async def test_batches_larger_than_max_batch_are_split(shared_agent, onnx):
    backend = EdgeAgentBackend(config(shared_agent, max_batch=16))
    sizes: list[int] = []
    async with backend:
        real = backend._stub.Predict

        def counting(request, **kwargs):
            sizes.append(request.tensors[0].tensor_metadata.shape[0])
            return real(request, **kwargs)

        backend._stub.Predict = counting
        x = windows(16 * 4 + 5)
        y = backend.predict(x)
    assert sizes == [16, 16, 16, 16, 5]
    np.testing.assert_allclose(y, onnx.predict(x), rtol=0, atol=1e-6)
    # Every window got its own output, in order: no chunk was repeated or swapped.
    for start in range(0, len(x), 16):
        np.testing.assert_allclose(y[start:start + 16], onnx.predict(x[start:start + 16]),
                                   rtol=0, atol=1e-6)


async def test_model_already_loaded_is_fine_and_stop_leaves_it(shared_agent):
    first, second = EdgeAgentBackend(config(shared_agent)), EdgeAgentBackend(config(shared_agent))
    async with first, second:  # the second start meets ALREADY_EXISTS
        np.testing.assert_array_equal(first.predict(windows(2)), second.predict(windows(2)))
    assert MODEL in shared_agent.loaded(), "unload_on_stop is false by default"


async def test_unload_on_stop(shared_agent):
    backend = EdgeAgentBackend(config(shared_agent, model_name="unload-me", unload_on_stop=True))
    async with backend:
        assert "unload-me" in shared_agent.loaded()
        backend.predict(windows(1))
    assert "unload-me" not in shared_agent.loaded()
    with pytest.raises(ModelError, match="not started"):
        backend.predict(windows(1))


# -- start-up checks -----------------------------------------------------------------------


async def test_metadata_that_does_not_match_the_manifest_is_a_model_error(shared_agent, tmp_path):
    manifest = json.loads((shared_agent.model_dir / "manifest.json").read_text())
    manifest["inputs"][0]["shape"] = [None, 6, 10, 20]
    wrong = tmp_path / "manifest.json"
    wrong.write_text(json.dumps(manifest))
    backend = EdgeAgentBackend(config(shared_agent, manifest=str(wrong)))
    with pytest.raises(ModelError, match=r"input input, FLOAT32, \[-1, 6, 10, 10\] does not "
                       r"match the manifest's input, float32, \[-1, 6, 10, 20\]"):
        await backend.__aenter__()
    assert backend._channel is None, "a failed start closes its channel"


async def test_a_model_not_loaded_without_model_url_is_a_model_error(shared_agent):
    backend = EdgeAgentBackend(config(shared_agent, model_name="nobody-loaded-this",
                                      model_url=None, manifest=BUILTIN))
    with pytest.raises(ModelError, match="has no model 'nobody-loaded-this' loaded"):
        await backend.__aenter__()


async def test_no_agent_fails_the_start_after_connect_timeout(tmp_path):
    backend = EdgeAgentBackend(EdgeAgentConfig(
        type="edge_agent", socket=tmp_path / "nobody.sock", model_name=MODEL,
        manifest=BUILTIN, connect_timeout_s=0.5))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="could not reach the agent within 0.5 s"):
        await backend.__aenter__()
    assert time.monotonic() - started < 3


def test_config_needs_a_manifest_somewhere(tmp_path):
    with pytest.raises(ValueError, match="set `manifest`"):
        EdgeAgentConfig(type="edge_agent", socket=tmp_path / "a.sock", model_name=MODEL)
    with pytest.raises(ValueError, match="model_name"):
        EdgeAgentConfig(type="edge_agent", socket=tmp_path / "a.sock", model_name="wind_turbine",
                        manifest=BUILTIN)
    # model_url names a remote-only path: its manifest cannot be read here.
    remote = EdgeAgentConfig(type="edge_agent", socket=tmp_path / "a.sock", model_name=MODEL,
                             model_url="/nowhere/windturbine")
    with pytest.raises(ModelError, match="set `manifest`"):
        EdgeAgentBackend(remote)


def test_manifest_from_a_model_directory_or_a_manifest_file(tmp_path):
    directory = tmp_path / "m"
    shutil.copytree(resolve_model_path(BUILTIN), directory)
    by_url = EdgeAgentBackend(EdgeAgentConfig(type="edge_agent", socket=tmp_path / "a.sock",
                                              model_name=MODEL, model_url=str(directory)))
    by_file = EdgeAgentBackend(EdgeAgentConfig(
        type="edge_agent", socket=tmp_path / "a.sock", model_name=MODEL,
        manifest=str(directory / "manifest.json")))
    assert by_url.manifest == by_file.manifest
    assert by_url.model == by_file.model


# -- failures and reconnection -------------------------------------------------------------


async def test_agent_killed_and_restarted_next_predict_succeeds(own_agent, onnx):
    backend = EdgeAgentBackend(config(own_agent, deadline_s=5))
    async with backend:
        x = windows(20)
        np.testing.assert_allclose(backend.predict(x), onnx.predict(x), rtol=0, atol=1e-6)
        channel = backend._channel
        own_agent.kill()
        own_agent.start()
        assert own_agent.loaded() == [], "the new agent process knows no model"
        # Same backend, same channel: gRPC reconnects, the model is loaded again.
        np.testing.assert_allclose(backend.predict(x), onnx.predict(x), rtol=0, atol=1e-6)
        assert backend._channel is channel
        assert MODEL in own_agent.loaded()


async def test_predict_while_the_agent_is_down_fails_then_recovers(own_agent, onnx):
    backend = EdgeAgentBackend(config(own_agent, deadline_s=0.5))
    async with backend:
        backend.predict(windows(1))
        own_agent.kill()
        started = time.monotonic()
        with pytest.raises((TimeoutError, ConnectionError), match="edge agent at unix://"):
            backend.predict(windows(1))
        assert time.monotonic() - started < 2.5, "bounded by the deadline"
        own_agent.start()
        x = windows(4)
        np.testing.assert_allclose(backend.predict(x), onnx.predict(x), rtol=0, atol=1e-6)


async def test_restarted_agent_without_the_model_and_no_model_url_is_a_clear_error(own_agent):
    loader = EdgeAgentBackend(config(own_agent))
    async with loader:
        pass
    backend = EdgeAgentBackend(config(own_agent, model_url=None, manifest=BUILTIN))
    async with backend:
        backend.predict(windows(1))
        own_agent.kill()
        own_agent.start()
        with pytest.raises(ModelError, match="Predict failed: NOT_FOUND"):
            backend.predict(windows(1))


async def test_deadline_exceeded_is_a_clear_error_not_a_hang(own_agent, onnx):
    backend = EdgeAgentBackend(config(own_agent, deadline_s=0.5))
    async with backend:
        backend.predict(windows(1))
        os.kill(own_agent.proc.pid, signal.SIGSTOP)  # hung: connected, never answers
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError, match="Predict got no answer within 0.5 s"):
                backend.predict(windows(8))
            assert time.monotonic() - started < 2.0
        finally:
            os.kill(own_agent.proc.pid, signal.SIGCONT)
        x = windows(8)
        np.testing.assert_allclose(backend.predict(x), onnx.predict(x), rtol=0, atol=1e-6)


# -- the whole daemon: supervisor, simulator, windturbine, edge_agent ----------------------


class RecorderConfig(ActuatorConfig):
    type: Literal["recorder"]


class Recorder:
    def __init__(self, config: RecorderConfig, ctx) -> None:
        self.events: list[Event] = []

    async def __aenter__(self) -> Recorder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def handle(self, event: Event) -> None:
        self.events.append(event)


class Plugin:
    def __init__(self) -> None:
        self.recorders: list[Recorder] = []

    @hookimpl
    def edged_component_types(self) -> list[ComponentType]:
        return [ComponentType("actuator", "recorder", RecorderConfig, self.build, "test")]

    def build(self, config, ctx) -> Recorder:
        self.recorders.append(Recorder(config, ctx))
        return self.recorders[-1]


class Decisions:
    """A pipeline subscriber keeping every decision by (turbine, rows it was based on)."""

    def __init__(self) -> None:
        self.by_row: dict[tuple[str, int], Decision] = {}

    def on_round(self, round: Round) -> None:
        for d in round.decisions:
            self.by_row[(d.turbine, d.rows)] = d

    def on_event(self, event: Event) -> None:
        return None


async def run_daemon(tmp_path: Path, inference: dict, seconds: float = 4.0):
    """Run the daemon with a simulated farm whose turbine 1 has a voltage fault from the
    second second on; return its alarms and its decisions."""
    path = tmp_path / f"edged-{inference['type']}.yaml"
    path.write_text(yaml.safe_dump({
        "device": {"id": "test-device"},
        "log": {"level": "warning", "format": "json"},
        "state_dir": str(tmp_path / "state"),
        "shutdown": {"stage_timeout_s": 2},
        "sources": {"farm": {"type": "simulator", "turbines": 3, "rate_hz": 20, "seed": 7,
                             "history_s": 25, "faults": "1:voltage@1-600"}},
        "pipelines": {PIPELINE: {"inputs": ["farm"], "preprocessor": {"type": "windturbine"},
                                 "inference": inference, "interval_s": 0.1}},
        "actuators": {"rec": {"type": "recorder", "inputs": [PIPELINE], "debounce": 2,
                              "cooldown_s": 0}},
    }, sort_keys=False))
    plugin = Plugin()
    pm, registry = make_plugin_manager(extra=[("recorder", plugin)])
    decisions = Decisions()
    stop = asyncio.Event()
    supervisor = Supervisor(
        load_config(path, registry), registry, pm, stop=stop, reload=asyncio.Event(),
        on_graph=lambda graph: graph.pipelines[PIPELINE].subscribers.append(decisions),
        build=build_graph)
    task = asyncio.create_task(supervisor.run(), name="test-supervisor")
    try:
        await asyncio.sleep(seconds)
        assert not task.done(), "the daemon stopped by itself"
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    (recorder,) = plugin.recorders
    alarms = [e for e in recorder.events if e.kind == "alarm"]
    failed = supervisor.counters.get("rounds_failed", pipeline=PIPELINE)
    return alarms, decisions.by_row, failed


async def test_daemon_detects_the_fault_exactly_like_the_onnx_backend(own_agent, tmp_path):
    agent_alarms, agent_decisions, agent_failed = await run_daemon(tmp_path, {
        "type": "edge_agent", "socket": str(own_agent.socket), "model_name": MODEL,
        "model_url": str(own_agent.model_dir)})
    onnx_alarms, onnx_decisions, _ = await run_daemon(tmp_path, {"type": "onnx",
                                                                 "model": BUILTIN})
    assert agent_failed == 0
    for alarms in (agent_alarms, onnx_alarms):
        assert {a.turbine for a in alarms} == {"turbine-1"}, "the faulty turbine, only"
        assert "voltage" in alarms[0].groups
    assert agent_alarms[0].model == onnx_alarms[0].model
    # The simulator is seeded: a decision on the same rows of the same turbine must come
    # out the same through the agent as in-process.
    common = sorted(agent_decisions.keys() & onnx_decisions.keys())
    assert len(common) >= 6, f"too few decisions on the same rows: {common}"
    assert {t for t, _ in common} == {"turbine-0", "turbine-1", "turbine-2"}
    for key in common:
        a, o = agent_decisions[key], onnx_decisions[key]
        assert a.anomalous == o.anomalous, key
        assert a.groups == o.groups and a.primary == o.primary, key
        np.testing.assert_allclose(a.values, o.values, rtol=1e-5, atol=1e-9, err_msg=str(key))
    # The fault is seen at the same reading through either backend (give or take the
    # rows between two decisions, which depend on timing), on turbine 1 only.
    first = [min((rows for (turbine, rows), d in decisions.items()
                  if turbine == "turbine-1" and d.groups["voltage"]), default=None)
             for decisions in (agent_decisions, onnx_decisions)]
    assert None not in first and abs(first[0] - first[1]) <= 2, first
    assert first[0] > 500 + 20, "not before the fault starts (1 s into the live rows)"
    for decisions in (agent_decisions, onnx_decisions):
        assert not any(d.is_anomalous for (turbine, _), d in decisions.items()
                       if turbine != "turbine-1")

async def test_daemon_keeps_running_while_the_agent_restarts(own_agent, tmp_path):
    """A round failing (agent gone) is logged and counted; the daemon decides again once
    the agent is back, on the same backend."""
    inference = {"type": "edge_agent", "socket": str(own_agent.socket), "model_name": MODEL,
                 "model_url": str(own_agent.model_dir), "deadline_s": 0.3}

    async def restart_midway() -> float:
        await asyncio.sleep(1.5)
        await asyncio.to_thread(own_agent.kill)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(own_agent.start)
        return time.time()

    restart = asyncio.create_task(restart_midway())
    alarms, decisions, failed = await run_daemon(tmp_path, inference, seconds=6.0)
    restarted_at = await restart
    assert failed >= 1, "rounds failed while the agent was down"
    assert {a.turbine for a in alarms} == {"turbine-1"}
    after = [d for d in decisions.values() if d.time > restarted_at]
    assert {d.turbine for d in after} == {"turbine-0", "turbine-1", "turbine-2"}, \
        "every turbine decided again after the restart"
