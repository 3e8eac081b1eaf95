"""Fixtures for the agent's tests: a real agent on a real Unix socket, and clients built
from the project's .proto with plain grpcio stubs (no edged client code)."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_testkit import BUILTIN_MODEL, MemoryCapture, RunningAgent, make_config

from edged.agent.proto import agent_pb2_grpc
from edged.agent.server import AgentServer, CaptureSink


@pytest.fixture
def model_root(tmp_path) -> Path:
    """A model root holding a copy of the built-in wind-turbine model."""
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(BUILTIN_MODEL, root / "windturbine-v1")
    return root


@pytest.fixture
def short_dir(tmp_path_factory) -> Path:
    """A directory for sockets: a Unix socket path must stay under 108 bytes."""
    return tmp_path_factory.mktemp("ag")


@pytest.fixture
def start_agent(tmp_path, model_root, short_dir) -> Iterator:
    """Starts an in-process agent (grpc.aio on its own event loop in a thread, so the
    tests can use blocking grpcio stubs) with the given config changes."""
    started: list[tuple[RunningAgent, threading.Thread, asyncio.Event]] = []

    def start(sink: CaptureSink | str | None = "memory", **changes) -> RunningAgent:
        """``sink``: "memory" (a stand-in), None (the real store, from the config) or a
        sink object; ``changes``: AgentConfig fields (``capture`` a dict of its own)."""
        config = make_config(tmp_path, model_root, **changes)
        socket = short_dir / f"agent{len(started)}.sock"
        if sink == "memory":
            sink = MemoryCapture()
        ready = threading.Event()
        box: dict = {}

        async def main() -> None:
            stop = asyncio.Event()
            try:
                async with AgentServer(config, str(socket), capture=sink,
                                       grace_s=1.0) as server:
                    box["agent"] = RunningAgent(server, socket, asyncio.get_running_loop())
                    box["stop"] = stop
                    ready.set()
                    await stop.wait()
            except BaseException as exc:
                box["error"] = exc
                ready.set()
                raise

        thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        thread.start()
        assert ready.wait(30), "the agent did not start"
        if "error" in box:
            raise box["error"]
        agent = box["agent"]
        started.append((agent, thread, box["stop"]))
        return agent

    yield start
    for agent, thread, stop in started:
        for channel in agent.channels:
            channel.close()
        agent.loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        assert not thread.is_alive(), "the agent did not stop"


@pytest.fixture
def agent(start_agent) -> RunningAgent:
    return start_agent()


@pytest.fixture
def stub(agent) -> agent_pb2_grpc.AgentStub:
    return agent.stub()
