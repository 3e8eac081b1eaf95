"""What a plugin author needs to test a plugin (like ``tox.pytest``): build and run a
component, run a small graph, wait for a condition, write a farm config.

::

    from edged.testing import build_component, collect_readings, eventually

    async def test_my_source(tmp_path):
        source = build_component("source", {"type": "csv_rows", "path": "x.csv"}, tmp_path)
        readings = await collect_readings(source, rows=10)

Built as the daemon builds it: the config through the type's model, registered by its
entry point, the factory with a :class:`~edged.plugin.components.BuildContext`. See "Testing
your plugin" in docs/plugins.md. edged's own brokers, fake cloud services and child
processes are not here: they live with its tests (``tests/support``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from edged.plugin.components import BuildContext, Readings
from edged.plugin.registry import Kind, Registry


def build_component(kind: Kind, config: dict[str, Any], state_dir: Path, *,
                    name: str = "test", inputs: tuple[str, ...] = (),
                    registry: Registry | None = None,
                    manifest: dict[str, Any] | None = None) -> Any:
    """The component that ``config`` (a YAML section as a dict, ``type`` included)
    describes, built but not started. ``inputs``: the raw columns a source is asked for;
    ``manifest``: the model manifest a preprocessor is built for (required for one)."""
    if registry is None:
        from edged.plugin.manager import make_plugin_manager

        _, registry = make_plugin_manager()
    component_type = registry.component(kind, config.get("type", ""))
    if component_type is None:
        raise LookupError(f"no {kind} type {config.get('type')!r}: is its plugin installed?")
    validated = component_type.config.model_validate(config)
    ctx = BuildContext(name=name, device_id="test-device", state_dir=Path(state_dir),
                       inputs=inputs)
    return component_type.build(validated, ctx, manifest=manifest)


async def collect_readings(source: Any, *, rows: int | None = None,
                           seconds: float = 20.0) -> list[Readings]:
    """Start ``source``, run it and return the batches it emits: up to the one that
    brings ``rows`` rows, or until it ends by itself (``rows=None``); stopped and exited
    either way. Fails after ``seconds`` rather than hang a test."""
    batches: list[Readings] = []
    enough = asyncio.Event()

    async def emit(readings: Readings) -> None:
        if enough.is_set():
            return  # emitted before the source was stopped: past what was asked for
        batches.append(readings)
        if rows is not None and sum(len(b.turbines) for b in batches) >= rows:
            enough.set()

    async with source:
        task = asyncio.create_task(source.run(emit), name="edged[test].source")
        waiter = asyncio.create_task(enough.wait(), name="edged[test].enough")
        try:
            done, _ = await asyncio.wait({task, waiter}, timeout=seconds,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise TimeoutError(f"{len(batches)} batches after {seconds} s")
        finally:
            await stop_task(waiter)
            await stop_task(task)
    return batches


async def eventually(predicate: Callable[[], object], seconds: float = 20.0) -> None:
    """Wait until ``predicate()`` is true; TimeoutError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not predicate():  # noqa: ASYNC110  (a condition on any state, polled)
        if time.monotonic() > deadline:
            raise TimeoutError(f"still not true after {seconds} s")
        await asyncio.sleep(0.05)


async def stop_task(task: asyncio.Task, seconds: float = 10.0) -> None:
    """Cancel ``task`` and wait until it has ended (re-cancelling: see
    :mod:`edged.base.tasks`); its exception, if it failed, is raised. Fails after
    ``seconds`` rather than hang a test."""
    from edged.base.tasks import cancel_and_wait

    await cancel_and_wait(task, seconds=seconds)
    if not task.cancelled():
        task.result()


@contextlib.asynccontextmanager
async def running_graph(config: Path, registry: Registry | None = None
                        ) -> AsyncIterator[Any]:
    """A daemon graph built from ``config`` and running in this event loop (started,
    ready) for the block's duration; stopped, in stages, after it."""
    from edged.app.assembly import build_graph
    from edged.config import load_config
    from edged.plugin.manager import make_plugin_manager

    if registry is None:
        _, registry = make_plugin_manager()
    graph = build_graph(load_config(config, registry), registry)
    ready = asyncio.Event()
    task = asyncio.create_task(graph.run(on_ready=ready.set), name="edged[test].graph")
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield graph
    finally:
        graph.stop()
        # Not wait_for: it waits without bound for a task that ignores its cancellation,
        # and a hung test says less than a failed one with every task's stack.
        done, _ = await asyncio.wait({task}, timeout=30)
        if not done:
            stacks = io.StringIO()
            for other in asyncio.all_tasks():
                other.print_stack(file=stacks)
            task.cancel()
            raise AssertionError(f"the graph did not stop within 30 s:\n{stacks.getvalue()}")
        task.result()


def farm_config(device: str, state_dir: Path, *, turbines: int = 4, faults: str = "",
                model: str = "builtin:windturbine-v1", interval_s: float = 0.3,
                extra: str = "") -> str:
    """The YAML of the tests' usual device: a simulated farm (``faults`` as the
    simulator takes them) watched by the reference pipeline ``turbines`` with ``model``;
    ``extra``: more top-level sections (``cloud:``, ``metrics:``...), as YAML lines."""
    fault = f", faults: {faults!r}" if faults else ""
    return f"""\
device: {{id: {device}}}
state_dir: {state_dir}
log: {{level: info, stats_interval_s: 0}}
sources:
  farm: {{type: simulator, turbines: {turbines}, rate_hz: 20, seed: 3, history_s: 25{fault}}}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx, model: "{model}"}}
    interval_s: {interval_s}
{extra}
"""
