"""Counters the runtime keeps: cheap to bump on the hot path, read as a snapshot."""

from __future__ import annotations

from collections import Counter


class Counters:
    """Named counters with optional labels, e.g. ``rows_rejected{reason=nan}``.

    A plain ``collections.Counter`` keyed by string: increments cost a dict update, so
    they can sit on the per-reading path.
    """

    def __init__(self) -> None:
        self._values: Counter[str] = Counter()

    @staticmethod
    def key(name: str, **labels: str) -> str:
        if not labels:
            return name
        inner = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}}"

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        self._values[self.key(name, **labels)] += amount

    def get(self, name: str, **labels: str) -> int:
        return self._values.get(self.key(name, **labels), 0)

    def total(self, name: str) -> int:
        """Sum over every label combination of ``name``."""
        return sum(v for k, v in self._values.items() if k == name or k.startswith(name + "{"))

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._values.items()))
