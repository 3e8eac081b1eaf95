"""Stopping a task for sure.

Python 3.11's ``asyncio.wait_for`` (aiomqtt awaits every PUBACK and SUBACK with it) can
swallow a cancellation that lands just as the awaited future completes; 3.12 fixed it by
building ``wait_for`` on ``asyncio.timeout``. The task then runs on as if never cancelled,
and a plain ``task.cancel(); await task`` waits for it forever: a job's progress reporter
did exactly that, and its cancelled job never stopped; a graph's task caught in a publish
or a subscribe as the daemon stops would hold the shutdown just as long.

So a task is stopped with :func:`cancel_all` (or :func:`cancel_and_wait`), which cancels
again while it runs on; tasks that run side by side inside a component run under
:func:`run_together` rather than a ``TaskGroup``, which cancels its tasks only once; and
work that must finish once started runs under :func:`run_to_end`, which outlasts any
number of cancellations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def cancel_and_wait(task: asyncio.Task, *, seconds: float | None = None,
                          retry_s: float = 0.5) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again every
    ``retry_s`` while it runs on. Its outcome is left in the task (not raised here).
    TimeoutError after ``seconds`` (None: no limit) if it still has not ended."""
    if await cancel_all([task], seconds=seconds, retry_s=retry_s):
        raise TimeoutError(f"{task.get_name()} ignored cancellation for {seconds} s")


async def cancel_all(tasks: Iterable[asyncio.Task], *, seconds: float | None = None,
                     retry_s: float = 0.5) -> set[asyncio.Task]:
    """Cancel ``tasks`` and wait until they have ended, cancelling those that run on
    again every ``retry_s``. Returns the tasks still running after ``seconds`` (None:
    no limit), an empty set when every one ended; outcomes are left in the tasks."""
    deadline = None if seconds is None else time.monotonic() + seconds
    pending = {task for task in tasks if not task.done()}
    while pending:
        wait_s = retry_s
        if deadline is not None:
            wait_s = min(retry_s, deadline - time.monotonic())
            if wait_s <= 0:
                break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=wait_s)
    return pending


async def run_to_end(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even if the caller is cancelled meanwhile, however
    often, then re-raise the cancellation (``work``'s own exception comes first). For
    what must not be left half-done: spool files, statuses, the books. Repeated
    cancellations are what :func:`cancel_all` sends a task that runs on."""
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.cancelled():  # ``work`` itself was cancelled: result() raises it
                break
            # Ours, even when ``work`` has just finished: a cancellation that lands
            # between its end and our resumption must not be lost.
            cancelled = exc
    result = task.result()
    if cancelled is not None:
        raise cancelled
    return result


async def run_together(named: Iterable[tuple[str, Coroutine[Any, Any, Any]]]) -> None:
    """Run each coroutine as a task (with its name) until every one has returned, one has
    failed (its exception is raised) or the caller is cancelled. Whichever comes first,
    the tasks still running are cancelled until they have ended: a task group cancels
    them once, and waits without end for one that swallowed it."""
    tasks = [asyncio.create_task(coro, name=name) for name, coro in named]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        await run_to_end(cancel_all(tasks))
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
