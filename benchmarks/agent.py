"""What the agent's socket costs: Predict over ``edged agent``'s Unix socket against the
same model called in-process, in the same run.

    make bench            # or: .venv/bin/python benchmarks/agent.py [--seconds 2]

The agent runs as a subprocess (``python -m edged agent``) on a socket in a temporary
directory, with the reference model copied under its model root and its default
settings (one ONNX Runtime thread per call, ``predict_threads`` calls at once). The
client side is plain grpcio stubs from ``edged.agent.proto`` (one long-lived channel,
the request built once), so the figures are the agent's, not the ``edge_agent``
backend's. In-process is an ``onnxruntime.InferenceSession`` with one intra-op thread,
as the ``onnx`` backend makes it.

- latency: p50/p99 of one call at a time, batch 1 and batch 64 (windows per call);
- throughput: calls/s with N client threads at once, each with its own channel (as N
  client applications would have), against N threads sharing one in-process session;
- the ``edge_agent`` backend's ``predict`` at batch 64 (request building and output
  parsing included), for comparison with the plain stub.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnxruntime
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from edged.agent.proto import agent_pb2, agent_pb2_grpc  # noqa: E402
from edged.base.log import configure_logging  # noqa: E402
from edged.builtin.edge_agent import EdgeAgentBackend, EdgeAgentConfig  # noqa: E402
from edged.model.package import read_manifest, resolve_model_path  # noqa: E402

MODEL = "windturbine"


class AgentProcess:
    """``edged agent`` in a subprocess on a socket in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "agent.sock"
        self.model_dir = root / "models" / "windturbine-v1"
        shutil.copytree(resolve_model_path("builtin:windturbine-v1"), self.model_dir)
        self.config = root / "agent.yaml"
        self.config.write_text(yaml.safe_dump({
            "log": {"level": "warning", "format": "json"},
            "agent": {"device_name": "bench", "model_roots": [str(root / "models")],
                      "capture": {"disk_path": str(root / "capture")}},
        }))
        self.log = root / "agent.log"
        self.proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"unix://{self.socket}"

    def __enter__(self) -> AgentProcess:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edged", "agent", "-a", str(self.socket), "-c",
                 str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        with grpc.insecure_channel(self.target) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=30)
            except grpc.FutureTimeoutError:
                raise RuntimeError(f"the agent did not start: {self.log.read_text()}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def timed(call: Callable[[], object], seconds: float, least: int = 50) -> np.ndarray:
    """Per-call times (s) of ``call`` run back to back for ``seconds`` (after warm-up)."""
    for _ in range(20):
        call()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < least:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return np.array(times)


def throughput(make_call: Callable[[], Callable[[], object]], clients: int,
               seconds: float) -> float:
    """Calls/s of ``clients`` threads, each calling its own ``make_call()`` in a loop."""
    calls = [make_call() for _ in range(clients)]
    for call in calls:
        call()
    counts = [0] * clients
    go, stop = threading.Barrier(clients + 1), threading.Event()

    def worker(i: int) -> None:
        call = calls[i]
        go.wait()
        n = 0
        while not stop.is_set():
            call()
            n += 1
        counts[i] = n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    go.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def predict_request(x: np.ndarray) -> agent_pb2.PredictRequest:
    meta = agent_pb2.TensorMetadata(name="input", data_type=agent_pb2.FLOAT32,
                                    shape=list(x.shape))
    return agent_pb2.PredictRequest(name=MODEL, tensors=[agent_pb2.Tensor(
        tensor_metadata=meta, byte_data=x.tobytes())])


def stub_call(stub, x: np.ndarray) -> Callable[[], np.ndarray]:
    request = predict_request(x)

    def call() -> np.ndarray:
        reply = stub.Predict(request, timeout=10)
        return np.frombuffer(reply.tensors[0].byte_data, dtype=np.float32)

    return call


def session() -> onnxruntime.InferenceSession:
    directory = resolve_model_path("builtin:windturbine-v1")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(directory / read_manifest(directory).model),
                                        options, providers=["CPUExecutionProvider"])


