"""A bounded record of recent durations: the inference latency a health report shows."""

from __future__ import annotations

import numpy as np


class LatencyRing:
    """The last ``size`` durations (seconds) in a fixed numpy ring.

    Recording is one array store and one integer add, so it can sit on the decision
    path; percentiles are computed only when a report asks for them.
    """

    def __init__(self, size: int = 1024) -> None:
        self._values = np.zeros(size)
        self.recorded = 0  # durations ever recorded

    def record(self, seconds: float) -> None:
        self._values[self.recorded % len(self._values)] = seconds
        self.recorded += 1

    def percentiles(self, quantiles: tuple[float, ...] = (0.5, 0.95, 0.99)
                    ) -> dict[float, float] | None:
        """Quantile -> seconds over the durations held; None before the first."""
        held = min(self.recorded, len(self._values))
        if not held:
            return None
        values = np.quantile(self._values[:held], quantiles)
        return dict(zip(quantiles, values.tolist(), strict=True))
