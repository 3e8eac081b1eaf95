"""ONNX export of the autoencoder and the check of ONNX Runtime against PyTorch: one
exporter for the trained and the converted reference model, so both load on the same
device runtimes (opset, IR version) with the builtin model's tensor names, and both have
their transposed convolutions rewritten as convolutions (edged_cloud.graph_rewrite)."""

from __future__ import annotations

import io
import logging
import warnings
import zipfile
from typing import TYPE_CHECKING

import numpy as np
import onnx

from edged_cloud.graph_rewrite import rewrite

if TYPE_CHECKING:
    import torch

WINDOW_SHAPE = (6, 10, 10)
INPUT_NAME = "input"
OUTPUT_NAME = "output"
# Opset 18 is what torch's dynamo exporter emits natively, so no version converter runs
# over the graph; every ONNX Runtime since 1.14 implements it.
OPSET = 18
# torch stamps IR 10, which ONNX Runtime 1.17 and older refuse to load (checked with
# 1.17.3); the graph uses nothing newer than IR 8, the IR version of opset 18, so pinning
# it lets older device runtimes load the model too.
IR_VERSION = 8
# ONNX Runtime and PyTorch sum convolutions in different orders, so their float32 results
# differ by a few ulps of the window's largest output. A fixed absolute bound would fail
# for large (anomalous) windows without any real disagreement, so the bound is 1e-4 at
# unit scale and grows with the window's magnitude beyond that.
TOLERANCE = 1e-4


def export_onnx(model: torch.nn.Module) -> onnx.ModelProto:
    """``model`` (in eval mode) as a portable ONNX graph with a dynamic batch, its
    stride-1 transposed convolutions rewritten as convolutions: the same maths, which ONNX
    Runtime runs about 1.4 times as fast in the reference autoencoder. Callers check the
    result against PyTorch (TOLERANCE), so the rewrite is checked with the export."""
    import torch

    # Without torchvision installed the exporter warns about its ops on every run; they
    # are irrelevant here and would bury the output.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    example = torch.zeros((2, *WINDOW_SHAPE), dtype=torch.float32)
    with warnings.catch_warnings():
        # torch 2.13's exporter trips over its own pytree deprecation (FutureWarning).
        warnings.simplefilter("ignore", FutureWarning)
        program = _export(torch, model, example)
    proto = program.model_proto
    make_portable(proto)
    return rewrite(proto).model


def _export(torch, model, example):
    return torch.onnx.export(
        model,
        (example,),
        None,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=OPSET,
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,
        verbose=False,
    )


def make_portable(proto: onnx.ModelProto) -> None:
    """Strip exporter debug metadata and pin the IR version, in place."""
    # Node metadata carries stack traces with local paths: noise that changes the bytes
    # from one machine to the next, and a field older IR versions do not have.
    for node in proto.graph.node:
        del node.metadata_props[:]
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        del value.metadata_props[:]
    for tensor in proto.graph.initializer:
        del tensor.metadata_props[:]
        if tensor.data_location != onnx.TensorProto.DEFAULT:
            raise RuntimeError(f"initializer {tensor.name} is stored outside the model")
    del proto.metadata_props[:]
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)


def torch_outputs(model: torch.nn.Module, windows: np.ndarray, batch: int = 1024
                  ) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.concatenate([
            model(torch.from_numpy(np.ascontiguousarray(windows[i:i + batch]))).numpy()
            for i in range(0, len(windows), batch)]) if len(windows) else \
            np.empty((0, *windows.shape[1:]), dtype=np.float32)


def window_errors(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per window: (max abs difference, largest |expected output|)."""
    axes = tuple(range(1, expected.ndim))
    abs_diff = np.abs(actual.astype(np.float64) - expected).max(axis=axes)
    magnitude = np.abs(expected.astype(np.float64)).max(axis=axes)
    return np.stack([abs_diff, magnitude], axis=1)


def scaled_error(rows: np.ndarray) -> float:
    """The worst abs diff / max(1, window's largest |output|): compared with TOLERANCE."""
    return float((rows[:, 0] / np.maximum(rows[:, 1], 1.0)).max()) if len(rows) else 0.0


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz with fixed timestamps: np.savez stamps the current time into
    the zip entries; a fixed one keeps the file, and so a manifest's hash, identical."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
