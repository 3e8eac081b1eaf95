"""Issue 13, item 5: what large Predict calls do to ``edged agent``'s memory.

    .venv/bin/python benchmarks/abuse/agent_memory.py [--tree PATH] [--batch 6000]

Starts the real agent of the tree at ``--tree`` (default: this checkout) as a process on a
Unix socket, with the shipped wind-turbine model and its default settings, and calls it
from plain grpcio stubs:

1. one Predict of ``--batch`` windows (6,000: 14.4 MB, under the 16 MiB message cap);
2. four such calls at once;
3. four calls at once of 1,024 windows (the largest batch the agent admits by default);
4. a normal call (64 windows) afterwards.

After each phase it reads the agent's VmRSS and the phase's peak (VmHWM, reset between
phases through /proc/PID/clear_refs) and prints every figure, with the status codes the
calls got, as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

HERE = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(HERE))

from edged.agent.proto import agent_pb2 as pb  # noqa: E402  (the wire is the same)
from edged.agent.proto import agent_pb2_grpc  # noqa: E402

MIB = 1 << 20


def memory(pid: int) -> dict[str, float]:
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = round(int(value.split()[0]) / 1024, 1)
    return figures


def reset_peak(pid: int) -> None:
    # "5" resets VmHWM to the current RSS (Linux >= 4.0), so each phase has its own peak.
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def windows(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 6, 10, 10)).astype(np.float32)


def call(stub, n: int) -> str:
    x = windows(n)
    request = pb.PredictRequest(name="m", tensors=[pb.Tensor(
        tensor_metadata=pb.TensorMetadata(name="input", data_type=pb.FLOAT32,
                                          shape=list(x.shape)),
        byte_data=x.tobytes())])
    try:
        stub.Predict(request, timeout=300)
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


def together(target: str, n: int, count: int) -> list[str]:
    codes: list[str] = [""] * count
    channels = [grpc.insecure_channel(target, options=[
        ("grpc.max_receive_message_length", -1)]) for _ in range(count)]
    barrier = threading.Barrier(count)

    def one(index: int) -> None:
        stub = agent_pb2_grpc.AgentStub(channels[index])
        barrier.wait()
        codes[index] = call(stub, n)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for channel in channels:
        channel.close()
    return codes


def phase(pid: int, name: str, work) -> dict:
    reset_peak(pid)
    started = time.perf_counter()
    codes = work()
    time.sleep(0.5)  # let the last reply go out and memory be handed back
    return {"phase": name, "codes": codes, "seconds": round(time.perf_counter() - started, 2),
            "rss_mb": memory(pid)["VmRSS"], "peak_mb": memory(pid)["VmHWM"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=HERE)
    parser.add_argument("--batch", type=int, default=6000)
    args = parser.parse_args()
    tree = args.tree.resolve()
    work = Path(tempfile.mkdtemp(prefix="agent-mem-"))
    # The tree's own shipped model: edged/model/builtin since issue 14, edged/models before.
    shipped = next(p for p in (tree / "edged" / "model" / "builtin", tree / "edged" / "models")
                   if p.is_dir())
    shutil.copytree(shipped / "windturbine-v1", work / "models" / "windturbine-v1")
    config = work / "agent.yaml"
    config.write_text(json.dumps({"agent": {
        "device_name": "bench", "model_roots": [str(work / "models")],
        "capture": {"disk_path": str(work / "capture")}}}))
    sock = work / "agent.sock"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen([sys.executable, "-m", "edged", "agent", "-a", str(sock),
                             "-c", str(config)], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"unix://{sock}"
    try:
        channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", -1)])
        stub = agent_pb2_grpc.AgentStub(channel)
        stub.ListModels(pb.ListModelsRequest(), timeout=60, wait_for_ready=True)
        stub.LoadModel(pb.LoadModelRequest(url="windturbine-v1", name="m"), timeout=60)
        call(stub, 64)
        result = {"tree": str(tree), "batch": args.batch,
                  "request_mb": round(args.batch * 2400 / 1e6, 1),
                  "idle_rss_mb": memory(proc.pid)["VmRSS"], "phases": [
                      phase(proc.pid, f"1 x {args.batch}", lambda: [call(stub, args.batch)]),
                      phase(proc.pid, f"4 x {args.batch} at once",
                            lambda: together(target, args.batch, 4)),
                      phase(proc.pid, "4 x 1024 at once", lambda: together(target, 1024, 4)),
                      phase(proc.pid, "1 x 64 afterwards", lambda: [call(stub, 64)]),
                  ]}
        result["agent_alive"] = proc.poll() is None
        channel.close()
        print(json.dumps(result, indent=1))
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
