"""Stride-1 transposed convolutions rewritten as convolutions: the same weights and the same
maths in standard ONNX operators, in a graph ONNX Runtime runs faster.

Why: ONNX Runtime's ConvTranspose kernel is far slower than its Conv kernels (NCHWc). The
reference autoencoder's three ConvTranspose layers took 92 of its 153 µs a window, as Conv
nodes they take 52, and the whole runs 1.43 times as fast (docs/cloud.md, "optimize").

The maths: a ConvTranspose with stride 1 is a Conv whose weights have their input and
output channels swapped and their kernel flipped along every spatial axis, padded by
``d·(k−1) − p`` on each side (``k`` the kernel size, ``d`` the dilation, ``p`` the
transposed convolution's pad on that side). A negative pad means the Conv reads its input
cropped by that much. When that input is a Conv's output, through at most one elementwise
activation (which commutes with a crop), and neither is used anywhere else, the crop
folds into that Conv's pads (``Conv(pads 2) → Relu → crop 1`` is ``Conv(pads 1) → Relu``);
otherwise a ``Slice`` crops it.

Rewritten: ConvTranspose nodes (default domain) with stride 1, group 1, no output padding,
no ``output_shape``, ``auto_pad`` NOTSET, any dilation and spatial rank, whose weight is an
initializer that is not also a graph input. Anything else is left as it is, counted by the
reason (``Rewritten.kept``). Only the main graph is rewritten, not subgraphs (If, Loop).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Operators applied position by position, with one input: cropping their output is
#: cropping their input.
ELEMENTWISE = frozenset({"Relu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid",
                         "Tanh", "Softplus"})
DEFAULT_DOMAINS = ("", "ai.onnx")
#: Slice's "to the end" on a dimension whose size the graph does not fix.
_TO_THE_END = np.iinfo(np.int64).max
#: Slice took starts/ends/axes as attributes before opset 10, as inputs from then on.
_SLICE_INPUTS_OPSET = 10

#: What ``Rewritten.rewritten`` counts.
AS_CONV = "conv_transpose_as_conv"
CROP_INTO_CONV = "crop_into_conv_pads"
CROP_AS_SLICE = "crop_as_slice"


@dataclass(frozen=True)
class Rewritten:
    model: onnx.ModelProto
    #: What was done, by kind: AS_CONV, CROP_INTO_CONV, CROP_AS_SLICE (each present).
    rewritten: dict[str, int]
    #: The ConvTranspose nodes left as they were, by reason ("stride", "group", ...).
    kept: dict[str, int]

    def as_report(self) -> dict[str, dict[str, int]]:
        return {"rewritten": dict(self.rewritten), "kept": dict(self.kept)}


def rewrite(model: onnx.ModelProto) -> Rewritten:
    """``model`` with its stride-1 ConvTranspose nodes as Conv nodes; ``model`` itself is
    not changed. Opset and IR version stay; initializers left unused and shapes made stale
    go; shapes are inferred again and the result checked (``onnx.checker``, full check)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = _Graph(out)
    nodes: list[onnx.NodeProto] = []
    # Detached copies: a fold edits a producer's pads, the graph's nodes are replaced last.
    for node in [_copy(n) for n in out.graph.node]:
        for made in graph.replacing(node):
            nodes.append(made)
            graph.produced(made)
    if not graph.done[AS_CONV]:
        return Rewritten(out, dict(graph.done), dict(graph.kept))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    graph.drop_stale()
    inferred = onnx.shape_inference.infer_shapes(out, check_type=True, strict_mode=True,
                                                 data_prop=True)
    onnx.checker.check_model(inferred, full_check=True)
    return Rewritten(inferred, dict(graph.done), dict(graph.kept))


