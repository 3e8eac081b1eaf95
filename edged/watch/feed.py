"""The event feed: decisions, alarms and sensor events of one graph, fanned out in process
to whoever subscribes (the watch socket; the dashboard's SSE later), each line encoded
once for every subscriber that wants it.

The feed is a subscriber of every pipeline (decisions, sensor events) and an observer of
every actuator binding (the alarms and clears its tracker raised; an event two actuators
raised alike is sent once). It never waits: each subscription is a bounded queue of
encoded lines, and a subscription that falls ``limit`` lines behind is ended
(``watch_clients_dropped{reason=too_slow}``) rather than slowing the decision path. With
no subscriber a round costs one truth test; decisions are encoded only for a subscriber
that asked for them (``anomalies``: the anomalous ones; ``all``: every one).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Literal

import orjson

from edged.base.metrics import Counters
from edged.plugin.alarm_payload import alarm_payload, dumps
from edged.plugin.events import Event, Round
from edged.runtime.pipeline import SUMMARY_TURBINE
from edged.watch.records import decision_record, per_feature

Interest = Literal["none", "anomalies", "all"]
#: What ended a subscription, as counted under watch_clients_dropped{reason}.
DROP_REASONS = ("too_slow",)
#: Event ids remembered to send an event two actuators raised alike once.
_RECENT_IDS = 256


class FeedFull(Exception):
    """The feed has ``max_subscribers`` subscriptions already."""


class Overflowed(Exception):
    """The subscription fell too far behind and was ended."""


class Subscription:
    """One subscriber's view of the feed: a bounded queue of encoded lines (each ends in
    a newline), read with :meth:`next_lines`."""

    def __init__(self, feed: EventFeed, decisions: Interest, turbine: str | None,
                 limit: int) -> None:
        self.feed = feed
        self.decisions = decisions
        self.turbine = turbine
        self.limit = limit
        self.overflowed = False
        #: Called (on the loop) the moment the subscription overflows, so a transport
        #: stuck writing to a client that does not read can give up at once.
        self.on_overflow: Callable[[], None] = lambda: None
        self._lines: deque[bytes] = deque()
        self._ready = asyncio.Event()

    def wants(self, turbine: str) -> bool:
        return self.turbine is None or turbine in (self.turbine, SUMMARY_TURBINE)

    def offer(self, line: bytes) -> bool:
        """Queue ``line``; False (and the subscription over) when it is full."""
        if self.overflowed:
            return False
        if len(self._lines) >= self.limit:
            self.overflowed = True
            self._lines.clear()
            self._ready.set()
            self.on_overflow()
            return False
        self._lines.append(line)
        self._ready.set()
        return True

    async def next_lines(self) -> list[bytes]:
        """Every line queued, waiting for one; :class:`Overflowed` once it fell behind."""
        while not self._lines:
            if self.overflowed:
                raise Overflowed
            self._ready.clear()
            await self._ready.wait()
        if self.overflowed:
            raise Overflowed
        lines = list(self._lines)
        self._lines.clear()
        return lines

    def close(self) -> None:
        self.feed.unsubscribe(self)


class EventFeed:
    """Every decision and event of a graph's pipelines, for subscriptions."""

    def __init__(self, device: str, counters: Counters, max_subscribers: int = 8) -> None:
        self.device = device
        self.counters = counters
        counters.declare("watch_clients_dropped", {"reason": DROP_REASONS})
        self.max_subscribers = max_subscribers
        self._subscriptions: list[Subscription] = []
        self._recent: deque[str] = deque(maxlen=_RECENT_IDS)

    @property
    def subscriptions(self) -> int:
        return len(self._subscriptions)

    def subscribe(self, decisions: Interest = "anomalies", turbine: str | None = None,
                  limit: int = 1000) -> Subscription:
        """A new subscription; :class:`FeedFull` beyond ``max_subscribers``."""
        if len(self._subscriptions) >= self.max_subscribers:
            raise FeedFull(f"{self.max_subscribers} watchers already")
        subscription = Subscription(self, decisions, turbine, limit)
        self._subscriptions = [*self._subscriptions, subscription]
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        # A new list, never edited in place: a round may be iterating the old one.
        self._subscriptions = [s for s in self._subscriptions if s is not subscription]

    # -- what the graph hands the feed ----------------------------------------------------

    def on_round(self, round: Round) -> None:
        subscriptions = self._subscriptions
        if not subscriptions:
            return
        wanted = [s for s in subscriptions if s.decisions != "none"]
        if not wanted:
            return
        every = any(s.decisions == "all" for s in wanted)
        decisions = round.decisions if every else [
            d for d in round.decisions if True in d.anomalous]
        if not decisions:
            return
        features = round.features
        thresholds = per_feature(features, round.thresholds)
        for decision in decisions:
            line = None
            for subscription in wanted:
                if (subscription.decisions == "anomalies" and not decision.is_anomalous) \
                        or not subscription.wants(decision.turbine):
                    continue
                if line is None:
                    line = orjson.dumps(decision_record(
                        decision, self.device, features, thresholds)) + b"\n"
                self._offer(subscription, line)

    def on_event(self, event: Event) -> None:
        """A pipeline's sensor event (stale, recovered)."""
        self._publish(event)

    def on_actuator_event(self, event: Event) -> None:
        """An event an actuator binding was handed: its alarms and clears (its sensor
        events are the pipeline's, which the feed has from :meth:`on_event`)."""
        if event.kind in ("alarm", "clear"):
            self._publish(event)

    def _publish(self, event: Event) -> None:
        subscriptions = self._subscriptions
        if not subscriptions:
            return
        payload = alarm_payload(event, self.device)
        if payload["id"] in self._recent:
            return  # raised alike by another actuator's tracker
        self._recent.append(payload["id"])
        line = None
        for subscription in subscriptions:
            if subscription.wants(event.turbine):
                if line is None:
                    try:
                        line = dumps(payload) + b"\n"
                    except (TypeError, ValueError):
                        return  # a plugin's odd detail: the actuators say so themselves
                self._offer(subscription, line)

    def _offer(self, subscription: Subscription, line: bytes) -> None:
        if not subscription.offer(line) and subscription in self._subscriptions:
            self.counters.inc("watch_clients_dropped", reason="too_slow")
            self.unsubscribe(subscription)
