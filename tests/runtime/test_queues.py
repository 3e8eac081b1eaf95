"""BoundedQueue: the three overflow policies, batching and counters."""

from __future__ import annotations

import asyncio

import pytest

from edged.runtime.queues import BoundedQueue


def test_drop_oldest_keeps_the_newest_and_counts_drops():
    queue: BoundedQueue[int] = BoundedQueue("q", 3, "drop_oldest")
    accepted = [queue.put_nowait(i) for i in range(7)]
    assert accepted == [True, True, True, False, False, False, False]
    assert list(queue._items) == [4, 5, 6]
    assert queue.dropped == 4
    assert len(queue) == 3


def test_drop_newest_keeps_the_oldest_and_counts_drops():
    queue: BoundedQueue[int] = BoundedQueue("q", 3, "drop_newest")
    accepted = [queue.put_nowait(i) for i in range(7)]
    assert accepted == [True, True, True, False, False, False, False]
    assert list(queue._items) == [0, 1, 2]
    assert queue.dropped == 4


async def test_drop_policies_through_async_put():
    oldest: BoundedQueue[int] = BoundedQueue("q", 2, "drop_oldest")
    newest: BoundedQueue[int] = BoundedQueue("q", 2, "drop_newest")
    for i in range(5):
        # Neither policy ever makes the producer wait.
        await asyncio.wait_for(oldest.put(i), 0.5)
        await asyncio.wait_for(newest.put(i), 0.5)
    assert await oldest.get_batch() == [3, 4]
    assert await newest.get_batch() == [0, 1]
    assert oldest.dropped == newest.dropped == 3


async def test_block_waits_until_get_batch_frees_room():
    queue: BoundedQueue[int] = BoundedQueue("q", 2, "block")
    assert await queue.put(1)
    assert await queue.put(2)
    producer = asyncio.create_task(queue.put(3))
    await asyncio.sleep(0.05)
    assert not producer.done(), "put on a full blocking queue must wait"
    assert len(queue) == 2

    assert await queue.get_batch(limit=1) == [1]
    assert await asyncio.wait_for(producer, 1.0) is True
    assert await queue.get_batch() == [2, 3]
    assert queue.dropped == 0
    assert queue.put_count == 3


async def test_block_with_several_waiting_producers_loses_nothing():
    queue: BoundedQueue[int] = BoundedQueue("q", 1, "block")
    producers = [asyncio.create_task(queue.put(i)) for i in range(5)]
    received: list[int] = []
    async with asyncio.timeout(2.0):
        while len(received) < 5:
            received += await queue.get_batch()
    await asyncio.gather(*producers)
    assert sorted(received) == [0, 1, 2, 3, 4]
    assert queue.dropped == 0
    assert queue.high_water == 1


async def test_blocked_put_can_be_cancelled():
    queue: BoundedQueue[int] = BoundedQueue("q", 1, "block")
    await queue.put(1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.put(2), 0.05)
    assert await queue.get_batch() == [1]
    assert len(queue) == 0


async def test_get_batch_waits_for_the_first_item():
    queue: BoundedQueue[str] = BoundedQueue("q", 10, "drop_oldest")
    consumer = asyncio.create_task(queue.get_batch())
    await asyncio.sleep(0.05)
    assert not consumer.done(), "get_batch must wait while the queue is empty"
    queue.put_nowait("a")
    assert await asyncio.wait_for(consumer, 1.0) == ["a"]

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get_batch(), 0.05)


async def test_get_batch_returns_up_to_limit_in_order():
    queue: BoundedQueue[int] = BoundedQueue("q", 100, "drop_newest")
    for i in range(10):
        queue.put_nowait(i)
    assert await queue.get_batch(limit=4) == [0, 1, 2, 3]
    assert await queue.get_batch(limit=4) == [4, 5, 6, 7]
    assert await queue.get_batch(limit=4) == [8, 9]
    assert len(queue) == 0


def test_stats():
    queue: BoundedQueue[int] = BoundedQueue("q", 4, "drop_oldest")
    assert queue.stats() == {"length": 0, "size": 4, "put": 0, "dropped": 0,
                             "high_water": 0}
    for i in range(6):
        queue.put_nowait(i)
    assert queue.stats() == {"length": 4, "size": 4, "put": 6, "dropped": 2,
                             "high_water": 4}


async def test_stats_after_draining_keep_the_high_water_mark():
    queue: BoundedQueue[int] = BoundedQueue("q", 4, "drop_newest")
    for i in range(3):
        queue.put_nowait(i)
    await queue.get_batch()
    queue.put_nowait(9)
    stats = queue.stats()
    assert stats["length"] == 1
    assert stats["high_water"] == 3
    assert stats["put"] == 4
    assert stats["dropped"] == 0
