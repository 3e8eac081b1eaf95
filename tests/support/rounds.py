"""A pipeline's :class:`~edged.plugin.events.Round` built by hand, for tests that drive a
subscriber (an actuator binding, a capture) without a pipeline."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from edged.plugin.events import Decision, Round


def round_of(decisions: Sequence[Decision], features: Sequence[str],
             thresholds: Sequence[float], *, monotonic: float | None = None,
             **arrays: Any) -> Round:
    """The round of ``decisions`` as their pipeline would hand it over: named and timed
    by its first decision (an empty round: "p1", now), at monotonic time ``monotonic``
    (default: now); ``arrays``: ``window``, ``raw``, ``inputs``, ``model_io``."""
    first = decisions[0] if decisions else None
    return Round(pipeline=first.pipeline if first else "p1", decisions=decisions,
                 features=features, thresholds=thresholds,
                 time=first.time if first else time.time(),
                 monotonic=time.monotonic() if monotonic is None else monotonic, **arrays)
