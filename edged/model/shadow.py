"""Shadow gate: a candidate model scores the live model's own rounds before it may serve.

The pipeline hands each round's histories and live scores to a ``ShadowTrial`` after the
round's decisions are published (``Pipeline.run_shadow``); the trial runs the candidate on
the same histories in the pipeline's worker thread and keeps, per turbine decision, the
mean reconstruction error and whether any feature was anomalous, for live and candidate
alike. After the configured number of decisions it compares the two: the anomaly rates
must stay within ``max_anomaly_rate_delta`` of each other, and the two error samples
within ``max_error_ks`` (two-sample Kolmogorov-Smirnov distance). Design:
docs/model-store.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import threading
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import structlog

from edged.model.bundle.errors import BundleError
from edged.plugin.components import Preprocessor, Scores

log = structlog.get_logger("edged.model")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_REASON_MAX = 1024  # an IoT Jobs statusDetails value


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov distance: the largest gap between the two
    samples' empirical distribution functions (0: the same, 1: disjoint)."""
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    if not len(a) or not len(b):
        return math.nan
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


@dataclass(frozen=True)
class ShadowLimits:
    """How far a candidate may depart from the live model and still be promoted."""

    #: |candidate rate - live rate|; rate = share of decisions with any anomalous feature.
    max_anomaly_rate_delta: float = 0.05
    #: KS distance between live and candidate per-decision mean reconstruction errors.
    max_error_ks: float = 0.3

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ShadowLimits:
        """The manifest's optional ``shadow`` object; missing keys keep their defaults.
        Anything else than numbers in [0, 1] under the two known keys is ``malformed``."""
        raw = manifest.get("shadow")
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise BundleError("malformed", f"manifest 'shadow' must be an object, got "
                              f"{type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BundleError("malformed", f"manifest 'shadow' has unknown keys {unknown}")
        values: dict[str, float] = {}
        for key, value in raw.items():
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not 0.0 <= value <= 1.0):
                raise BundleError("malformed", f"manifest 'shadow.{key}' must be a number "
                                  f"from 0 to 1, got {value!r}")
            values[key] = float(value)
        return cls(**values)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


@dataclass(frozen=True)
class ShadowReport:
    """The figures of one shadow trial and its verdict."""

    decisions: int
    live_anomaly_rate: float
    candidate_anomaly_rate: float
    anomaly_rate_delta: float
    error_ks: float
    live_error_p50: float
    live_error_p95: float
    candidate_error_p50: float
    candidate_error_p95: float
    limits: ShadowLimits
    passed: bool
    reason: str | None  # why it did not pass; None when it did

    def details(self) -> dict[str, str]:
        """The report as IoT Jobs ``statusDetails``: flat, string values, 4 significant
        digits ("nan" for a figure without decisions)."""
        out = {
            "shadow:passed": "true" if self.passed else "false",
            "shadow:decisions": str(self.decisions),
            "shadow:liveAnomalyRate": _fmt(self.live_anomaly_rate),
            "shadow:candidateAnomalyRate": _fmt(self.candidate_anomaly_rate),
            "shadow:anomalyRateDelta": _fmt(self.anomaly_rate_delta),
            "shadow:maxAnomalyRateDelta": _fmt(self.limits.max_anomaly_rate_delta),
            "shadow:errorKs": _fmt(self.error_ks),
            "shadow:maxErrorKs": _fmt(self.limits.max_error_ks),
            "shadow:liveErrorP50": _fmt(self.live_error_p50),
            "shadow:liveErrorP95": _fmt(self.live_error_p95),
            "shadow:candidateErrorP50": _fmt(self.candidate_error_p50),
            "shadow:candidateErrorP95": _fmt(self.candidate_error_p95),
        }
        if self.reason:
            out["shadow:reason"] = _CONTROL.sub(" ", self.reason)[:_REASON_MAX]
        return out


