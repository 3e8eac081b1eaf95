"""Counters the runtime keeps: cheap to bump on the hot path, read as a snapshot."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import NamedTuple

#: A counter's labels as data: ``(label, value)`` pairs sorted by label.
Labels = tuple[tuple[str, str], ...]


class Sample(NamedTuple):
    """One counter: its name, its labels and its value."""

    name: str
    labels: dict[str, str]
    value: int


def text_key(name: str, labels: Labels) -> str:
    """A counter's text form, ``rows_rejected{pipeline=a,reason=nan}`` (labels sorted).

    The ``counters`` map of the health report, the heartbeat and the ``stats`` log line is
    keyed by this (docs/health.md, a public contract): the only place it is written, and
    nothing reads it back.
    """
    if not labels:
        return name
    return f"{name}{{{','.join(f'{k}={v}' for k, v in labels)}}}"


def _labels(labels: Mapping[str, str]) -> Labels:
    # Sorted, so that the order of keyword arguments names the same counter.
    return tuple(sorted(labels.items())) if labels else ()


class Counters:
    """Named counters with optional labels, e.g. ``rows_rejected{reason=nan}``.

    Keyed by ``(name, labels)`` as data, so readers get names and labels back without
    parsing text; label values are strings. An increment is one dict update: it can sit
    on the per-reading path.

    Threads: the event loop owns the counters, but a worker thread (a reload's graph
    build) may count too. Under the GIL each increment is one read and one write of the
    dict, so a concurrent increment of the *same* counter can be lost (never a crash); the
    readers copy the dict in one C call first, so a thread adding a counter meanwhile
    never breaks them.
    """

    def __init__(self) -> None:
        self._values: dict[tuple[str, Labels], int] = {}
        # Counters known before they count: listed at 0 by samples() (so /metrics).
        self._declared: dict[tuple[str, Labels], None] = {}

    def declare(self, name: str, labels: Mapping[str, Iterable[str]] | None = None,
                **fixed: str) -> None:
        """Make ``name`` known before it is counted, at 0: with each combination of the
        values ``labels`` lists (``{"reason": ROW_REASONS}``), each with the ``fixed``
        labels. Prometheus' convention: a scrape tells a counter that is zero from one
        that is not wired. Declare where the counter is counted, from the constants its
        count sites use (a test holds every count site to its declaration). Only
        :meth:`samples` lists declared counters; the reports' snapshot lists what was
        counted."""
        names = list((labels or {}).keys())
        for values in itertools.product(*(list(v) for v in (labels or {}).values())):
            key = (name, _labels({**fixed, **dict(zip(names, values, strict=True))}))
            self._declared.setdefault(key, None)

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        key = (name, _labels(labels))
        self._values[key] = self._values.get(key, 0) + amount

    def get(self, name: str, **labels: str) -> int:
        """The counter of exactly these labels."""
        return self._values.get((name, _labels(labels)), 0)

    def total(self, name: str, **labels: str) -> int:
        """Sum over every counter of ``name`` that carries ``labels`` (and maybe more)."""
        wanted = labels.items()
        return sum(value for (n, have), value in self._values.copy().items()
                   if n == name and wanted <= dict(have).items())

    def samples(self, name: str | None = None) -> list[Sample]:
        """Every counter (of ``name``, if given) as data, in the order of
        :meth:`snapshot`'s keys; a declared counter not counted yet at 0."""
        return [Sample(n, dict(labels), value)
                for _, n, labels, value in self._sorted(name, declared=True)]

    def snapshot(self) -> dict[str, int]:
        """Every counter by its :func:`text_key`, sorted by that key."""
        texts: dict[str, int] = {}
        for text, _, _, value in self._sorted():
            # Label values holding "," or "=" can spell another counter's key: summed, as
            # when the key was the text itself.
            texts[text] = texts.get(text, 0) + value
        return texts

    def _sorted(self, only: str | None = None, declared: bool = False
                ) -> list[tuple[str, str, Labels, int]]:
        # Sorted by the text key, as the reports have always listed them.
        values = self._values.copy()
        if declared:
            values = {**dict.fromkeys(self._declared.copy(), 0), **values}
        return sorted((text_key(name, labels), name, labels, value)
                      for (name, labels), value in values.items()
                      if only is None or name == only)