def ms(times: np.ndarray, q: float) -> float:
    return float(np.percentile(times, q)) * 1e3


async def backend_times(agent: AgentProcess, x: np.ndarray, seconds: float) -> np.ndarray:
    backend = EdgeAgentBackend(EdgeAgentConfig(
        type="edge_agent", socket=agent.socket, model_name=MODEL,
        model_url=str(agent.model_dir), max_batch=64))
    async with backend:
        return timed(lambda: backend.predict(x), seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    args = parser.parse_args()
    configure_logging("warning", "console")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; python "
          f"{platform.python_version()}, grpcio {grpc.__version__}, onnxruntime "
          f"{onnxruntime.__version__}")
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 6, 10, 10)).astype(np.float32) for b in (1, 64)}
    local = session()
    name = local.get_inputs()[0].name

    def local_call(x: np.ndarray) -> Callable[[], object]:
        return lambda: local.run(None, {name: x})

    with tempfile.TemporaryDirectory(prefix="edged-bench-") as tmp, \
            AgentProcess(Path(tmp)) as agent:
        channel = grpc.insecure_channel(agent.target)
        stub = agent_pb2_grpc.AgentStub(channel)
        stub.LoadModel(agent_pb2.LoadModelRequest(url=str(agent.model_dir), name=MODEL),
                       timeout=30)
        for x in inputs.values():  # the two paths agree before anything is timed
            np.testing.assert_allclose(stub_call(stub, x)().reshape(x.shape),
                                       local.run(None, {name: x})[0], atol=1e-6)

        print(f"\nlatency, one call at a time ({args.seconds:g} s each)")
        print(f"{'':32}{'batch':>6}{'p50 ms':>9}{'p99 ms':>9}{'windows/s':>11}")
        rows = []
        for b, x in inputs.items():
            for label, times in (("in-process onnxruntime", timed(local_call(x), args.seconds)),
                                 ("agent Predict, grpcio stub",
                                  timed(stub_call(stub, x), args.seconds))):
                rows.append((label, b, times))
                print(f"{label:32}{b:>6}{ms(times, 50):>9.3f}{ms(times, 99):>9.3f}"
                      f"{b / np.median(times):>11.0f}")
            local_t, agent_t = rows[-2][2], rows[-1][2]
            print(f"{'  ratio agent / in-process':32}{b:>6}"
                  f"{np.median(agent_t) / np.median(local_t):>8.1f}x"
                  f"{np.percentile(agent_t, 99) / np.percentile(local_t, 99):>8.1f}x"
                  f"{'':>11}")
            print(f"{'  socket cost (p50 difference)':32}{b:>6}"
                  f"{ms(agent_t, 50) - ms(local_t, 50):>9.3f}")
        times = asyncio.run(backend_times(agent, inputs[64], args.seconds))
        print(f"{'edge_agent backend predict':32}{64:>6}{ms(times, 50):>9.3f}"
              f"{ms(times, 99):>9.3f}{64 / np.median(times):>11.0f}")

        print(f"\nthroughput, {args.clients} client threads ({args.seconds:g} s each; agent: "
              f"a channel per thread; in-process: one shared session)")
        print(f"{'batch':>6}{'agent calls/s':>15}{'in-process calls/s':>20}"
              f"{'agent / in-process':>20}")
        for b, x in inputs.items():
            def agent_client(x=x) -> Callable[[], object]:
                client = grpc.insecure_channel(agent.target)
                return stub_call(agent_pb2_grpc.AgentStub(client), x)

            remote = throughput(agent_client, args.clients, args.seconds)
            inproc = throughput(lambda x=x: local_call(x), args.clients, args.seconds)
            print(f"{b:>6}{remote:>15.0f}{inproc:>20.0f}{remote / inproc:>19.2f}x")
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