class ShadowTrial:
    """One candidate in shadow for ``decisions`` turbine decisions.

    ``observe`` runs in the pipeline's worker thread; ``wait`` and ``abort`` on the event
    loop. Memory is fixed: four arrays of ``decisions`` entries, allocated up front.
    """

    def __init__(self, preprocessor: Preprocessor, backend: Any, decisions: int,
                 limits: ShadowLimits) -> None:
        if decisions < 1:
            raise ValueError(f"a shadow trial needs at least 1 decision, got {decisions}")
        self.preprocessor = preprocessor
        self.backend = backend
        self.decisions = decisions
        self.limits = limits
        self._live_error = np.zeros(decisions)
        self._candidate_error = np.zeros(decisions)
        self._live_anomalous = np.zeros(decisions, dtype=bool)
        self._candidate_anomalous = np.zeros(decisions, dtype=bool)
        self._seen = 0
        self._observing = threading.Lock()  # one observe at a time, whatever the executor
        self._lock = threading.Lock()  # guards _seen, the arrays' filled part, _report
        self._report: ShadowReport | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    @property
    def report(self) -> ShadowReport | None:
        """The verdict once the trial has ended, else None."""
        return self._report

    def observe(self, history: np.ndarray, live: Scores) -> None:
        """One round: ``history`` (turbines, rows, features) and the live model's scores
        of it. Blocking; never raises (a failing candidate fails the trial)."""
        with self._observing:
            if self._report is not None:
                return
            try:
                # The whole round in one batch, as the live model ran it: a model given
                # other batch sizes may round differently.
                x = self.preprocessor.model_input(history)
                scores = self.preprocessor.score(x, self.backend.predict(x), len(history))
                if np.shape(scores.values) != np.shape(live.values):
                    raise ValueError(f"candidate scores have shape "
                                     f"{np.shape(scores.values)}, live {np.shape(live.values)}")
            except Exception as exc:
                self.abort(f"candidate failed: {type(exc).__name__}: {exc}")
                return
            with self._lock:
                if self._report is not None:
                    return
                start = self._seen
                take = min(len(history), self.decisions - start)
                end = start + take
                self._live_error[start:end] = live.values[:take].mean(axis=1)
                self._candidate_error[start:end] = np.asarray(scores.values)[:take].mean(axis=1)
                self._live_anomalous[start:end] = live.anomalous[:take].any(axis=1)
                self._candidate_anomalous[start:end] = np.asarray(
                    scores.anomalous)[:take].any(axis=1)
                self._seen = end
                if end < self.decisions:
                    return
                waiters = self._end(None)
            self._notify(waiters)

    def abort(self, reason: str) -> None:
        """End the trial now as failed with ``reason`` (no-op once ended). Thread-safe."""
        with self._lock:
            if self._report is not None:
                return
            waiters = self._end(reason)
        self._notify(waiters)

    async def wait(self) -> ShadowReport:
        """The report, once ``decisions`` decisions are in or the trial was aborted."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ShadowReport] = loop.create_future()
        with self._lock:
            if self._report is not None:
                return self._report
            self._waiters.append((loop, future))
        try:
            return await future
        finally:
            with self._lock:
                if (loop, future) in self._waiters:
                    self._waiters.remove((loop, future))

    def _end(self, failure: str | None) -> list[tuple[asyncio.AbstractEventLoop,
                                                      asyncio.Future]]:
        # Called with _lock held: the verdict on what is in, and who waits for it.
        n = self._seen
        live_err, cand_err = self._live_error[:n], self._candidate_error[:n]
        nan = math.nan
        live_rate = float(self._live_anomalous[:n].mean()) if n else nan
        cand_rate = float(self._candidate_anomalous[:n].mean()) if n else nan
        delta = abs(cand_rate - live_rate)
        ks = ks_distance(live_err, cand_err)
        live_p = np.percentile(live_err, [50, 95]).tolist() if n else [nan, nan]
        cand_p = np.percentile(cand_err, [50, 95]).tolist() if n else [nan, nan]
        reasons = [failure] if failure else []
        limits = self.limits
        if not failure:
            if not delta <= limits.max_anomaly_rate_delta:
                reasons.append(f"anomaly rate {cand_rate:.4g} vs {live_rate:.4g} "
                               f"(limit {limits.max_anomaly_rate_delta:.4g})")
            if not ks <= limits.max_error_ks:
                reasons.append(f"error distribution KS {ks:.4g} "
                               f"(limit {limits.max_error_ks:.4g})")
        self._report = ShadowReport(
            decisions=n, live_anomaly_rate=live_rate, candidate_anomaly_rate=cand_rate,
            anomaly_rate_delta=delta, error_ks=ks,
            live_error_p50=live_p[0], live_error_p95=live_p[1],
            candidate_error_p50=cand_p[0], candidate_error_p95=cand_p[1],
            limits=limits, passed=not reasons, reason="; ".join(reasons) or None)
        waiters, self._waiters = self._waiters, []
        return waiters

    def _notify(self, waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]) -> None:
        report = self._report
        assert report is not None
        model = getattr(self.backend, "model", None)
        log.info("shadow_trial_ended", model=getattr(model, "name", None),
                 version=getattr(model, "version", None), passed=report.passed,
                 decisions=report.decisions, reason=report.reason,
                 anomaly_rate_delta=report.anomaly_rate_delta, error_ks=report.error_ks)
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there
                loop.call_soon_threadsafe(_resolve, future, report)


def _resolve(future: asyncio.Future, report: ShadowReport) -> None:
    if not future.done():
        future.set_result(report)
