"""Stopping a task for sure.

Python 3.11's ``asyncio.wait_for`` (aiomqtt awaits every PUBACK and SUBACK with it) can
swallow a cancellation that lands just as the awaited future completes; 3.12 fixed it by
building ``wait_for`` on ``asyncio.timeout``. The task then runs on as if never cancelled,
and a plain ``task.cancel(); await task`` waits for it forever: a job's progress reporter
did exactly that, and its cancelled job never stopped.
"""

from __future__ import annotations

import asyncio
import time


async def cancel_and_wait(task: asyncio.Task, *, seconds: float | None = None,
                          retry_s: float = 0.5) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again every
    ``retry_s`` while it runs on. Its outcome is left in the task (not raised here).
    TimeoutError after ``seconds`` (None: no limit) if it still has not ended."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while not task.done():
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{task.get_name()} ignored cancellation for {seconds} s")
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
