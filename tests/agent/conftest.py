"""Fixtures for the agent's tests: a real agent on a real Unix socket, and clients built
from the project's .proto with plain grpcio stubs (no edged client code)."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest
from agent_testkit import (
    BUILTIN_MODEL,
    MemoryCapture,
    RunningAgent,
    agent_in_thread,
    make_config,
)

from edged.agent.proto import agent_pb2_grpc
from edged.agent.server import CaptureSink


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
    """Starts an in-process agent (:func:`agent_testkit.agent_in_thread`) with the given
    config changes; every one is stopped after the test."""
    numbers = itertools.count()
    with contextlib.ExitStack() as running:

        def start(sink: CaptureSink | str | None = "memory", **changes) -> RunningAgent:
            """``sink``: "memory" (a stand-in), None (the real store, from the config) or
            a sink object; ``changes``: AgentConfig fields (``capture`` a dict of its
            own)."""
            config = make_config(tmp_path, model_root, **changes)
            socket = short_dir / f"agent{next(numbers)}.sock"
            if sink == "memory":
                sink = MemoryCapture()
            return running.enter_context(agent_in_thread(config, socket, sink))

        yield start


@pytest.fixture
def agent(start_agent) -> RunningAgent:
    return start_agent()


@pytest.fixture
def stub(agent) -> agent_pb2_grpc.AgentStub:
    return agent.stub()


_segment_ids = itertools.count(1)


@pytest.fixture
def segment():
    """``segment(array)`` puts ``array``'s bytes in a new POSIX shared-memory object named
    as a client names it for the agent (``edged-<segment_id>``) and returns the id; every
    object is removed after the test."""
    made: list[shared_memory.SharedMemory] = []

    def create(x: np.ndarray) -> int:
        segment_id = os.getpid() * 1000 + next(_segment_ids) % 1000
        shm = shared_memory.SharedMemory(name=f"edged-{segment_id}", create=True,
                                         size=x.nbytes)
        shm.buf[:x.nbytes] = x.tobytes()
        made.append(shm)
        return segment_id

    yield create
    for shm in made:
        shm.close()
        shm.unlink()
