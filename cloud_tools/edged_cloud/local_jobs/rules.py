"""AWS IoT Jobs' documented rollout and abort rules, as the local jobs service applies them.

Rollout (``jobExecutionsRolloutConfig.exponentialRate``): at most ``baseRatePerMinute``
things are notified in a minute; each time ``rateIncreaseCriteria`` is met again (that many
more things notified, or succeeded) the rate is multiplied by ``incrementFactor``, never
above ``maximumPerMinute``. A constant ``maximumPerMinute`` alone is a flat rate; no
config notifies every thing at once.

Abort (``abortConfig.criteriaList``): each criterion on its own; once at least
``minNumberOfExecutedThings`` executions have ended, a share of at least
``thresholdPercentage`` of them ended in ``failureType`` (ALL: FAILED, REJECTED or
TIMED_OUT) cancels the job (``action`` CANCEL, the only one AWS has).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENDED = ("SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT")
FAILURES = {"FAILED": ("FAILED",), "REJECTED": ("REJECTED",), "TIMED_OUT": ("TIMED_OUT",),
            "ALL": ("FAILED", "REJECTED", "TIMED_OUT")}
UNLIMITED = 10**9


@dataclass
class Rate:
    """How many things the rollout may notify now; ``minute_s``: how long a minute lasts
    (tests and the demo compress it)."""

    config: Mapping[str, Any] | None
    minute_s: float = 60.0
    rate: float = field(init=False)
    _window_start: float | None = field(default=None, init=False)
    _sent_in_window: int = field(default=0, init=False)
    _counted_at_increase: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        exponential = (self.config or {}).get("exponentialRate")
        maximum = (self.config or {}).get("maximumPerMinute")
        self.maximum = maximum or UNLIMITED
        self.rate = exponential["baseRatePerMinute"] if exponential else self.maximum
        self.exponential = exponential

    def allowed(self, now: float, notified: int, succeeded: int) -> int:
        """How many more things may be notified at ``now``."""
        if self.exponential:
            criteria = self.exponential.get("rateIncreaseCriteria", {})
            counted, step = ((notified, criteria["numberOfNotifiedThings"])
                             if "numberOfNotifiedThings" in criteria else
                             (succeeded, criteria.get("numberOfSucceededThings", UNLIMITED)))
            while counted - self._counted_at_increase >= step:
                self._counted_at_increase += step
                self.rate = min(self.rate * self.exponential["incrementFactor"], self.maximum)
        if self._window_start is None or now - self._window_start >= self.minute_s:
            self._window_start, self._sent_in_window = now, 0
        return max(0, int(self.rate) - self._sent_in_window)

    def sent(self, count: int) -> None:
        self._sent_in_window += count


def abort_reason(config: Mapping[str, Any] | None, statuses: list[str]) -> str | None:
    """Why the job must be canceled by its abort criteria, or None."""
    ended = [s for s in statuses if s in ENDED]
    for criterion in (config or {}).get("criteriaList", []):
        if len(ended) < criterion["minNumberOfExecutedThings"]:
            continue
        failed = sum(1 for s in ended if s in FAILURES[criterion["failureType"]])
        share = 100.0 * failed / len(ended)
        if share >= criterion["thresholdPercentage"]:
            return (f"{failed} of {len(ended)} executions ended {criterion['failureType']} "
                    f"({share:.0f} % >= {criterion['thresholdPercentage']} %)")
    return None
