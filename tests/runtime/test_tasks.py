"""cancel_and_wait and cancel_all: a task whose cancellation was swallowed (as Python
3.11's wait_for can) is cancelled again until it ends; run_together: the same for tasks
run side by side; run_to_end: work that must finish outlasts any number of
cancellations."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from edged.base.tasks import cancel_all, cancel_and_wait, run_to_end, run_together


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


async def test_cancel_all_stops_every_task_and_reports_the_immortal_ones():
    release = asyncio.Event()

    async def swallows_once() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)

    async def immortal() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    polite = asyncio.create_task(asyncio.sleep(3600))
    once = asyncio.create_task(swallows_once())
    stuck = asyncio.create_task(immortal())
    await asyncio.sleep(0)
    assert await cancel_all([polite, once, stuck], seconds=0.2, retry_s=0.02) == {stuck}
    assert polite.cancelled() and once.cancelled() and not stuck.done()
    release.set()
    assert await cancel_all([stuck]) == set()
    assert stuck.done() and not stuck.cancelled()


async def test_run_to_end_finishes_its_work_through_repeated_cancellations():
    steps: list[int] = []

    async def work() -> str:
        for step in range(5):
            await asyncio.sleep(0.02)
            steps.append(step)
        return "written"

    async def caller() -> str:
        return await run_to_end(work())

    task = asyncio.create_task(caller())
    for _ in range(3):  # cancelled three times while the work runs
        await asyncio.sleep(0.025)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == [0, 1, 2, 3, 4], "the work ran to its end"
    assert await run_to_end(work()) == "written"


async def test_run_to_end_raises_the_works_own_failure():
    async def broken() -> None:
        await asyncio.sleep(0.02)
        raise OSError("disk full")

    task = asyncio.create_task(run_to_end(broken()))
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(OSError, match="disk full"):
        await task


async def test_run_to_end_keeps_a_cancellation_that_lands_as_the_work_ends():
    """The caller is cancelled after its work has finished but before it resumed: the
    cancellation is still raised (it was lost once, and a capture test that cancelled its
    uploader once waited for it forever)."""
    finished = False

    async def work() -> str:
        nonlocal finished
        await asyncio.sleep(0)
        finished = True
        return "written"

    task = asyncio.create_task(run_to_end(work()))
    while not finished:  # noqa: ASYNC110  (one loop turn at a time is the point)
        await asyncio.sleep(0)
    assert not task.done()  # finished work; its caller has not resumed yet
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def swallows_once(ended: list[str], name: str) -> None:
    """Runs until cancelled twice: the first cancellation is lost, as 3.11's wait_for
    loses one under an MQTT subscribe."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(3600)
    try:
        await asyncio.sleep(3600)
    finally:
        ended.append(name)


async def test_run_together_stops_a_task_that_swallowed_its_cancellation():
    """Cancelled once (as a graph stage cancels a component), run_together ends, and
    every task with it; an asyncio.TaskGroup would wait for the stubborn one forever."""
    ended: list[str] = []
    caller = asyncio.create_task(run_together([
        ("stubborn", swallows_once(ended, "stubborn")),
        ("polite", asyncio.sleep(3600)),
    ]))
    await asyncio.sleep(0.01)
    caller.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await caller
    assert ended == ["stubborn"]


async def test_run_together_raises_the_first_failure_and_stops_the_rest():
    ended: list[str] = []

    async def broken() -> None:
        await asyncio.sleep(0.01)
        raise OSError("link gone")

    with pytest.raises(OSError, match="link gone"):
        await run_together([("broken", broken()), ("stubborn", swallows_once(ended, "s"))])
    assert ended == ["s"]
    assert await run_together([("a", asyncio.sleep(0)), ("a", asyncio.sleep(0.01))]) is None
