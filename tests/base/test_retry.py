"""The one retry policy: exponential ceilings, full jitter below them, never an overflow."""

from __future__ import annotations

import asyncio
import random

import pytest

from edged.base import retry
from edged.base.retry import Backoff


def test_ceilings_double_from_the_first_delay_up_to_the_cap():
    assert [retry.ceiling(n, 0.5, 5.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_attempt_zero_counts_as_the_first():
    assert retry.ceiling(0, 0.5, 5.0) == retry.ceiling(1, 0.5, 5.0) == 0.5


def test_a_link_down_for_days_never_overflows():
    assert retry.ceiling(10**6, 0.5, 30.0) == 30.0
    assert 0.0 <= retry.delay(10**6, 0.5, 30.0) <= 30.0


def test_full_jitter_spreads_delays_over_the_whole_range(monkeypatch):
    monkeypatch.setattr(retry, "random", random.Random(14))
    delays = [retry.delay(3, 1.0, 30.0) for _ in range(2000)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    # Full jitter, not "equal jitter": a quarter of the draws fall below a quarter of
    # the ceiling, and the mean is half of it.
    assert 0.2 < sum(d < 1.0 for d in delays) / len(delays) < 0.3
    assert 1.9 < sum(delays) / len(delays) < 2.1


def test_backoff_counts_failures_and_resets(monkeypatch):
    monkeypatch.setattr(retry, "full_jitter", lambda ceiling: ceiling)
    backoff = Backoff(2.0, 60.0)
    assert [backoff.next_delay() for _ in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert backoff.failures == 7
    backoff.reset()
    assert backoff.failures == 0 and backoff.next_delay() == 2.0


async def test_sleep_waits_the_delay_it_returns(monkeypatch):
    monkeypatch.setattr(retry, "full_jitter", lambda ceiling: ceiling)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await Backoff(0.05, 1.0).sleep() == 0.05
    assert loop.time() - started >= 0.05


async def test_sleep_is_cancellable(monkeypatch):
    monkeypatch.setattr(retry, "full_jitter", lambda ceiling: ceiling)
    task = asyncio.create_task(Backoff(30.0, 30.0).sleep())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
