"""The device's health as one snapshot: what a heartbeat carries to the cloud, what the
thing's named shadow keeps, and what the local Prometheus endpoint serves.

Everything is read from the running pipelines and the daemon's :class:`Counters` when a
report is asked for, so the heartbeat, the shadow and Prometheus never count anything
twice and the decision path pays only for its counters and one latency store per round.
The schema is documented in docs/health.md; ``SCHEMA`` changes when a field changes
meaning or goes away (new fields may appear without it).
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import structlog

from edged.base.durable import makedirs_durably, write_durably
from edged.base.metrics import Counters
from edged.config.cloud import STALEST

if TYPE_CHECKING:
    from edged.runtime.pipeline import Pipeline


class BudgetUsage(Protocol):
    """The data budget as the report sees it (edged.cloud.budget.DataBudget)."""

    def usage(self) -> dict[str, Any]: ...

log = structlog.get_logger("edged.health.report")

SCHEMA = 1
#: AWS IoT keeps at most 8 KB of state in a shadow document; the reported state is kept
#: well under it (see :meth:`Health.shadow_state`).
SHADOW_STATE_LIMIT = 6 * 1024


def daemon_version() -> str:
    try:
        return metadata.version("edged")
    except metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


# One start per daemon, not per graph: a reload builds a new graph with the same
# Counters (the supervisor keeps them), so keying on them makes a reload neither a
# restart nor a reset of the uptime.
_STARTS: weakref.WeakKeyDictionary[Counters, tuple[int, float, float]] = (
    weakref.WeakKeyDictionary())


def record_start(state_dir: Path) -> int:
    """Add one to ``<state_dir>/health/starts`` and return the new count (blocking)."""
    directory = state_dir / "health"
    makedirs_durably(directory, fsync=True)
    path = directory / "starts"
    try:
        with open(path, "rb") as f:
            starts = int(f.read(32).strip() or 0)
    except (FileNotFoundError, ValueError):
        starts = 0  # a torn or missing file starts the count again
    starts += 1
    # On a full disk this fails and removes its temporary file; the caller goes on.
    write_durably(path, [f"{starts}\n".encode()], fsync=True)
    return starts


class Health:
    """Health reports of one daemon, read from its pipelines and counters.

    Entered as a component (the graph does it): the start is recorded then, once per
    daemon. ``spool`` is the hook for the capture spools: a callable returning
    ``{"depth": ..., "bytes": ..., "dropped": ..., "refusing": ...}``; None (no
    capture) reports ``"spool": null``.
    ``budget`` is the daemon's :class:`edged.cloud.budget.DataBudget` (``cloud.data_budget``),
    whose usage the report carries; None reports ``"budget": null``.
    """

    def __init__(self, pipelines: Mapping[str, Pipeline], counters: Counters,
                 state_dir: Path, *, device: str, thing: str | None = None,
                 stalest: int = STALEST, budget: BudgetUsage | None = None) -> None:
        self.pipelines = pipelines
        self.counters = counters
        self.state_dir = Path(state_dir)
        self.device = device
        self.thing = thing or device
        self.stalest = stalest
        self.version = daemon_version()
        self.spool: Callable[[], dict[str, int] | None] | None = None
        # The captures' open sketch hour by pipeline (edged.capture.sketches); None: no
        # capture reports ``"sketch": null``.
        self.sketch: Callable[[], dict[str, Any] | None] | None = None
        self.budget = budget
        self.starts = 0
        self._started = time.monotonic()
        self.started_at = time.time()

    async def __aenter__(self) -> Health:
        known = _STARTS.get(self.counters)
        if known is None:
            try:
                starts = await asyncio.to_thread(record_start, self.state_dir)
            except OSError as exc:  # a read-only state dir must not stop the daemon
                log.warning("health_starts_unrecorded", error=repr(exc))
                starts = 0
            known = (starts, time.monotonic(), time.time())
            _STARTS[self.counters] = known
        self.starts, self._started, self.started_at = known
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    def report(self) -> dict[str, Any]:
        """The full report (docs/health.md): a JSON-serialisable dict."""
        now = time.monotonic()
        counters = self.counters
        pipelines: dict[str, Any] = {}
        ages: list[np.ndarray] = []
        owners: list[tuple[str, list[str]]] = []
        for name, pipeline in self.pipelines.items():
            model = pipeline.backend.model
            known = len(pipeline.buffers.names)
            age = now - pipeline.buffers.last_seen[:known]
            latency = pipeline.latency.percentiles()
            pipelines[name] = {
                "model": model.name,
                "version": model.version,
                "decisions": counters.get("decisions", pipeline=name),
                "anomalous_decisions": counters.get("anomalous_decisions", pipeline=name),
                "rounds_failed": counters.get("rounds_failed", pipeline=name),
                "latency_ms": None if latency is None else {
                    f"p{round(q * 100)}": round(v * 1000, 3) for q, v in latency.items()},
                "rounds": pipeline.latency.recorded,
                "turbines": known,
                "stale": int((age > pipeline.spec.stale_after_s).sum()),
                "stalest_age_s": round(float(age.max()), 3) if known else None,
            }
            ages.append(age)
            owners.append((name, pipeline.buffers.names))
        total = sum(len(a) for a in ages)
        return {
            "schema": SCHEMA,
            "device": self.device,
            "thing": self.thing,
            "time": round(time.time(), 3),
            "version": self.version,
            "uptime_s": round(now - self._started, 3),
            "started_at": round(self.started_at, 3),
            "starts": self.starts,
            "pipelines": pipelines,
            "turbines": {"count": total,
                         "stalest": self._stalest(ages, owners) if total else []},
            "spool": self.spool() if self.spool is not None else None,
            "sketch": self.sketch() if self.sketch is not None else None,
            "budget": self.budget.usage() if self.budget is not None else None,
            "jobs": {"finished": {sample.labels.get("status", ""): sample.value
                                  for sample in counters.samples("jobs_finished")}},
            "counters": counters.snapshot(),
        }

    def _stalest(self, ages: list[np.ndarray], owners: list[tuple[str, list[str]]]
                 ) -> list[dict[str, Any]]:
        """The ``stalest`` turbines over every pipeline, oldest sample first."""
        every = np.concatenate(ages)
        keep = min(self.stalest, len(every))
        if keep == 0:
            return []
        top = np.argpartition(-every, keep - 1)[:keep] if keep < len(every) \
            else np.arange(len(every))
        top = top[np.argsort(-every[top], kind="stable")]
        starts = np.cumsum([0] + [len(a) for a in ages])
        listed = []
        for index in top.tolist():
            which = int(np.searchsorted(starts, index, side="right")) - 1
            pipeline, names = owners[which]
            listed.append({"pipeline": pipeline, "turbine": names[index - starts[which]],
                           "age_s": round(float(every[index]), 3)})
        return listed

    @staticmethod
    def shadow_state(report: Mapping[str, Any]) -> dict[str, Any]:
        """The compact summary kept in the named shadow's ``reported`` state: figures per
        pipeline, never per turbine, so it stays far below the shadow's 8 KB."""
        state: dict[str, Any] = {
            "schema": report["schema"],
            "version": report["version"],
            "time": report["time"],
            "uptime_s": round(report["uptime_s"]),
            "starts": report["starts"],
            "turbines": report["turbines"]["count"],
            "stalest_age_s": (report["turbines"]["stalest"] or [{}])[0].get("age_s"),
            "spool": report["spool"],
            "budget": _budget_summary(report.get("budget")),
            "pipelines": {
                name: {"model": p["model"], "version": p["version"],
                       "decisions": p["decisions"],
                       "anomalous_decisions": p["anomalous_decisions"],
                       "p95_ms": (p["latency_ms"] or {}).get("p95"),
                       "turbines": p["turbines"], "stale": p["stale"]}
                for name, p in report["pipelines"].items()},
        }
        if len(to_json(state)) > SHADOW_STATE_LIMIT:  # hundreds of pipelines: totals only
            pipelines = state.pop("pipelines").values()
            state["pipelines_count"] = len(pipelines)
            state["decisions"] = sum(p["decisions"] for p in pipelines)
            state["anomalous_decisions"] = sum(p["anomalous_decisions"] for p in pipelines)
        return state


def _budget_summary(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The shadow's share of the budget figures: today's bytes, not the ceilings."""
    if usage is None:
        return None
    return {"day": usage["day"], "budget_bytes": usage["budget_bytes"],
            "used_bytes": usage["used_bytes"], "over_bytes": usage["over_bytes"],
            "deferred": usage["deferred"]}


def to_json(value: Any) -> bytes:
    """Compact JSON, as sent."""
    return json.dumps(value, separators=(",", ":")).encode()
