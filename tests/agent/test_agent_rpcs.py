"""Every rpc of a real agent on a real Unix socket, called through plain grpcio stubs;
every documented error, each followed by a call that shows the agent still serves."""

from __future__ import annotations

import os
import shutil
import stat

import grpc
import numpy as np
import pytest
from agent_testkit import (
    BUILTIN_MODEL,
    code_of,
    inline,
    load_windturbine,
    output_array,
    reference_predict,
    windows,
)

from edged.agent.proto import agent_pb2 as pb


def still_serving(stub) -> None:
    """After a refused call the agent answers the next one, Predict included."""
    names = [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=30).models]
    if "windturbine" in names:
        x = windows(2, seed=7)
        reply = stub.Predict(pb.PredictRequest(name="windturbine", tensors=[inline(x)]),
                             timeout=30)
        np.testing.assert_allclose(output_array(reply.tensors[0]), reference_predict(x),
                                   rtol=1e-6, atol=1e-6)


# -- the happy path ------------------------------------------------------------------------


def test_socket_is_group_only(agent):
    mode = agent.socket.lstat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_load_list_describe_predict_unload(stub, model_root):
    loaded = load_windturbine(stub).model
    assert loaded.name == "windturbine"
    assert loaded.url == "windturbine-v1"
    [inp] = loaded.input_tensor_metadatas
    [out] = loaded.output_tensor_metadatas
    assert (inp.name, inp.data_type, list(inp.shape)) == ("input", pb.FLOAT32, [-1, 6, 10, 10])
    assert (out.name, out.data_type, list(out.shape)) == ("output", pb.FLOAT32,
                                                          [-1, 6, 10, 10])

    listed = stub.ListModels(pb.ListModelsRequest(), timeout=30).models
    assert [m.name for m in listed] == ["windturbine"]
    assert listed[0] == loaded
    described = stub.DescribeModel(pb.DescribeModelRequest(name="windturbine"), timeout=30)
    assert described.model == loaded

    x = windows(5)
    reply = stub.Predict(pb.PredictRequest(name="windturbine",
                                           tensors=[inline(x, "input")]), timeout=30)
    [tensor] = reply.tensors
    assert tensor.WhichOneof("data") == "byte_data"  # outputs are always inline
    assert tensor.tensor_metadata.name == "output"
    assert list(tensor.tensor_metadata.shape) == [5, 6, 10, 10]
    np.testing.assert_array_equal(output_array(tensor), reference_predict(x))

    stub.UnLoadModel(pb.UnLoadModelRequest(name="windturbine"), timeout=30)
    assert list(stub.ListModels(pb.ListModelsRequest(), timeout=30).models) == []
    code, _ = code_of(stub.Predict, pb.PredictRequest(name="windturbine",
                                                      tensors=[inline(x)]))
    assert code == grpc.StatusCode.NOT_FOUND


def test_predict_without_metadata_uses_the_models(stub):
    load_windturbine(stub)
    x = windows(3, seed=1)
    reply = stub.Predict(pb.PredictRequest(name="windturbine", tensors=[inline(x)]),
                         timeout=30)
    np.testing.assert_array_equal(output_array(reply.tensors[0]), reference_predict(x))


def test_several_models_at_once(stub, model_root):
    # Same model twice under two names, and a bare directory with one *.onnx file.
    bare = model_root / "bare"
    bare.mkdir()
    shutil.copy(BUILTIN_MODEL / "model.onnx", bare / "autoencoder.onnx")
    load_windturbine(stub, "a")
    load_windturbine(stub, "b")
    loaded = stub.LoadModel(pb.LoadModelRequest(url=str(bare), name="bare-1"), timeout=30)
    assert list(loaded.model.input_tensor_metadatas[0].shape) == [-1, 6, 10, 10]
    assert [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=30).models] == [
        "a", "b", "bare-1"]
    x = windows(2, seed=3)
    for name in ("a", "b", "bare-1"):
        reply = stub.Predict(pb.PredictRequest(name=name, tensors=[inline(x)]), timeout=30)
        np.testing.assert_array_equal(output_array(reply.tensors[0]), reference_predict(x))


def test_absolute_url_under_a_root_and_file_scheme(stub, model_root):
    url = f"file://{model_root / 'windturbine-v1'}"
    assert stub.LoadModel(pb.LoadModelRequest(url=url, name="abs"), timeout=30).model.url == url


