"""The ONNX backend: the built-in model, batching, and refusing broken model directories."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edged.base.errors import ModelError
from edged.builtin.onnx import OnnxBackend, OnnxConfig
from edged.model import golden
from edged.model.package import resolve_model_path

BUILTIN = "builtin:windturbine-v1"


def backend(model: str = BUILTIN, **config) -> OnnxBackend:
    return OnnxBackend(OnnxConfig(type="onnx", model=model, **config))


@pytest.fixture
def model_copy(tmp_path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(resolve_model_path(BUILTIN), target)
    return target


def _inputs(b: OnnxBackend, rows: int) -> np.ndarray:
    shape = [rows if dim is None else dim for dim in b.manifest["inputs"][0]["shape"]]
    return np.random.default_rng(3).standard_normal(shape)


async def test_builtin_model_loads_and_predicts():
    b = backend()
    assert b.model.name == "windturbine"
    assert b.model.version >= 1
    assert b.manifest["preprocessing"]["type"] == "windturbine"
    async with b:
        x = _inputs(b, 3)
        y = b.predict(x)
        assert y.shape == x.shape
        assert y.dtype == np.float32
        assert np.isfinite(y).all()
    with pytest.raises(ModelError, match="not loaded"):
        b.predict(x)


async def test_golden_pairs_reproduce():
    b = backend()
    async with b:
        # The one golden rule (edged.model.golden), as bundles and the hot swap apply it.
        assert golden.check(b.directory / b.manifest["golden"], b.predict) == 24


async def test_batches_larger_than_max_batch_equal_one_big_call():
    small, big = backend(max_batch=4), backend(max_batch=1024)
    async with small, big:
        x = _inputs(small, 11)  # 4 + 4 + 3
        split = small.predict(x)
        whole = big.predict(x)
        assert split.shape == whole.shape == x.shape
        np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-6)
        # And each row is what that row alone gives: no cross-talk between turbines.
        np.testing.assert_allclose(split[5:6], big.predict(x[5:6]), rtol=1e-5, atol=1e-6)


async def test_model_directory_loads(model_copy):
    b = backend(str(model_copy))
    async with b:
        assert b.predict(_inputs(b, 2)).shape[0] == 2


def test_tampered_file_fails_naming_sha256(model_copy):
    with (model_copy / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="SHA-256") as info:
        backend(str(model_copy))
    assert "model.onnx" in str(info.value)
    # verify: false skips the hashes (a developer's own model directory).
    assert backend(str(model_copy), verify=False).model.name == "windturbine"


def test_directory_without_manifest_fails(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match=r"no manifest\.json"):
        backend(str(tmp_path))


def test_manifest_naming_a_missing_model_file_fails(model_copy):
    (model_copy / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"model file 'model\.onnx' is missing"):
        backend(str(model_copy))


def test_manifest_with_path_traversal_fails(model_copy, tmp_path):
    shutil.copy(model_copy / "model.onnx", tmp_path / "x.onnx")  # the target exists
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["model"] = "../x.onnx"
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="plain file name") as info:
        backend(str(model_copy))
    assert "'model'" in str(info.value)


def test_manifest_that_is_not_json_fails(model_copy):
    (model_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read"):
        backend(str(model_copy))


def test_unknown_builtin_lists_the_builtin_models():
    with pytest.raises(ModelError, match="no built-in model 'nope'") as info:
        backend("builtin:nope")
    assert "windturbine-v1" in str(info.value)
    with pytest.raises(ModelError, match="built in: .*windturbine-v1"):
        backend("builtin:../models")


def test_onnx_runtime_telemetry_is_opted_out_by_default():
    """ONNX Runtime >= 1.29 phones home from Linux unless told not to; edged tells it,
    and leaves an operator's explicit choice alone."""
    import subprocess
    import sys

    probe = ("import os, edged.builtin.onnx; "
             "print(os.environ['ORT_DISABLE_TELEMETRY'], os.environ['ORT_TELEMETRY_DISABLED'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORT_")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["1", "1"]
    env["ORT_DISABLE_TELEMETRY"] = "0"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] == "0"
