"""cancel_and_wait: a task whose cancellation was swallowed (as Python 3.11's wait_for
can) is cancelled again until it ends."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from edged.runtime.tasks import cancel_and_wait


async def test_a_swallowed_cancellation_is_repeated_until_the_task_ends():
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed == 2:
                    raise
                swallowed += 1  # as wait_for does when its future completes meanwhile

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await cancel_and_wait(task, retry_s=0.01)
    assert task.cancelled() and swallowed == 2


async def test_a_task_that_never_ends_fails_after_the_limit():
    release = False

    async def immortal() -> None:
        while not release:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    task = asyncio.create_task(immortal(), name="immortal")
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError, match="immortal ignored cancellation"):
        await cancel_and_wait(task, seconds=0.1, retry_s=0.01)
    assert not task.done()
    release = True  # leave nothing running
    await cancel_and_wait(task)
    assert task.done()