def test_float16_and_int_models(stub, model_root):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    for name, elem, dtype, data_type in [("half", TensorProto.FLOAT16, np.float16, pb.FLOAT16),
                                         ("ints", TensorProto.INT16, np.int16, pb.INT16),
                                         ("bytes", TensorProto.UINT8, np.uint8, pb.UINT8)]:
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "x"], ["y"])], name,
            [helper.make_tensor_value_info("x", elem, ["n", 3])],
            [helper.make_tensor_value_info("y", elem, ["n", 3])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        (model_root / name).mkdir()
        onnx.save(model, model_root / name / "model.onnx")
        meta = stub.LoadModel(pb.LoadModelRequest(url=name, name=name), timeout=30).model
        assert meta.input_tensor_metadatas[0].data_type == data_type
        assert list(meta.input_tensor_metadatas[0].shape) == [-1, 3]
        x = np.arange(6, dtype=dtype).reshape(2, 3)
        reply = stub.Predict(pb.PredictRequest(name=name, tensors=[
            inline(x, "x", data_type)]), timeout=30)
        out = reply.tensors[0]
        assert out.tensor_metadata.data_type == data_type
        np.testing.assert_array_equal(np.frombuffer(out.byte_data, dtype=dtype).reshape(2, 3),
                                      x + x)


# -- model errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "-lead", "trail-", "under_score", "dot.ted", "sp ace",
                                  "slash/x", "ünï", "x" * 256])
