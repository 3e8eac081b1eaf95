"""What a call may cost in memory, checked before it runs, and memory given back after.

A Predict's input is small next to what ONNX Runtime allocates for it: the reference
model needs about 89 bytes of intermediate and output tensors per input byte (137 before
its transposed convolutions were rewritten as convolutions, when one 14 MB request, under
the 16 MiB message cap, took 1.8 GB), and ONNX Runtime's CPU arena kept it after the
call. So:

- each model's **footprint** is measured once, when it is loaded: one run of a small
  probe input under ONNX Runtime's profiler, whose per-node figures give the arena's
  peak in use (or, from runtimes that do not report it, the sum of every node's output,
  an upper bound). A request's cost is its input bytes times that factor, plus the
  copies the agent itself makes (request, reply, its serialisation);
- a :class:`MemoryBudget` holds the cost of the calls in flight and refuses a call that
  would take it past ``max_inflight_bytes`` at once (RESOURCE_EXHAUSTED), never queueing it;
- after a large call the arena is shrunk (the run option
  ``memory.enable_memory_arena_shrinkage``) and glibc is asked to return freed heap
  (``malloc_trim(0)``), so a burst does not leave the process at its peak for good.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import functools
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from edged.agent.errors import ResourceExhausted
from edged.model.session import arena_shrink_options, open_session

log = structlog.get_logger("edged.agent")

MIB = 1 << 20
#: Copies of a request's bytes the agent holds besides ONNX Runtime's tensors: the
#: request message, the reply's bytes and their serialisation.
COPIES = 3
#: Copies of a CaptureData request's bytes until the store has them: the bytes read,
#: their base64 and the JSON line.
CAPTURE_COPIES = 3
#: Bytes of working memory per input byte assumed for a model whose probe failed.
FALLBACK_FACTOR = 256
#: The probe's input stays near this size (a model's fixed dimensions may make it larger).
PROBE_BYTES = 256 * 1024
PROBE_MAX_BATCH = 64
#: Calls estimated above this give memory back when they end.
RELEASE_ABOVE = 32 * MIB


@dataclass(frozen=True)
class Footprint:
    """Working memory of one call of a model: ``factor`` bytes per input byte."""

    factor: float
    measured: bool

    def estimate(self, input_bytes: int) -> int:
        return math.ceil(self.factor * input_bytes)


FALLBACK = Footprint(FALLBACK_FACTOR, measured=False)


def mib(nbytes: int) -> str:
    return f"{nbytes / MIB:.1f} MiB"


def measure_footprint(file: Path, inputs: Sequence[Any], session_threads: int = 1) -> Footprint:
    """The model's footprint from one profiled run of a probe input of zeros.

    ``inputs``: the model's :class:`~edged.agent.models.TensorInfo`; the first dynamic
    dimension of each is the probe batch, other dynamic dimensions 1. Blocking: call from
    a worker thread. A model the probe cannot run gets :data:`FALLBACK`.
    """
    feeds = _probe_feeds(inputs)
    input_bytes = sum(array.nbytes for array in feeds.values())
    workdir = tempfile.mkdtemp(prefix="edged-probe-")
    try:
        events = _profile(file, feeds, workdir, session_threads)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        log.warning("model_footprint_unmeasured", file=str(file), factor=FALLBACK_FACTOR,
                    error=str(exc).strip()[:300] or type(exc).__name__)
        return FALLBACK
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    cost = _run_cost(events)
    if cost is None or input_bytes == 0:
        return FALLBACK
    return Footprint(max(1.0, cost / input_bytes) + COPIES, measured=True)


def _probe_feeds(inputs: Sequence[Any]) -> dict[str, np.ndarray]:
    def shape(info: Any) -> tuple[int, ...]:
        fixed = math.prod(d for d in info.shape if d >= 0) * info.dtype.itemsize
        batch = max(1, min(PROBE_MAX_BATCH, PROBE_BYTES // max(1, fixed)))
        dynamic = [i for i, d in enumerate(info.shape) if d < 0]
        return tuple(batch if dynamic and i == dynamic[0] else 1 if d < 0 else d
                     for i, d in enumerate(info.shape))

    return {info.name: np.zeros(shape(info), info.dtype) for info in inputs}


def _profile(file: Path, feeds: dict[str, np.ndarray], workdir: str,
             session_threads: int) -> list[dict[str, Any]]:
    session = open_session(file, threads=session_threads,
                           profile_prefix=os.path.join(workdir, "probe"))
    session.run(None, feeds)
    with open(session.end_profiling(), encoding="utf-8") as handle:
        events = json.load(handle)
    return events if isinstance(events, list) else []


def _run_cost(events: list[dict[str, Any]]) -> int | None:
    """Bytes one profiled run needed beyond the model's weights, from its node events."""
    nodes = [e["args"] for e in events if isinstance(e, dict) and e.get("cat") == "Node"
             and "output_size" in e.get("args", {})]
    if not nodes:
        return None
    if all("mem_in_use_peak" in a and "mem_in_use_delta" in a for a in nodes):
        # The arena's own accounting: its peak in use, less what it held before (weights).
        before = min(int(a["mem_bytes_in_use"]) - int(a["mem_in_use_delta"]) for a in nodes)
        return max(int(a["mem_in_use_peak"]) for a in nodes) - before
    # Runtimes without arena figures: every node's output alive at once, an upper bound.
    return sum(int(a["output_size"]) for a in nodes)


