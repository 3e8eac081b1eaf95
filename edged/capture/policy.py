"""Which of a pipeline's decisions are captured: pure sampling policies over a round.

Every policy sees each round's decisions once, on the event loop, and costs O(decisions)
with no I/O. :class:`Sampler` combines them; a decision picked by several policies is
captured once, with every reason that picked it. See docs/capture.md, "Pipeline capture".

Reasons: ``rate``, ``reservoir``, ``anomaly``, ``before`` (context ahead of an anomaly),
``after`` (context following one), ``on_demand``.

Every pick is stamped with its own round (:class:`SampledRound`): its monotonic time, a sequence
number and any step of the wall clock seen then (:class:`RoundClock`), so a decision
captured rounds later (context, reservoir) still says when it was made.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from edged.plugin.events import Decision


@dataclass(slots=True)
class Pick:
    """A decision chosen for capture and why, with what its own round handed over:
    ``index``, its position in that round; ``window``, its feature history (history x
    features); ``raw``, the source rows behind it (history x inputs, columns
    ``raw_inputs``); ``model_io``, the model's input and output for it (its rows of
    each); ``monotonic``, the round's monotonic time; ``seq``, its sequence
    number; ``clock_step_s``, the wall-clock step seen at that round (None: none). A pick
    made by hand rather than by a :class:`Sampler` may leave the stamps None."""

    decision: Decision
    reasons: list[str]
    index: int = -1
    window: object = None
    raw: object = None
    raw_inputs: tuple[str, ...] = ()
    model_io: object = None
    seq: int | None = None
    monotonic: float | None = None
    clock_step_s: float | None = None


class RoundClock:
    """Stamps rounds: the first sequence number of each, and the step of the wall clock
    since the previous round.

    A sequence number is the round's ``CLOCK_MONOTONIC`` time in nanoseconds plus the
    decision's position in the round, and never less than the previous one plus one: it
    grows with monotonic time, which a step of the wall clock does not touch and which
    every process of one boot shares, so it also orders the records of a daemon that
    restarted (a restart takes far longer than the nanoseconds a round reserves).

    A step shows as a jump of (wall - monotonic) between two rounds. Only NTP's slewing
    moves that difference otherwise, by at most 500 ppm (``adjtimex(2)``'s limit) of the
    time between the rounds, so a jump beyond that plus ``tolerance_s`` (which absorbs
    the jitter of reading two clocks) is a step, backwards (negative) or forwards.
    """

    SLEW = 500e-6

    def __init__(self, tolerance_s: float = 0.05) -> None:
        self.tolerance_s = tolerance_s
        self._next_seq = 0
        self._last: tuple[float, float] | None = None  # (wall - monotonic, monotonic)

    def stamp(self, now: float, wall: float | None, count: int) -> tuple[int, float | None]:
        """(first sequence number, wall-clock step or None) of a round of ``count``
        decisions at monotonic time ``now`` whose wall-clock time is ``wall`` (None: not
        known, no step is looked for)."""
        first = max(int(now * 1e9), self._next_seq)
        self._next_seq = first + max(count, 1)
        if wall is None:
            return first, None
        offset, last = wall - now, self._last
        self._last = (offset, now)
        if last is None:
            return first, None
        moved = offset - last[0]
        if abs(moved) > self.tolerance_s + self.SLEW * (now - last[1]):
            return first, round(moved, 6)
        return first, None


@dataclass(slots=True)
class SampledRound:
    """One round (:class:`edged.plugin.events.Round`) as the sampler sees it: what the
    capture keeps of it, stamped; makes its picks."""

    first_seq: int
    monotonic: float
    clock_step_s: float | None
    window: object = None  # (decisions, history, features) or None
    raw: object = None  # (decisions, history, inputs) or None
    raw_inputs: tuple[str, ...] = ()
    model_io: object = None  # (input, output), each (decisions, rows each, ...), or None

    def pick(self, d: Decision, reasons: list[str], i: int, *, copy: bool = False) -> Pick:
        """Decision ``i``'s pick; its rows are views into the round's arrays, or copies
        with ``copy`` (for a pick held for rounds: a view would pin the whole round)."""
        def row(rows):
            return None if rows is None else rows[i].copy() if copy else rows[i]

        window, raw = row(self.window), row(self.raw)
        model_io = None if self.model_io is None else tuple(map(row, self.model_io))
        return Pick(d, reasons, i, window, raw, self.raw_inputs if raw is not None else (),
                    model_io, self.first_seq + i, self.monotonic, self.clock_step_s)


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
               round_: SampledRound) -> list[Pick]:
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
                self._take(taken, i, d, round_, "anomaly")
                if self.after:
                    after_left[turbine] = self.after
                continue
            left = after_left.get(turbine, 0)
            if left:
                self._take(taken, i, d, round_, "after")
                if left == 1:
                    del after_left[turbine]
                else:
                    after_left[turbine] = left - 1
            elif self.before and i not in taken:
                ring = rings.get(turbine)
                if ring is None:
                    ring = rings[turbine] = deque(maxlen=self.before)
                # Copies of its rows (when the capture takes them): a view would pin the
                # whole round's arrays for as long as the ring holds it. Bounded: before
                # x turbines x history x (features + inputs) floats.
                ring.append(round_.pick(d, [], i, copy=True))
        return earlier

    @staticmethod
    def _take(taken: dict[int, Pick], i: int, d: Decision, round_: SampledRound,
              reason: str) -> None:
        pick = taken.get(i)
        if pick is None:
            taken[i] = round_.pick(d, [reason], i)
        else:
            pick.reasons.append(reason)


#: The longest a capture on demand runs: a request's ``duration_s`` at most, and the cap
#: on a deadline read back after a restart (a wall clock stepped back while the daemon
#: was down must not turn a request into a week of capture).
MAX_ON_DEMAND_S = 24 * 3600


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

    def deadlines(self, now: float, wall: float) -> dict[str, float]:
        """The requests still running, as wall-clock deadlines (``now``: monotonic time
        read beside ``wall``): what outlives this process."""
        return {t: wall + (u - now) for t, u in self._until.items() if u > now}

    def select(self, decisions: Sequence[Decision], now: float) -> list[int]:
        if not self.active(now):
            return []
        if "*" in self._until:
            return list(range(len(decisions)))
        until = self._until
        return [i for i, d in enumerate(decisions) if d.turbine in until]


@dataclass
class Sampler:
    """The policies of one pipeline, applied in one pass per round."""

    rate: RatePolicy | None = None
    reservoir: ReservoirPolicy | None = None
    anomalies: AnomalyPolicy | None = None
    on_demand: OnDemand = field(default_factory=OnDemand)
    clock: RoundClock = field(default_factory=RoundClock)

    def select(self, decisions: Sequence[Decision], now: float, window: object = None,
               raw: object = None, raw_inputs: Sequence[str] = (),
               model_io: object = None) -> list[Pick]:
        """The picks of one round at monotonic time ``now``: context from earlier rounds
        first, then this round's in order, then a reservoir window that closed. A pick's
        ``window`` is its row of ``window``, its ``raw`` its row of ``raw`` (columns
        ``raw_inputs``), when given (rows in the order of ``decisions``). The round's
        wall-clock time is its decisions' ``time``."""
        wall = decisions[0].time if decisions else None
        first, step = self.clock.stamp(now, wall, len(decisions))
        round_ = SampledRound(first, now, step, window, raw, tuple(raw_inputs), model_io)
        taken: dict[int, Pick] = {}
        if self.rate is not None:
            for i in self.rate.select(decisions):
                taken[i] = round_.pick(decisions[i], ["rate"], i)
        for i in self.on_demand.select(decisions, now):
            pick = taken.get(i)
            if pick is None:
                taken[i] = round_.pick(decisions[i], ["on_demand"], i)
            else:
                pick.reasons.append("on_demand")
        earlier = (self.anomalies.select(decisions, taken, round_)
                   if self.anomalies is not None else [])
        closed: list[Pick] = []
        if self.reservoir is not None:
            candidates = [round_.pick(d, [], i)
                          for i, d in enumerate(decisions) if i not in taken]
            closed = self.reservoir.offer(candidates, now)
        picks = earlier
        picks.extend(taken[i] for i in sorted(taken))
        picks.extend(closed)
        return picks

    def drain(self) -> list[Pick]:
        """The reservoir's current window, on shutdown."""
        return self.reservoir.drain() if self.reservoir is not None else []
