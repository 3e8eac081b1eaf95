"""The decision log (``log.decisions``): a pipeline subscriber that writes decisions to
the daemon's log, one ``decision`` line (info) per turbine per round.

``all`` logs every decision; ``anomalies`` (the default) the anomalous ones, at most
:data:`MAX_ANOMALY_LINES_PER_S` lines a second per pipeline and then one
``decisions_unlogged`` line a second with the count, so a farm that is anomalous all at
once (a model that does not fit it) cannot flood the journal. Nothing is formatted
unless it is logged: with ``anomalies`` a round of healthy decisions costs one membership
test per decision, and below the info level nothing at all past that.
"""

from __future__ import annotations

import logging
from typing import Literal

import structlog

from edged.plugin.events import Event, Round
from edged.watch.records import scores_text

log = structlog.get_logger("edged.decisions")

#: Anomalous decisions logged per second per pipeline (log.decisions: anomalies).
MAX_ANOMALY_LINES_PER_S = 50


class DecisionLog:
    """Logs one pipeline's decisions (a subscriber of that pipeline)."""

    def __init__(self, mode: Literal["anomalies", "all"],
                 per_second: int = MAX_ANOMALY_LINES_PER_S) -> None:
        self.every = mode == "all"
        self.per_second = per_second
        self._second = -1  # the monotonic second the count is for
        self._logged = 0
        self._unlogged = 0

    def on_round(self, round: Round) -> None:
        if self._unlogged and int(round.monotonic) != self._second:
            self._flush(round.pipeline)
        # `True in` a tuple of bools: one C-level scan per decision, nothing formatted.
        decisions = round.decisions if self.every else [
            d for d in round.decisions if True in d.anomalous]
        if not decisions or not log.is_enabled_for(logging.INFO):
            return
        if not self.every:
            decisions = self._within_cap(decisions, round)
        features, thresholds = round.features, round.thresholds
        for d in decisions:
            log.info("decision", pipeline=d.pipeline, turbine=d.turbine,
                     anomalous=d.is_anomalous,
                     groups=[g for g, flagged in d.groups.items() if flagged],
                     primary=d.primary, scores=scores_text(d, features, thresholds),
                     model=f"{d.model.name}/{d.model.version}", rows=d.rows)

    def _within_cap(self, decisions, round: Round):
        second = int(round.monotonic)
        if second != self._second:
            self._second, self._logged = second, 0
        room = self.per_second - self._logged
        if len(decisions) > room:
            self._unlogged += len(decisions) - max(room, 0)
            decisions = decisions[:max(room, 0)]
        self._logged += len(decisions)
        return decisions

    def _flush(self, pipeline: str) -> None:
        log.info("decisions_unlogged", pipeline=pipeline, anomalous=self._unlogged,
                 per_second=self.per_second)
        self._unlogged = 0

    def on_event(self, event: Event) -> None:
        pass  # sensor events: the pipeline logs them itself