class MemoryBudget:
    """The estimated bytes of the calls in flight, bounded by ``limit``. A call that does
    not fit is refused at once: a queue of waiting calls would hold their requests'
    memory instead."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int, what: str) -> None:
        if nbytes > self.limit:
            raise ResourceExhausted(
                f"{what} needs about {mib(nbytes)} of working memory, more than "
                f"max_inflight_bytes ({mib(self.limit)}) allows for all calls together: "
                "send smaller batches", reason="request_memory")
        with self._lock:
            if self.in_use + nbytes > self.limit:
                in_use = self.in_use
            else:
                self.in_use += nbytes
                self.peak = max(self.peak, self.in_use)
                return
        raise ResourceExhausted(
            f"{what} needs about {mib(nbytes)} of working memory; the calls in flight "
            f"hold {mib(in_use)} of max_inflight_bytes ({mib(self.limit)}): retry later",
            reason="memory_in_flight")

    @contextlib.contextmanager
    def hold(self, nbytes: int, what: str) -> Iterator[None]:
        self.reserve(nbytes, what)
        try:
            yield
        finally:
            self.release(nbytes)

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.in_use -= nbytes

    def submit(self, pool: concurrent.futures.Executor, nbytes: int, what: str,
               fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Reserve ``nbytes`` and run ``fn`` in ``pool``; the reservation ends with the
        work, not with the caller, who may be cancelled while the work still runs."""
        self.reserve(nbytes, what)
        try:
            future = pool.submit(fn, *args)
        except BaseException:
            self.release(nbytes)
            raise
        # Called once whether the work ran, failed or was cancelled before it started.
        future.add_done_callback(lambda _: self.release(nbytes))
        return future


def run_options(cost: int) -> Any:
    """ONNX Runtime run options for a call of ``cost`` bytes: a large one shrinks the
    CPU arena when it ends, so its peak is not kept for good."""
    return arena_shrink_options() if cost >= RELEASE_ABOVE else None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only; musl has none
    except (OSError, AttributeError):
        return None


#: glibc's mallopt parameter: allocations from this size up are mapped on their own.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 * MIB


def map_large_buffers() -> None:
    """Have glibc map every buffer of ``MMAP_THRESHOLD`` or more on its own, so freeing it
    returns it to the system. By default glibc raises that threshold to the largest block
    freed (up to 32 MiB), after which a 16 MiB request, even a refused one, is carved
    from a heap that keeps its pages: RSS then stays near the largest burst of requests."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def give_back(cost: int) -> None:
    """After a large call: glibc keeps freed heap (the request and reply were tens of MB)
    unless asked to return it."""
    trim = _malloc_trim()
    if cost >= RELEASE_ABOVE and trim is not None:
        trim(0)
