"""Stride-1 ConvTranspose rewritten as Conv (edged_cloud.graph_rewrite): ONNX Runtime gives
the rewritten graph's outputs equal to the original's within float32 rounding, on graphs
built at random (channels, kernel, pads on each side, dilation, spatial rank, a producing
Conv with or without an activation, a consumer that stops the crop from folding); what it
cannot rewrite it leaves as it was."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edged.model.package import builtin_root
from edged_cloud.graph_rewrite import AS_CONV, CROP_AS_SLICE, CROP_INTO_CONV, rewrite

IR_VERSION = 8
OPSET = 18


def _tensor(rng: np.random.Generator, name: str, shape: tuple[int, ...],
            scale: float = 1.0) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def build(*, cin: int = 4, cout: int = 3, kernel: tuple[int, ...] = (2, 2),
          pads: tuple[int, ...] = (0, 0, 0, 0), dilations: tuple[int, ...] | None = None,
          producer_pads: tuple[int, ...] | None = None, producer_stride: int = 1,
          activation: str | None = None, also_output: str | None = None,
          size: int = 8, opset: int = OPSET, seed: int = 0,
          **transpose_attrs) -> onnx.ModelProto:
    """input (batch, 3, size...) → [Conv(3→cin, k 2, producer_pads) → [activation]] →
    ConvTranspose(cin→cout) with bias → output; ``also_output`` makes that tensor
    ("conv" or "act") a second graph output."""
    rng = np.random.default_rng(seed)
    rank = len(kernel)
    nodes, inits = [], []
    x = "input"
    channels = cin
    if producer_pads is not None:
        channels = 3
        inits += [_tensor(rng, "w0", (cin, 3, *[2] * rank), 0.5), _tensor(rng, "b0", (cin,))]
        nodes.append(helper.make_node("Conv", ["input", "w0", "b0"], ["conv"], name="conv0",
                                      kernel_shape=[2] * rank, pads=list(producer_pads),
                                      strides=[producer_stride] * rank))
        x = "conv"
        if activation:
            nodes.append(helper.make_node(activation, ["conv"], ["act"], name="act"))
            x = "act"
    group = transpose_attrs.get("group", 1)
    weight = _tensor(rng, "w1", (cin, cout // group, *kernel), 1 / np.sqrt(cin * np.prod(kernel)))
    inits += [weight, _tensor(rng, "b1", (cout,))]
    attrs = {"kernel_shape": list(kernel), **transpose_attrs}
    if pads:
        attrs["pads"] = list(pads)
    if dilations is not None:
        attrs["dilations"] = list(dilations)
    nodes.append(helper.make_node("ConvTranspose", [x, "w1", "b1"], ["output"], name="up",
                                  **attrs))
    spatial = [size] * rank
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)]
    if also_output:
        outputs.append(helper.make_tensor_value_info(also_output, TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                   ["batch", channels, *spatial])],
        outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = IR_VERSION
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})


def assert_same_outputs(original: onnx.ModelProto, rewritten: onnx.ModelProto,
                        size: int, rank: int, channels: int) -> None:
    x = (np.random.default_rng(7).standard_normal((3, channels, *[size] * rank)) * 3
         ).astype(np.float32)
    expected, actual = run(original, x), run(rewritten, x)
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual, strict=True):
        assert a.shape == e.shape
        # float32 sums in another order: a few ulps of the largest output.
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(e).max()))


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def assert_no_stale_shapes(model: onnx.ModelProto) -> None:
    """Every shape the model states is the one inference finds afresh."""
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    fresh = onnx.shape_inference.infer_shapes(bare, strict_mode=True)
    found = {v.name: v.type for v in fresh.graph.value_info}
    for info in model.graph.value_info:
        if info.name in found:
            assert info.type == found[info.name], info.name


@given(cin=st.sampled_from([1, 3, 8]), cout=st.sampled_from([1, 2, 5]),
       k=st.sampled_from([2, 3]), rank=st.sampled_from([1, 2, 2, 3]),
       pad_draws=st.lists(st.integers(0, 3), min_size=6, max_size=6),
       dilation=st.sampled_from([1, 1, 2]),
       producer=st.sampled_from([None, "Conv", "Relu", "LeakyRelu"]),
       producer_pad=st.integers(0, 3), producer_stride=st.sampled_from([1, 1, 2]),
       blocker=st.sampled_from([None, None, "conv", "act"]),
       opset=st.sampled_from([9, 13, OPSET]), seed=st.integers(0, 3))
def test_rewritten_graph_computes_what_the_original_does(
        cin, cout, k, rank, pad_draws, dilation, producer, producer_pad, producer_stride,
        blocker, opset, seed):
    pads = tuple(min(p, k) for p in pad_draws[:2 * rank])  # 0..k on each side
    size = 7 if rank < 3 else 5
    activation = producer if producer in ("Relu", "LeakyRelu") else None
    if producer is None:
        producer_pads, blocker = None, None
        inner = size
    else:
        producer_pads = (producer_pad,) * (2 * rank)
        inner = (size + 2 * producer_pad - 2) // producer_stride + 1
        if blocker == "act" and not activation:
            blocker = "conv"
    out_sizes = [inner + dilation * (k - 1) - pads[i] - pads[i + rank] for i in range(rank)]
    assume(min(out_sizes) >= 1)
    original = build(cin=cin, cout=cout, kernel=(k,) * rank, pads=pads,
                     dilations=(dilation,) * rank, producer_pads=producer_pads,
                     producer_stride=producer_stride, activation=activation,
                     also_output=blocker, size=size, opset=opset, seed=seed)
    before = original.SerializeToString()

    done = rewrite(original)

    assert original.SerializeToString() == before  # the input is not changed
    model = done.model
    crop = [max(0, p - dilation * (k - 1)) for p in pads]
    foldable = producer is not None and blocker is None and all(
        producer_pad - c * producer_stride >= 0 for c in crop)
    expected = {AS_CONV: 1, CROP_INTO_CONV: int(any(crop) and foldable),
                CROP_AS_SLICE: int(any(crop) and not foldable)}
    event(f"crop {'folded' if expected[CROP_INTO_CONV] else 'sliced'}" if any(crop)
          else "no crop")
    assert (done.rewritten, done.kept) == (expected, {})
    assert "ConvTranspose" not in ops(model)
    assert ops(model).count("Slice") == expected[CROP_AS_SLICE]
    assert model.ir_version == IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset)]
    assert "w1" not in {t.name for t in model.graph.initializer}
    assert_no_stale_shapes(model)
    assert_same_outputs(original, model, size, rank, 3 if producer else cin)


def test_a_crop_folds_into_the_producing_conv_through_relu():
    # The reference model's 128→64 layer in small: Conv(pads 2) → Relu → ConvTranspose(k 2,
    # pads 2) is Conv(pads 1) → Relu → Conv(pads 0).
    original = build(kernel=(2, 2), pads=(2, 2, 2, 2), producer_pads=(2, 2, 2, 2),
                     activation="Relu")
    done = rewrite(original)
    assert ops(done.model) == ["Conv", "Relu", "Conv"]
    producer = done.model.graph.node[0]
    assert helper.get_attribute_value(next(a for a in producer.attribute
                                           if a.name == "pads")) == [1, 1, 1, 1]
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in done.model.graph.value_info}
    assert shapes["act"] == ["batch", 4, 9, 9]  # was 11 by 11 before the crop moved in
    assert_same_outputs(original, done.model, 8, 2, 3)


def test_a_crop_the_producer_cannot_take_becomes_a_slice():
    # Pads 0 on the producer: nothing to shrink.
    original = build(kernel=(2, 2), pads=(2, 1, 2, 1), producer_pads=(0, 0, 0, 0),
                     activation="Relu")
    done = rewrite(original)
    assert ops(done.model) == ["Conv", "Relu", "Slice", "Conv"]
    assert done.rewritten == {AS_CONV: 1, CROP_INTO_CONV: 0, CROP_AS_SLICE: 1}
    assert_same_outputs(original, done.model, 8, 2, 3)


@pytest.mark.parametrize(("attrs", "reason"), [
    ({"strides": [2, 2]}, "stride"),
    ({"group": 2}, "group"),
    ({"strides": [2, 2], "output_padding": [1, 1]}, "stride"),
    ({"output_padding": [1, 0]}, "output_padding"),
    ({"output_shape": [9, 9]}, "output_shape"),
    ({"auto_pad": "SAME_UPPER"}, "auto_pad"),
])
def test_what_it_cannot_rewrite_is_left_as_it_was(attrs, reason):
    pads = () if "auto_pad" in attrs or "output_shape" in attrs else (0, 0, 0, 0)
    original = build(cin=4, cout=4, pads=pads, **attrs)
    done = rewrite(original)
    assert done.rewritten == {AS_CONV: 0, CROP_INTO_CONV: 0, CROP_AS_SLICE: 0}
    assert done.kept == {reason: 1}
    assert done.model.SerializeToString() == original.SerializeToString()


def test_a_weight_the_caller_may_override_is_left_alone():
    original = build()
    original.graph.input.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT,
                                                              [4, 3, 2, 2]))
    done = rewrite(original)
    assert done.kept == {"weight_not_initializer": 1}
    assert "ConvTranspose" in ops(done.model)


def test_one_rewritten_one_kept_and_a_shared_weight_kept_while_read():
    # Two ConvTransposes read one weight: the stride-2 one stays, so the weight stays too.
    original = build(cin=4, cout=4, pads=(1, 1, 1, 1))
    graph = original.graph
    graph.node.append(helper.make_node("ConvTranspose", ["input", "w1", "b1"], ["up2"],
                                       name="up2", kernel_shape=[2, 2], strides=[2, 2]))
    graph.output.append(helper.make_tensor_value_info("up2", TensorProto.FLOAT, None))
    done = rewrite(original)
    assert done.rewritten[AS_CONV] == 1 and done.kept == {"stride": 1}
    assert ops(done.model) == ["Conv", "ConvTranspose"]
    assert {"w1", "w1_as_conv"} <= {t.name for t in done.model.graph.initializer}
    assert_same_outputs(original, done.model, 8, 2, 4)


def test_a_shared_weight_is_flipped_once():
    original = build(cin=4, cout=4, pads=(1, 1, 1, 1))
    graph = original.graph
    graph.node.append(helper.make_node("ConvTranspose", ["input", "w1", "b1"], ["up2"],
                                       name="up2", kernel_shape=[2, 2], pads=[0, 1, 0, 1]))
    graph.output.append(helper.make_tensor_value_info("up2", TensorProto.FLOAT, None))
    done = rewrite(original)
    assert done.rewritten[AS_CONV] == 2 and ops(done.model) == ["Conv", "Conv"]
    assert {t.name for t in done.model.graph.initializer} == {"w1_as_conv", "b1"}
    assert_same_outputs(original, done.model, 8, 2, 4)


def test_the_builtin_model_has_no_transposed_convolution_left():
    model = onnx.load(builtin_root() / "windturbine-v1" / "model.onnx")
    assert set(ops(model)) == {"Conv", "Relu"}
    done = rewrite(model)
    assert done.rewritten[AS_CONV] == 0 and done.kept == {}