def test_invalid_model_names(stub, name):
    load_windturbine(stub)
    for call, request in [(stub.LoadModel, pb.LoadModelRequest(url="windturbine-v1",
                                                               name=name)),
                          (stub.DescribeModel, pb.DescribeModelRequest(name=name)),
                          (stub.UnLoadModel, pb.UnLoadModelRequest(name=name)),
                          (stub.Predict, pb.PredictRequest(name=name))]:
        code, details = code_of(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (call, details)
        assert "model name" in details
    still_serving(stub)


def test_valid_names_with_hyphens(stub):
    for name in ("a", "A-b", "a--b-9", "9"):
        load_windturbine(stub, name)


def test_already_loaded(stub):
    load_windturbine(stub)
    code, details = code_of(stub.LoadModel, pb.LoadModelRequest(url="windturbine-v1",
                                                                 name="windturbine"))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "already loaded" in details
    still_serving(stub)


def test_unknown_model(stub):
    load_windturbine(stub)
    for call, request in [(stub.DescribeModel, pb.DescribeModelRequest(name="nope")),
                          (stub.UnLoadModel, pb.UnLoadModelRequest(name="nope")),
                          (stub.Predict, pb.PredictRequest(name="nope",
                                                           tensors=[inline(windows(1))]))]:
        code, details = code_of(call, request)
        assert code == grpc.StatusCode.NOT_FOUND, details
        assert "'nope'" in details
    still_serving(stub)


@pytest.mark.parametrize("url", ["../escape", "windturbine-v1/../windturbine-v1",
                                 "/etc", "/", "file:///etc/../tmp", "", "link-out"])
def test_path_traversal_and_urls_outside_the_roots(stub, model_root, tmp_path, url):
    outside = tmp_path / "outside"
    shutil.copytree(BUILTIN_MODEL, outside)
    (model_root / "link-out").symlink_to(outside)  # a symlink leaving the root
    load_windturbine(stub)
    code, details = code_of(stub.LoadModel, pb.LoadModelRequest(url=url, name="evil"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "evil" not in [m.name for m in stub.ListModels(pb.ListModelsRequest(),
                                                          timeout=30).models]
    still_serving(stub)


def test_directory_without_a_model(stub, model_root):
    load_windturbine(stub)
    (model_root / "empty").mkdir()
    (model_root / "empty" / "README").write_text("no model here")
    two = model_root / "two"
    two.mkdir()
    for name in ("a.onnx", "b.onnx"):
        shutil.copy(BUILTIN_MODEL / "model.onnx", two / name)
    for url, expected, expect in [
            ("empty", grpc.StatusCode.NOT_FOUND, "holds no model"),
            ("two", grpc.StatusCode.INVALID_ARGUMENT, "2 *.onnx files"),
            ("missing", grpc.StatusCode.NOT_FOUND, "no such directory")]:
        code, details = code_of(stub.LoadModel, pb.LoadModelRequest(url=url, name="x"))
        assert code == expected, details
        assert expect in details
    still_serving(stub)


def test_unloadable_models(stub, model_root):
    load_windturbine(stub)
    bad = model_root / "bad"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"this is not an onnx model")
    tampered = model_root / "tampered"
    shutil.copytree(BUILTIN_MODEL, tampered)
    with (tampered / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    for url, expect in [("bad", "ONNX Runtime cannot load"), ("tampered", "SHA-256")]:
        code, details = code_of(stub.LoadModel, pb.LoadModelRequest(url=url, name="x"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        assert expect in details
    still_serving(stub)


def test_unsupported_operator_is_failed_precondition(stub, model_root):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("FrobnicateTensor", ["x"], ["y"], domain="com.example")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    (model_root / "exotic").mkdir()
    onnx.save(model, model_root / "exotic" / "model.onnx")
    load_windturbine(stub)
    code, details = code_of(stub.LoadModel, pb.LoadModelRequest(url="exotic", name="x"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    still_serving(stub)


def test_max_loaded_models(start_agent):
    stub = start_agent(max_loaded_models=2).stub()
    load_windturbine(stub, "a")
    load_windturbine(stub, "b")
    code, details = code_of(stub.LoadModel, pb.LoadModelRequest(url="windturbine-v1",
                                                                 name="c"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    stub.UnLoadModel(pb.UnLoadModelRequest(name="a"), timeout=30)
    load_windturbine(stub, "c")


# -- tensor errors --------------------------------------------------------------------------


def test_wrong_tensor_size(stub):
    load_windturbine(stub)
    x = windows(2)
    cases = [
        pb.Tensor(tensor_metadata=pb.TensorMetadata(name="input", data_type=pb.FLOAT32,
                                                    shape=[2, 6, 10, 10]),
                  byte_data=x.tobytes()[:-4]),
        pb.Tensor(tensor_metadata=pb.TensorMetadata(name="input", data_type=pb.FLOAT32,
                                                    shape=[3, 6, 10, 10]),
                  byte_data=x.tobytes()),
        pb.Tensor(byte_data=x.tobytes()[:-4]),  # model metadata: not whole rows
        pb.Tensor(tensor_metadata=pb.TensorMetadata(name="input", data_type=pb.FLOAT32,
                                                    shape=[2, 6, 10]),
                  byte_data=x[:, :, :, 0].tobytes()),  # wrong rank
        pb.Tensor(tensor_metadata=pb.TensorMetadata(name="input", data_type=pb.FLOAT32,
                                                    shape=[2, 6, 10, -10]),
                  byte_data=x.tobytes()),  # negative dimension
        pb.Tensor(tensor_metadata=pb.TensorMetadata(name="input", data_type=pb.FLOAT32,
                                                    shape=[2, 6, 10, 10])),  # no data
    ]
    for tensor in cases:
        code, details = code_of(stub.Predict, pb.PredictRequest(name="windturbine",
                                                                tensors=[tensor]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    code, details = code_of(stub.Predict, pb.PredictRequest(name="windturbine",
                                                            tensors=[cases[0]]))
    assert "has 4796 bytes; shape [2, 6, 10, 10] of FLOAT32 needs 4800" in details
    still_serving(stub)


def test_unknown_and_mismatched_data_type(stub):
    load_windturbine(stub)
    x = windows(1)
    code, details = code_of(stub.Predict, pb.PredictRequest(name="windturbine", tensors=[
        inline(x, "input", data_type=42)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown data type 42" in details
    code, details = code_of(stub.Predict, pb.PredictRequest(name="windturbine", tensors=[
        inline(x.astype(np.float64), "input", data_type=pb.FLOAT64)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "takes FLOAT32" in details
    still_serving(stub)


def test_wrong_tensor_count_and_name(stub):
    load_windturbine(stub)
    x = windows(1)
    for tensors, expect in [([], "takes 1 input"), ([inline(x), inline(x)], "takes 1 input"),
                            ([inline(x, "nope")], "has no input 'nope'")]:
        code, details = code_of(stub.Predict, pb.PredictRequest(name="windturbine",
                                                                tensors=tensors))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert expect in details
    still_serving(stub)


def test_over_large_request_is_resource_exhausted(start_agent):
    agent = start_agent(max_request_bytes=64 * 1024)
    stub = agent.stub()
    load_windturbine(stub)
    big = windows(200)  # 480 kB
    code, _ = code_of(stub.Predict, pb.PredictRequest(name="windturbine",
                                                      tensors=[inline(big)]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serving(stub)
    # The same over shared memory passes the limit.
    from multiprocessing import shared_memory

    segment = shared_memory.SharedMemory(name=f"edged-{os.getpid()}77", create=True,
                                         size=big.nbytes)
    try:
        segment.buf[:big.nbytes] = big.tobytes()
        reply = stub.Predict(pb.PredictRequest(name="windturbine", tensors=[pb.Tensor(
            shared_memory_handle=pb.SharedMemoryHandle(size=big.nbytes, offset=0,
                                                       segment_id=int(f"{os.getpid()}77")))]),
            timeout=30)
        np.testing.assert_array_equal(output_array(reply.tensors[0]), reference_predict(big))
    finally:
        segment.close()
        segment.unlink()