class _Graph:
    """One rewrite's view of a graph: who produces and who uses each tensor, the names
    taken, and what has been rewritten so far."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.opset = next((o.version for o in model.opset_import
                           if o.domain in DEFAULT_DOMAINS), 1)
        self.initializers = {t.name: t for t in graph.initializer}
        # An initializer that is also a graph input is a default the caller may override.
        self.overridable = {v.name for v in graph.input}
        self.uses = _uses(graph)
        self.producers: dict[str, onnx.NodeProto] = {}
        self.names = {*_tensor_names(graph), *(n.name for n in _all_nodes(graph) if n.name)}
        self.as_conv_weights: dict[str, str] = {}  # a ConvTranspose weight → its Conv copy
        self.reshaped: set[str] = set()  # tensors whose shape changed: their value_info is stale
        self.done: Counter[str] = Counter({AS_CONV: 0, CROP_INTO_CONV: 0, CROP_AS_SLICE: 0})
        self.kept: Counter[str] = Counter()

    def produced(self, node: onnx.NodeProto) -> None:
        for name in node.output:
            if name:
                self.producers[name] = node

    def fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self.names:
            n += 1
            name = f"{base}_{n}"
        self.names.add(name)
        return name

    def replacing(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """What computes ``node``: itself, or for a ConvTranspose that can be rewritten,
        a Conv (after a Slice, where one is needed)."""
        if node.op_type != "ConvTranspose" or node.domain not in DEFAULT_DOMAINS:
            return [node]
        reason = self.why_kept(node)
        if reason is not None:
            self.kept[reason] += 1
            return [node]
        return self.as_conv(node)

    def why_kept(self, node: onnx.NodeProto) -> str | None:
        """Why ``node`` (a ConvTranspose) cannot be rewritten, or None."""
        attrs = _attributes(node)
        weight = self.initializers.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None or weight.name in self.overridable:
            return "weight_not_initializer"
        rank = len(weight.dims) - 2
        if rank < 1:
            return "weight_rank"
        if not _explicit_pads(attrs):
            return "auto_pad"
        if any(s != 1 for s in attrs.get("strides", ())):
            return "stride"
        if attrs.get("group", 1) != 1:
            return "group"
        if any(attrs.get("output_padding", ())):
            return "output_padding"
        if "output_shape" in attrs:
            return "output_shape"
        if list(attrs.get("kernel_shape", weight.dims[2:])) != list(weight.dims[2:]):
            return "kernel_shape"
        if len(attrs.get("pads", [0] * 2 * rank)) != 2 * rank \
                or len(attrs.get("dilations", [1] * rank)) != rank \
                or len(attrs.get("strides", [1] * rank)) != rank:
            return "attribute_rank"
        return None

    def as_conv(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """The Conv (after a Slice, where one is needed) that computes ``node``."""
        attrs = _attributes(node)
        kernel = tuple(self.initializers[node.input[1]].dims[2:])
        rank = len(kernel)
        dilations = list(attrs.get("dilations", [1] * rank))
        pads = [dilations[i % rank] * (kernel[i % rank] - 1) - p
                for i, p in enumerate(attrs.get("pads", [0] * 2 * rank))]
        crop = [max(0, -p) for p in pads]
        pads = [max(0, p) for p in pads]
        weight_name = self.conv_weights(node.input[1])
        made: list[onnx.NodeProto] = []
        data = node.input[0]
        if any(crop):
            if self.fold_crop(data, crop):
                self.done[CROP_INTO_CONV] += 1
            else:
                made.append(self.slice(data, crop, node.name or "conv_transpose"))
                data = made[-1].output[0]
                self.done[CROP_AS_SLICE] += 1
        bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
        made.append(helper.make_node(
            "Conv", [data, weight_name, *bias], list(node.output),
            name=self.fresh(f"{node.name}_as_conv") if node.name else "",
            kernel_shape=list(kernel), pads=pads, strides=[1] * rank, dilations=dilations,
            group=1))
        self.done[AS_CONV] += 1
        return made

    def conv_weights(self, name: str) -> str:
        """The initializer that holds ConvTranspose weights ``name`` as Conv weights (one
        for every node that shares them)."""
        if name not in self.as_conv_weights:
            weights = numpy_helper.to_array(self.initializers[name])
            # Conv weights are (out, in, *kernel), ConvTranspose's (in, out, *kernel); the
            # flip turns the transposed convolution's scatter into a correlation.
            flipped = np.flip(weights.swapaxes(0, 1), axis=tuple(range(2, weights.ndim)))
            self.as_conv_weights[name] = self.fresh(f"{name}_as_conv")
            self.model.graph.initializer.append(numpy_helper.from_array(
                np.ascontiguousarray(flipped), self.as_conv_weights[name]))
        return self.as_conv_weights[name]

    def fold_crop(self, tensor: str, crop: list[int]) -> bool:
        """Crop ``tensor`` by shrinking the pads of the Conv that makes it (through one
        elementwise activation at most), if nothing else reads what changes size."""
        node = self.producers.get(tensor)
        changed = [tensor]
        if node is not None and self.uses[tensor] == 1 and node.op_type in ELEMENTWISE \
                and node.domain in DEFAULT_DOMAINS and len(node.input) == 1:
            tensor = node.input[0]
            node = self.producers.get(tensor)
            changed.append(tensor)
        if node is None or node.op_type != "Conv" or node.domain not in DEFAULT_DOMAINS \
                or any(self.uses[name] != 1 for name in changed):
            return False
        attrs = _attributes(node)
        rank = len(crop) // 2
        strides = list(attrs.get("strides", [1] * rank))
        pads = list(attrs.get("pads", [0] * 2 * rank))
        if not _explicit_pads(attrs) or len(strides) != rank or len(pads) != 2 * rank:
            return False
        # Each output dropped at an edge is `stride` input positions less of padding.
        shrunk = [p - c * strides[i % rank] for i, (p, c) in enumerate(zip(pads, crop,
                                                                            strict=True))]
        if min(shrunk) < 0:
            return False
        kept = [a for a in node.attribute if a.name != "pads"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("pads", shrunk)])
        self.reshaped.update(changed)
        return True

    def slice(self, tensor: str, crop: list[int], base: str) -> onnx.NodeProto:
        rank = len(crop) // 2
        axes = list(range(2, 2 + rank))
        starts = crop[:rank]
        ends = [-c if c else _TO_THE_END for c in crop[rank:]]
        out = self.fresh(f"{base}_cropped")
        name = self.fresh(f"{base}_crop")
        if self.opset < _SLICE_INPUTS_OPSET:
            return helper.make_node("Slice", [tensor], [out], name=name, starts=starts,
                                    ends=ends, axes=axes)
        inputs = []
        for what, values in (("starts", starts), ("ends", ends), ("axes", axes)):
            inputs.append(self.fresh(f"{base}_crop_{what}"))
            self.model.graph.initializer.append(
                numpy_helper.from_array(np.array(values, dtype=np.int64), inputs[-1]))
        return helper.make_node("Slice", [tensor, *inputs], [out], name=name)

    def drop_stale(self) -> None:
        """Drop the replaced weights nothing reads any more, and the shapes (value_info) of
        those and of the tensors that changed size; shape inference puts the latter back."""
        graph = self.model.graph
        used = _uses(graph)
        unused = {name for name in self.as_conv_weights if not used[name]}
        kept = [t for t in graph.initializer if t.name not in unused]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        stale = unused | self.reshaped
        infos = [v for v in graph.value_info if v.name not in stale]
        del graph.value_info[:]
        graph.value_info.extend(infos)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _explicit_pads(attrs: dict) -> bool:
    """Whether a convolution's padding is its ``pads`` (auto_pad NOTSET or absent)."""
    return attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs, at any depth."""
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _all_nodes(sub)


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def _uses(graph: onnx.GraphProto) -> Counter[str]:
    """How many times each tensor name is read: by a node (subgraphs too, which may read
    the outer graph's tensors) or as a graph output."""
    uses: Counter[str] = Counter(name for node in _all_nodes(graph) for name in node.input
                                 if name)
    uses.update(v.name for v in graph.output)
    return uses


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
    for node in _all_nodes(graph):
        names.update(node.input)
        names.update(node.output)
    return names
