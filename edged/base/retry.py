"""The one retry policy: exponential backoff with full jitter.

Every wait before trying again in edged (a component's start, a crashed source, an MQTT
reconnect, the jobs service, a job report, a webhook, a capture upload, a bundle download)
draws its delay here. The ceiling of attempt ``n`` (1, 2, ...) is ``first_s * 2**(n-1)``,
at most ``cap_s``, and the delay is uniform in ``[0, ceiling]``: AWS's "Exponential
Backoff And Jitter" (*full jitter*). Of the formulas studied there it spreads a fleet
that failed together (a broker restart, an endpoint's outage) the most, for the least
total waiting; a caller that must not retry at once (a ``Retry-After``) adds that floor
itself.

A small helper rather than stamina or tenacity: the loops here are asyncio loops with
their own conditions (reconnect forever, give up after N, a worker thread that waits on
a cancellation event, a server's ``Retry-After``), and each logs the delay before it
waits. Bent around a retrying decorator they would lose that shape; all they need is the
next delay.
"""

from __future__ import annotations

import asyncio
import random

# 2**1023 is the largest power of two a float holds; past the cap the exponent no longer
# matters, and a link that reconnects for days must not overflow into an exception.
_MAX_EXPONENT = 1000


def full_jitter(ceiling: float) -> float:
    """A delay uniform in ``[0, ceiling]``."""
    return random.uniform(0.0, ceiling)


def ceiling(attempt: int, first_s: float, cap_s: float) -> float:
    """The longest delay after failed attempt ``attempt`` (1 for the first failure)."""
    exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
    return min(cap_s, first_s * 2.0 ** exponent)


def delay(attempt: int, first_s: float, cap_s: float) -> float:
    """The delay after failed attempt ``attempt``: full jitter under :func:`ceiling`."""
    return full_jitter(ceiling(attempt, first_s, cap_s))


class Backoff:
    """The failures of one retry loop, counted: :meth:`next_delay` after each failure,
    :meth:`reset` after a success."""

    def __init__(self, first_s: float, cap_s: float) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self.failures = 0

    def next_delay(self) -> float:
        """Count a failure; the delay to wait before the next attempt."""
        self.failures += 1
        return delay(self.failures, self.first_s, self.cap_s)

    def reset(self) -> None:
        self.failures = 0

    async def sleep(self) -> float:
        """Count a failure and wait its delay (cancellable); the delay waited."""
        seconds = self.next_delay()
        await asyncio.sleep(seconds)
        return seconds


__all__ = ["Backoff", "ceiling", "delay", "full_jitter"]
