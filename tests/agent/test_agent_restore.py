"""Issue 15, item 4: with ``restore_models`` on, the loaded set survives a restart of the
agent (in-process here; tests/agent/test_old_clients.py restarts a real process). The
file is untrusted on read: a corrupt one is set aside, a model that cannot be loaded
again is logged, counted and forgotten, and neither stops the agent."""

from __future__ import annotations

import json
import shutil

import grpc
import numpy as np
import pytest
from agent_testkit import (
    MemoryCapture,
    agent_in_thread,
    code_of,
    inline,
    load_windturbine,
    make_config,
    output_array,
    reference_predict,
    windows,
)

from edged.agent.proto import agent_pb2 as pb
from edged.agent.restore import LoadedModelsFile, SavedModel, decode, encode


@pytest.fixture
def restart(tmp_path, model_root, short_dir):
    """``restart(**changes)``: a context manager running an agent on the same config
    (restore on, the same capture directory) each time it is entered."""

    def run(**changes):
        changes.setdefault("restore_models", True)
        config = make_config(tmp_path, model_root, **changes)
        return agent_in_thread(config, short_dir / "agent.sock", MemoryCapture())

    return run


def models_of(stub) -> dict[str, str]:
    return {m.name: m.url for m in stub.ListModels(pb.ListModelsRequest(), timeout=30).models}


def predicts(stub, name: str) -> None:
    x = windows(3, seed=4)
    reply = stub.Predict(pb.PredictRequest(name=name, tensors=[inline(x)]), timeout=30)
    np.testing.assert_array_equal(output_array(reply.tensors[0]), reference_predict(x))


def test_loaded_models_are_loaded_again_after_a_restart(restart, tmp_path, model_root):
    saved = tmp_path / "capture" / ".loaded-models.json"
    with restart() as agent:
        stub = agent.stub()
        load_windturbine(stub, "turbine")
        stub.LoadModel(pb.LoadModelRequest(url=str(model_root / "windturbine-v1"),
                                           name="second"), timeout=30)
        stub.LoadModel(pb.LoadModelRequest(url="windturbine-v1", name="gone"), timeout=30)
        stub.UnLoadModel(pb.UnLoadModelRequest(name="gone"), timeout=30)
        assert [m.name for m in decode(saved.read_bytes())] == ["second", "turbine"]
    with restart() as agent:
        stub = agent.stub()
        # The url as its client sent it, and the model runs.
        assert models_of(stub) == {"turbine": "windturbine-v1",
                                   "second": str(model_root / "windturbine-v1")}
        predicts(stub, "turbine")
        assert agent.server.counters.get("agent_models_restored") == 2
        # Loaded already: a client that loads at start is told so, as by a running agent.
        code, _ = code_of(stub.LoadModel, pb.LoadModelRequest(url="windturbine-v1",
                                                              name="turbine"))
        assert code == grpc.StatusCode.ALREADY_EXISTS


def test_a_model_that_cannot_be_restored_is_counted_and_forgotten(restart, tmp_path,
                                                                    model_root):
    outside = tmp_path / "outside"
    shutil.copytree(model_root / "windturbine-v1", outside)
    shutil.copytree(model_root / "windturbine-v1", model_root / "doomed")
    saved = tmp_path / "capture" / ".loaded-models.json"
    saved.parent.mkdir()
    saved.write_bytes(encode([
        SavedModel("ok", "windturbine-v1", str(model_root / "windturbine-v1")),
        SavedModel("doomed", "doomed", str(model_root / "doomed")),
        # The file never widens what may be loaded: the roots still hold.
        SavedModel("sneaky", "x", str(outside)),
    ]))
    shutil.rmtree(model_root / "doomed")
    with restart() as agent:
        stub = agent.stub()
        assert models_of(stub) == {"ok": "windturbine-v1"}
        predicts(stub, "ok")
        counters = agent.server.counters
        assert counters.get("agent_models_restore_failed", reason="no_model_at_url") == 1
        assert counters.get("agent_models_restore_failed",
                            reason="outside_model_roots") == 1
    # The file holds what is loaded.
    assert [m.name for m in decode(saved.read_bytes())] == ["ok"]


@pytest.mark.parametrize("content", [
    b"{\"version\": 1, \"models\": [", b"\xff\xfe", b"[]",
    json.dumps({"version": 1, "models": [{"name": "a b", "url": "u",
                                          "directory": "/d"}]}).encode(),
    b'{"version": 1, "version": 1, "models": []}',
    b"[" * 10_000,
])
def test_a_corrupt_file_is_set_aside_and_the_agent_starts(restart, tmp_path, content):
    saved = tmp_path / "capture" / ".loaded-models.json"
    saved.parent.mkdir()
    saved.write_bytes(content)
    with restart() as agent:
        stub = agent.stub()
        assert models_of(stub) == {}
        assert agent.server.counters.get("agent_loaded_models_file_rejected",
                                         reason="corrupt") == 1
        assert saved.with_name(".loaded-models.json.corrupt").read_bytes() == content
        load_windturbine(stub)  # and it is written anew
    assert [m.name for m in decode(saved.read_bytes())] == ["windturbine"]


def test_an_oversized_file_is_refused_unread(tmp_path):
    saved = tmp_path / ".loaded-models.json"
    with saved.open("wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: nothing is read past the bound
    assert LoadedModelsFile(saved).read() == []
    assert saved.with_name(".loaded-models.json.corrupt").stat().st_size == 64 * 1024 * 1024


def test_off_by_default_and_a_stale_file_is_removed(restart, tmp_path):
    saved = tmp_path / "capture" / ".loaded-models.json"
    with restart() as agent:
        load_windturbine(agent.stub())
    assert saved.exists()
    with restart(restore_models=False) as agent:
        stub = agent.stub()
        assert models_of(stub) == {}  # as the old agent: a restart starts empty
        load_windturbine(stub)
    assert not saved.exists()  # not remembered, and the old file gone
    with restart() as agent:
        assert models_of(agent.stub()) == {}
