"""Concurrent Predict calls run in parallel (the old agent served one at a time)."""

from __future__ import annotations

import threading
import time

import numpy as np
from agent_testkit import inline, load_windturbine, output_array, reference_predict, windows

from edged.agent.proto import agent_pb2 as pb

CLIENTS = 8
CALLS = 4


def test_eight_concurrent_clients_overlap_inside_the_agent(start_agent):
    # Room for all eight calls (about 82 MiB each): this test is about parallelism.
    agent = start_agent(max_inflight_bytes=1 << 30)
    setup = agent.stub()
    load_windturbine(setup)
    x = windows(256, seed=11)  # a few ms of ONNX Runtime per call
    expected = reference_predict(x)
    request = pb.PredictRequest(name="windturbine", tensors=[inline(x)])
    stubs = [agent.stub() for _ in range(CLIENTS)]  # one channel per client
    for stub in stubs:  # connect and warm up first
        stub.Predict(request, timeout=60)
    servicer = agent.server.servicer
    servicer.max_in_flight = 0

    barrier = threading.Barrier(CLIENTS)
    errors: list[BaseException] = []

    def client(stub) -> None:
        try:
            barrier.wait(30)
            for _ in range(CALLS):
                reply = stub.Predict(request, timeout=60)
                np.testing.assert_array_equal(output_array(reply.tensors[0]), expected)
        except BaseException as exc:
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(stub,)) for stub in stubs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    elapsed = time.perf_counter() - started
    assert not errors, errors
    print(f"{CLIENTS} clients x {CALLS} calls: {elapsed:.3f} s, at most "
          f"{servicer.max_in_flight} inside ONNX Runtime at once")
    # The old agent: exactly 1. Here several calls are inside ONNX Runtime together.
    assert servicer.max_in_flight > 1
    assert servicer.in_flight == 0
