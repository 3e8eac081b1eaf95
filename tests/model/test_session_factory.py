"""edged.model.session: the one ONNX Runtime session factory, and that it is the only one."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edged.model.package import read_manifest, resolve_model_path
from edged.model.session import PROVIDERS, arena_shrink_options, open_session

PACKAGE = Path(__file__).resolve().parents[2] / "edged"
MODEL = resolve_model_path("builtin:windturbine-v1")


def _model_file() -> Path:
    return MODEL / read_manifest(MODEL).model


def test_a_session_runs_on_the_cpu_with_the_threads_asked_for():
    session = open_session(_model_file(), threads=3)
    options = session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert session.get_providers() == list(PROVIDERS)
    assert not options.enable_profiling
    # The agent gives memory back per run (arena_shrink_options): the arena stays on.
    assert options.enable_cpu_mem_arena


def test_a_profiled_session_writes_its_profile_under_the_prefix(tmp_path):
    session = open_session(_model_file(), profile_prefix=str(tmp_path / "probe"))
    session.run(None, {"input": np.zeros((2, 6, 10, 10), np.float32)})
    written = Path(session.end_profiling())
    assert written.parent == tmp_path and written.name.startswith("probe")
    assert any(e.get("cat") == "Node" for e in json.loads(written.read_text()))


def test_arena_shrink_options_shrink_the_cpu_arena():
    options = arena_shrink_options()
    assert options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"


def test_load_errors_are_onnx_runtimes_own(tmp_path):
    """Callers translate them into their own error types (ModelError, BundleError, ...)."""
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(Exception, match="(?i)protobuf|load|parse"):
        open_session(bogus)


def test_telemetry_is_off_once_the_factory_is_imported_unless_the_operator_chose():
    probe = ("import os, edged.model.session; "
             "print(os.environ['ORT_DISABLE_TELEMETRY'], os.environ['ORT_TELEMETRY_DISABLED'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORT_")}

    def run() -> list[str]:
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                              text=True, check=True).stdout.split()

    assert run() == ["1", "1"]
    env["ORT_DISABLE_TELEMETRY"] = "0"
    assert run() == ["0", "1"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}


def test_only_the_factory_imports_onnx_runtime():
    importers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                       if any(m.split(".")[0] == "onnxruntime" for m in _imports(p)))
    assert importers == ["model/session.py"]


@pytest.mark.parametrize("package", ["bundle", "modelstore", "model"])
def test_the_model_layer_imports_no_plugin(package):
    """Verification and the hot swap open sessions through the factory, not the plugin."""
    offending = sorted(f"{p.relative_to(PACKAGE)}: {m}" for p in (PACKAGE / package).rglob("*.py")
                       for m in _imports(p) if m.startswith("edged.builtin"))
    assert not offending
