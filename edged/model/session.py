"""The one place edged opens ONNX Runtime sessions: on the CPU, with the threads asked for,
optionally profiled, and with ONNX Runtime's telemetry turned off.

Every caller (the ``onnx`` backend, the agent's models and its footprint probe, bundle
verification) opens its sessions here, so a setting is decided once. ``onnxruntime`` is
imported on the first call, not with this module: plugin discovery must stay cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# ONNX Runtime >= 1.29 sends usage telemetry from Linux too, and writes a device id under
# $HOME. A device must not phone home unasked: opt out before the runtime initialises
# (importing this module comes first), unless the operator has set the variables themselves.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("ORT_TELEMETRY_DISABLED", "1")

#: Devices have no accelerator ONNX Runtime could use; naming the provider keeps a build
#: with others from picking one.
PROVIDERS = ("CPUExecutionProvider",)


def open_session(path: Path | str, *, threads: int = 1,
                 profile_prefix: str | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` for the model file at ``path``.

    ``threads`` intra-op threads and one inter-op thread: a model runs its nodes in order,
    and the other cores are left to the rest of the device. ``profile_prefix``, when
    given, turns on ONNX Runtime's profiler, which writes its JSON file under that prefix
    (``session.end_profiling()`` names it). The CPU memory arena keeps its default (on):
    a caller gives memory back per run with :func:`arena_shrink_options`.

    Raises whatever ONNX Runtime raises (its errors are untyped): each caller says what
    failed in its own error type. Blocking: call from a worker thread on the event loop.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=list(PROVIDERS))


def arena_shrink_options() -> Any:
    """Run options under which the CPU arena frees what a run allocated when the run ends,
    so a large call's peak is not kept for good."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options
