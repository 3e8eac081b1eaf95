"""Helpers for the agent's tests (a module of its own: every test directory has a
``conftest`` module, so importing from one by name is ambiguous)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from edged.agent.config import AgentConfig, CaptureSection
from edged.agent.proto import agent_pb2 as pb
from edged.agent.proto import agent_pb2_grpc
from edged.agent.server import AgentServer, CaptureSink
from edged.capture.store import BufferFull, CaptureRecord, DuplicateCaptureId

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_MODEL = ROOT / "edged" / "model" / "builtin" / "windturbine-v1"


def make_config(tmp_path: Path, model_root: Path, **changes) -> AgentConfig:
    capture = changes.pop("capture", {})
    changes.setdefault("predict_threads", 8)
    return AgentConfig(device_name="test-device", model_roots=[model_root],
                       capture=CaptureSection(disk_path=tmp_path / "capture", **capture),
                       **changes)


class MemoryCapture:
    """A stand-in capture sink for the tests of the other rpcs."""

    def __init__(self, buffer_size: int = 4) -> None:
        self.buffer_size = buffer_size
        self.records: dict[str, CaptureRecord] = {}

    async def submit(self, record: CaptureRecord) -> None:
        if record.capture_id in self.records:
            raise DuplicateCaptureId(record.capture_id)
        if len(self.records) >= self.buffer_size:
            raise BufferFull(f"{self.buffer_size} pending")
        self.records[record.capture_id] = record

    def status(self, capture_id: str) -> str:
        return "IN_PROGRESS" if capture_id in self.records else "NOT_FOUND"


@dataclass
class RunningAgent:
    server: AgentServer
    socket: Path
    loop: asyncio.AbstractEventLoop
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"unix://{self.socket}"

    def stub(self, **options) -> agent_pb2_grpc.AgentStub:
        channel = grpc.insecure_channel(self.target, options=list(options.items()))
        self.channels.append(channel)
        return agent_pb2_grpc.AgentStub(channel)


@contextlib.contextmanager
def agent_in_thread(config: AgentConfig, socket: Path,
                    sink: CaptureSink | None) -> Iterator[RunningAgent]:
    """An in-process agent (grpc.aio on its own event loop in a thread, so that tests can
    use blocking grpcio stubs), stopped on leaving: a restart is leaving and entering
    again. ``sink``: a capture sink, or None for the real store from the config."""
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
    try:
        yield agent
    finally:
        for channel in agent.channels:
            channel.close()
        agent.loop.call_soon_threadsafe(box["stop"].set)
        thread.join(30)
        assert not thread.is_alive(), "the agent did not stop"


def code_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a call that must fail."""
    try:
        call(*args, timeout=30, **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    raise AssertionError(f"{call} succeeded")


def load_windturbine(stub, name: str = "windturbine") -> pb.LoadModelResponse:
    return stub.LoadModel(pb.LoadModelRequest(url="windturbine-v1", name=name), timeout=30)


def windows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 6, 10, 10)).astype(np.float32)


def reference_predict(x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(BUILTIN_MODEL / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def inline(x: np.ndarray, name: str | None = None, data_type: int = pb.FLOAT32,
           shape: list[int] | None = None) -> pb.Tensor:
    meta = None if name is None else pb.TensorMetadata(
        name=name, data_type=data_type, shape=list(x.shape) if shape is None else shape)
    return pb.Tensor(tensor_metadata=meta, byte_data=x.tobytes())


def output_array(tensor: pb.Tensor) -> np.ndarray:
    meta = tensor.tensor_metadata
    assert meta.data_type == pb.FLOAT32
    return np.frombuffer(tensor.byte_data, dtype=np.float32).reshape(list(meta.shape))
