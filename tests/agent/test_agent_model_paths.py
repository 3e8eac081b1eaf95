"""Issue 13, item 7 (agent part): a model directory inside a model root whose
``model.onnx`` linked to a file outside the roots was loaded. Every path LoadModel opens
must lie under a root once links are followed; a refusal names the path and is counted."""

from __future__ import annotations

import shutil

import grpc
import pytest
from agent_testkit import BUILTIN_MODEL, code_of, load_windturbine

from edged.agent.proto import agent_pb2 as pb


def refused_outside(agent) -> int:
    return agent.server.counters.get("agent_requests_refused", rpc="LoadModel",
                                     code="INVALID_ARGUMENT", reason="outside_model_roots")


def listed(stub) -> list[str]:
    return [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=30).models]


@pytest.mark.parametrize("layout", ["bare onnx", "package", "manifest linked"])
def test_a_file_linked_out_of_the_roots_is_refused(agent, model_root, tmp_path, layout):
    outside = tmp_path / "outside"
    shutil.copytree(BUILTIN_MODEL, outside)  # same bytes: the manifest's hashes match
    sneaky = model_root / "sneaky"
    sneaky.mkdir()
    if layout == "bare onnx":
        (sneaky / "model.onnx").symlink_to(outside / "model.onnx")
        escaping = outside / "model.onnx"
    else:
        for name in ("manifest.json", "model.onnx", "golden.npz"):
            shutil.copy(BUILTIN_MODEL / name, sneaky / name)
        escaping = outside / ("model.onnx" if layout == "package" else "manifest.json")
        (sneaky / escaping.name).unlink()
        (sneaky / escaping.name).symlink_to(escaping)
    stub = agent.stub()
    code, details = code_of(stub.LoadModel, pb.LoadModelRequest(url="sneaky", name="evil"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert str(sneaky / escaping.name) in details and str(escaping) in details
    assert "not under a model root" in details
    assert refused_outside(agent) == 1
    assert "evil" not in listed(stub)
    load_windturbine(stub)  # still serving


def test_links_that_stay_inside_the_roots_are_followed(agent, model_root):
    linked = model_root / "linked"
    linked.mkdir()
    (linked / "model.onnx").symlink_to(model_root / "windturbine-v1" / "model.onnx")
    (model_root / "alias").symlink_to(model_root / "windturbine-v1")
    stub = agent.stub()
    stub.LoadModel(pb.LoadModelRequest(url="linked", name="a"), timeout=30)
    stub.LoadModel(pb.LoadModelRequest(url="alias", name="b"), timeout=30)
    assert listed(stub) == ["a", "b"]


def test_directories_and_urls_that_leave_the_roots_name_where_they_lead(agent, model_root,
                                                                         tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(BUILTIN_MODEL, outside)
    (model_root / "link-out").symlink_to(outside)
    stub = agent.stub()
    for url in ("link-out", str(outside), f"file://{outside}", str(model_root / "link-out")):
        code, details = code_of(stub.LoadModel, pb.LoadModelRequest(url=url, name="evil"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert f"leads to {outside}, which is not under a model root" in details
    assert refused_outside(agent) == 4
    code, details = code_of(stub.LoadModel, pb.LoadModelRequest(url="a/../../etc",
                                                                 name="evil"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'..' is not allowed" in details
    assert listed(stub) == []


def test_a_missing_model_directory_is_named_by_its_absolute_path(agent, model_root):
    stub = agent.stub()
    # No model at the url is NOT_FOUND, as the published agent.proto says of LoadModel.
    for url, code_expected, expect in [
        ("agent/model/0/turbine/1.0", grpc.StatusCode.NOT_FOUND,
         f"no such directory {model_root / 'agent/model/0/turbine/1.0'} (a relative url is "
         f"looked up under the first model root, {model_root})"),
        (str(model_root / "gone"), grpc.StatusCode.NOT_FOUND,
         f"no such directory {model_root / 'gone'}"),
        # not an OSError: INTERNAL before
        ("x" * 5000, grpc.StatusCode.INVALID_ARGUMENT, "longer than a path may be (4096)"),
        ("y" * 300, grpc.StatusCode.INVALID_ARGUMENT, "File name too long"),
    ]:
        code, details = code_of(stub.LoadModel, pb.LoadModelRequest(url=url, name="m"))
        assert code == code_expected, details
        assert expect in details
    assert listed(stub) == []
