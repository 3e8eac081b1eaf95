"""Which of a pipeline's decisions are captured: pure sampling policies over a round.

Every policy sees each round's decisions once, on the event loop, and costs O(decisions)
with no I/O. :class:`Sampler` combines them; a decision picked by several policies is
captured once, with every reason that picked it. See docs/capture.md, "Pipeline capture".

Reasons: ``rate``, ``reservoir``, ``anomaly``, ``before`` (context ahead of an anomaly),
``after`` (context following one), ``on_demand``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from edged.events import Decision


@dataclass(slots=True)
class Pick:
    """A decision chosen for capture and why. ``index`` is its position in its round
    (-1 for one picked from an earlier round); ``window`` what the round handed over."""

    decision: Decision
    reasons: list[str]
    index: int = -1
    window: object = None


class RatePolicy:
    """One decision in ``every``: per turbine by a counter (deterministic: the 1st,
    ``every+1``-th, ... of each turbine), or at random with a seeded generator."""

    def __init__(self, every: int, *, mode: str = "counter", seed: int | None = None) -> None:
        if every < 1:
            raise ValueError("every must be >= 1")
        self.every = every
        self.mode = mode
        self._counts: dict[str, int] = {}
        self._rng = random.Random(seed)

    def select(self, decisions: Sequence[Decision]) -> list[int]:
        every = self.every
        if every == 1:
            return list(range(len(decisions)))
        if self.mode == "random":
            p = 1.0 / every
            rnd = self._rng.random
            return [i for i in range(len(decisions)) if rnd() < p]
        counts = self._counts
        picked = []
        for i, d in enumerate(decisions):
            n = counts.get(d.turbine, 0)
            counts[d.turbine] = n + 1
            if n % every == 0:
                picked.append(i)
        return picked


class ReservoirPolicy:
    """A uniform sample of ``size`` decisions per ``window_s`` (Vitter's algorithm R),
    emitted when the window closes: the first round after it, or :meth:`drain`."""

    def __init__(self, size: int, window_s: float, *, seed: int | None = None) -> None:
        if size < 1 or window_s <= 0:
            raise ValueError("size must be >= 1 and window_s > 0")
        self.size = size
        self.window_s = window_s
        self._rng = random.Random(seed)
        self._start: float | None = None
        self._seen = 0
        self._held: list[Pick] = []

    def offer(self, picks: Sequence[Pick], now: float) -> list[Pick]:
        """Offer a round's candidates; return the sample of a window that closed."""
        closed: list[Pick] = []
        if self._start is None:
            self._start = now
        elif now - self._start >= self.window_s:
            closed = self.drain()
            # Windows are aligned to the first one; an idle gap skips whole windows.
            self._start += (now - self._start) // self.window_s * self.window_s
        held, size = self._held, self.size
        randrange = self._rng.randrange
        for pick in picks:
            self._seen += 1
            if len(held) < size:
                held.append(pick)
            else:
                j = randrange(self._seen)
                if j < size:
                    held[j] = pick
        return closed

    def drain(self) -> list[Pick]:
        held, self._held, self._seen = self._held, [], 0
        for pick in held:
            pick.reasons.append("reservoir")
        return held


class AnomalyPolicy:
    """Every anomalous decision, the last ``before`` decisions of its turbine that were
    not captured already, and the next ``after`` decisions of that turbine (an anomaly
    among them starts the count again)."""

    def __init__(self, before: int = 0, after: int = 0) -> None:
        self.before = before
        self.after = after
        self._rings: dict[str, deque[Pick]] = {}
        self._after: dict[str, int] = {}

    def select(self, decisions: Sequence[Decision], taken: dict[int, Pick],
               window: object) -> list[Pick]:
        """Mark anomalies and after-context in ``taken`` (index -> pick); return the
        before-context picks from earlier rounds. Untaken decisions fill the rings."""
        earlier: list[Pick] = []
        rings, after_left = self._rings, self._after
        for i, d in enumerate(decisions):
            turbine = d.turbine
            if d.is_anomalous:
                ring = rings.get(turbine)
                if ring:
                    for pick in ring:
                        pick.reasons.append("before")
                    earlier.extend(ring)
                    ring.clear()
                self._take(taken, i, d, window, "anomaly")
                if self.after:
                    after_left[turbine] = self.after
                continue
            left = after_left.get(turbine, 0)
            if left:
                self._take(taken, i, d, window, "after")
                if left == 1:
                    del after_left[turbine]
                else:
                    after_left[turbine] = left - 1
            elif self.before and i not in taken:
                ring = rings.get(turbine)
                if ring is None:
                    ring = rings[turbine] = deque(maxlen=self.before)
                # No window: a view would pin the whole round's array for as long as the
                # ring holds it, and a copy per decision is too dear for the hot path.
                ring.append(Pick(d, []))
        return earlier

    @staticmethod
    def _take(taken: dict[int, Pick], i: int, d: Decision, window: object,
              reason: str) -> None:
        pick = taken.get(i)
        if pick is None:
            taken[i] = Pick(d, [reason], i, window)
        else:
            pick.reasons.append(reason)


class OnDemand:
    """Capture every decision of a turbine (``*``: all turbines) until a monotonic
    deadline; requests come from a command (MQTT) and expire by themselves."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def request(self, turbine: str, until_monotonic: float) -> None:
        self._until[turbine] = max(until_monotonic, self._until.get(turbine, 0.0))

    def active(self, now: float) -> bool:
        if self._until:
            for turbine in [t for t, u in self._until.items() if u <= now]:
                del self._until[turbine]
        return bool(self._until)

    def select(self, decisions: Sequence[Decision], now: float) -> list[int]:
        if not self.active(now):
            return []
        if "*" in self._until:
            return list(range(len(decisions)))
        until = self._until
        return [i for i, d in enumerate(decisions) if d.turbine in until]


def _row(window: object, i: int) -> object:
    """Row ``i`` of a round's window (a view, no copy), or None without one."""
    return None if window is None else window[i]  # type: ignore[index]


@dataclass
class Sampler:
    """The policies of one pipeline, applied in one pass per round."""

    rate: RatePolicy | None = None
    reservoir: ReservoirPolicy | None = None
    anomalies: AnomalyPolicy | None = None
    on_demand: OnDemand = field(default_factory=OnDemand)

    def select(self, decisions: Sequence[Decision], now: float,
               window: object = None) -> list[Pick]:
        """The picks of one round at monotonic time ``now``: context from earlier rounds
        first, then this round's in order, then a reservoir window that closed. A pick's
        ``window`` is its row of ``window`` (turbines first) when one was given."""
        taken: dict[int, Pick] = {}
        if self.rate is not None:
            for i in self.rate.select(decisions):
                taken[i] = Pick(decisions[i], ["rate"], i)
        for i in self.on_demand.select(decisions, now):
            pick = taken.get(i)
            if pick is None:
                taken[i] = Pick(decisions[i], ["on_demand"], i)
            else:
                pick.reasons.append("on_demand")
        earlier = (self.anomalies.select(decisions, taken, window)
                   if self.anomalies is not None else [])
        closed: list[Pick] = []
        if self.reservoir is not None:
            candidates = [Pick(d, [], i, _row(window, i))
                          for i, d in enumerate(decisions) if i not in taken]
            closed = self.reservoir.offer(candidates, now)
        picks = earlier
        for i in sorted(taken):
            pick = taken[i]
            pick.window = _row(window, i)
            picks.append(pick)
        picks.extend(closed)
        return picks

    def drain(self) -> list[Pick]:
        """The reservoir's current window, on shutdown."""
        return self.reservoir.drain() if self.reservoir is not None else []
