"""A clock a test steps by hand, for code that reads time through an injected callable
(a pipeline's ``wall_clock`` and ``monotonic_clock``): a test of a bound in seconds moves
time past the bound instead of sleeping through it, and never races the machine's load."""

from __future__ import annotations


class FakeClock:
    """Returns ``now`` until the test moves it on with :meth:`advance`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
