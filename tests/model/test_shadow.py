"""The shadow gate (a candidate beside the live model on live data) and the two-step swap
(prepare_swap, commit_swap), on the real pipeline with windturbine-v1 and the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import threading

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# The swap tests' helpers: a store-backed backend, the preprocessor for a manifest, a
# simulator feed and a subscriber that records every round.
from test_model_swap import BUILTIN, COLUMNS, Recorder, feed, stage_for, store_backend

from edged.base.metrics import Counters
from edged.cloud.jobs.protocol import STATUS_KEY, check_status_details
from edged.config import PipelineSpec
from edged.model.bundle import TrustStore, build_bundle, extract_bundle, verify_bundle
from edged.model.bundle.errors import BundleError
from edged.model.errors import SwapError
from edged.model.shadow import ShadowLimits, ShadowReport, ShadowTrial, ks_distance
from edged.model.store import ModelStore
from edged.plugin.components import Readings
from edged.runtime.pipeline import Pipeline
from edged.runtime.swap import commit_swap, prepare_swap, swap_model
from edged.windturbine.simulator import WindFarm

TURBINES = 8
INTERVAL = 0.1  # with 8 turbines: about 80 decisions a second
DECISIONS = 40


@pytest.fixture
def store(tmp_path):
    store = ModelStore.for_model(tmp_path / "state", "windturbine")
    store.seed(BUILTIN)
    return store


def make_pipeline(backend) -> Pipeline:
    spec = PipelineSpec(inputs=["farm"], preprocessor={"type": "windturbine"},
                        inference={"type": "onnx"}, interval_s=INTERVAL)
    pipeline = Pipeline("turbines", spec, stage_for(backend.manifest), backend, Counters())
    pipeline.subscribers.append(Recorder())
    return pipeline


@contextlib.asynccontextmanager
async def running(state_dir):
    """A pipeline serving the store's current model, fed and deciding."""
    backend = store_backend(state_dir)
    async with backend:
        pipeline = make_pipeline(backend)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(feed(pipeline, WindFarm(turbines=TURBINES, seed=3))),
                     tg.create_task(pipeline.decide_loop())]
            try:
                yield pipeline
            finally:
                for task in tasks:
                    task.cancel()


def published(pipeline: Pipeline) -> int:
    return sum(len(turbines) for _, turbines, *_ in pipeline.subscribers[0].rounds)


def fill(pipeline: Pipeline, seed: int = 3) -> None:
    """A full history for every turbine, so that decide_once decides them all."""
    farm = WindFarm(turbines=TURBINES, seed=seed)
    rows = farm.ticks(500)[:, :, COLUMNS]
    pipeline.ingest([Readings(tuple(farm.turbine_ids) * 500,
                              rows.reshape(-1, len(COLUMNS)))])


def scaled(values: list[float], factor: float) -> list[float]:
    return [v * factor for v in values]


class Spy(ShadowTrial):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def observe(self, history, live) -> None:
        self.calls += 1
        super().observe(history, live)


# -- the gate on live data ---------------------------------------------------------------

async def test_an_identical_candidate_passes_and_is_committed(tmp_path, store, make_model):
    async with running(tmp_path / "state") as pipeline:
        candidate = await prepare_swap(pipeline, make_model(2), store)
        assert candidate.preprocessor is None  # same preprocessing: the pipeline's fits
        trial = ShadowTrial(candidate.preprocessor_for(pipeline), candidate.backend,
                            DECISIONS, ShadowLimits.from_manifest(candidate.backend.manifest))
        before = published(pipeline)
        report = await asyncio.wait_for(pipeline.run_shadow(trial), 10)
        during = published(pipeline) - before
        assert pipeline.shadow is None
        result = await commit_swap(pipeline, candidate, store)
        await asyncio.sleep(3 * INTERVAL)
        rounds = pipeline.subscribers[0].rounds

    assert report.passed and report.reason is None
    assert report.decisions == DECISIONS
    assert report.anomaly_rate_delta == 0 and report.error_ks == 0
    assert report.live_error_p50 == report.candidate_error_p50 > 0
    assert report.live_error_p95 == report.candidate_error_p95
    # Every observed round was published first, and deciding went on meanwhile.
    assert during >= DECISIONS
    assert (result.old.version, result.new.version) == (1, 2)
    assert pipeline.backend is candidate.backend and store.current().version == 2
    assert rounds[-1][2] == {2}
    details = check_status_details(report.details())
    assert details["shadow:passed"] == "true" and "shadow:reason" not in details
    assert details["shadow:decisions"] == str(DECISIONS)


async def test_thresholds_far_down_fail_on_the_anomaly_rate(tmp_path, store, make_model):
    thresholds = json.loads((BUILTIN / "manifest.json").read_text())[
        "preprocessing"]["thresholds"]
    async with running(tmp_path / "state") as pipeline:
        serving = pipeline.backend
        candidate = await prepare_swap(pipeline, make_model(2, thresholds=scaled(
            thresholds, 0.01)), store, build_preprocessor=stage_for)
        assert candidate.preprocessor is not None
        trial = ShadowTrial(candidate.preprocessor_for(pipeline), candidate.backend,
                            DECISIONS, ShadowLimits())
        report = await asyncio.wait_for(pipeline.run_shadow(trial), 10)
        await candidate.close()
        assert pipeline.backend is serving

    assert not report.passed
    assert (report.live_anomaly_rate, report.candidate_anomaly_rate) == (0.0, 1.0)
    assert report.reason == "anomaly rate 1 vs 0 (limit 0.05)"
    assert report.error_ks == 0  # thresholds do not change the errors
    details = check_status_details(report.details())
    assert details["shadow:passed"] == "false"
    assert details["shadow:liveAnomalyRate"] == "0"
    assert details["shadow:candidateAnomalyRate"] == "1"
    assert details["shadow:anomalyRateDelta"] == "1"
    assert details["shadow:maxAnomalyRateDelta"] == "0.05"
    assert details["shadow:reason"] == report.reason
    assert candidate.backend._session is None
    assert store.current().version == 1 and store.previous() is None


async def test_shifted_errors_fail_on_the_ks_distance(tmp_path, store, make_model):
    preprocessing = json.loads((BUILTIN / "manifest.json").read_text())["preprocessing"]
    mean = [m + s for m, s in zip(preprocessing["mean"], preprocessing["std"],
                                        strict=True)]
    async with running(tmp_path / "state") as pipeline:
        candidate = await prepare_swap(pipeline, make_model(2, mean=mean), store,
                                       build_preprocessor=stage_for)
        trial = ShadowTrial(candidate.preprocessor_for(pipeline), candidate.backend,
                            DECISIONS, ShadowLimits())
        report = await asyncio.wait_for(pipeline.run_shadow(trial), 10)
        await candidate.close()

    assert not report.passed
    assert report.anomaly_rate_delta <= 0.05, "only the errors move"
    assert report.error_ks > 0.3
    assert report.candidate_error_p50 > report.live_error_p50
    assert report.reason == f"error distribution KS {report.error_ks:.4g} (limit 0.3)"
    details = check_status_details(report.details())
    assert float(details["shadow:errorKs"]) == pytest.approx(report.error_ks, rel=1e-3)
    assert details["shadow:maxErrorKs"] == "0.3"


# -- the pipeline hook --------------------------------------------------------------------

async def test_a_round_is_published_before_the_candidate_runs(tmp_path, store):
    """decide_once returns, its decisions published, while the candidate still runs."""
    release = threading.Event()

    class Slow:
        def __init__(self, inner) -> None:
            self.inner, self.model = inner, inner.model

        def predict(self, x):
            assert release.wait(5)
            return self.inner.predict(x)

    backend = store_backend(tmp_path / "state")
    async with backend:
        pipeline = make_pipeline(backend)
        fill(pipeline)
        trial = ShadowTrial(pipeline.preprocessor, Slow(backend), TURBINES, ShadowLimits())
        shadowing = asyncio.create_task(pipeline.run_shadow(trial))
        await asyncio.sleep(0)
        decisions = await asyncio.wait_for(pipeline.decide_once(), 5)
        assert len(decisions) == TURBINES and published(pipeline) == TURBINES
        assert trial.report is None and not shadowing.done()
        release.set()
        report = await asyncio.wait_for(shadowing, 5)
    assert report.passed and report.decisions == TURBINES


async def test_decisions_cap_the_trial(tmp_path, store):
    backend = store_backend(tmp_path / "state")
    async with backend:
        pipeline = make_pipeline(backend)
        fill(pipeline)
        trial = ShadowTrial(pipeline.preprocessor, backend, 5, ShadowLimits())
        shadowing = asyncio.create_task(pipeline.run_shadow(trial))
        await asyncio.sleep(0)
        await pipeline.decide_once()  # 8 turbine decisions, one round
        report = await asyncio.wait_for(shadowing, 5)
    assert report.decisions == 5 and report.passed
    assert trial._live_error.shape == trial._candidate_error.shape == (5,)


async def test_a_failing_candidate_fails_the_trial(tmp_path, store):
    class Broken:
        model = None

        def predict(self, x):
            raise RuntimeError("boom\nsecond line")

    backend = store_backend(tmp_path / "state")
    async with backend:
        pipeline = make_pipeline(backend)
        fill(pipeline)
        trial = ShadowTrial(pipeline.preprocessor, Broken(), 100, ShadowLimits())
        shadowing = asyncio.create_task(pipeline.run_shadow(trial))
        await asyncio.sleep(0)
        decisions = await pipeline.decide_once()
        report = await asyncio.wait_for(shadowing, 5)
    assert len(decisions) == TURBINES, "the live round is unaffected"
    assert not report.passed and report.decisions == 0
    assert report.reason == "candidate failed: RuntimeError: boom\nsecond line"
    details = check_status_details(report.details())  # no control characters, "nan"s
    assert details["shadow:reason"] == "candidate failed: RuntimeError: boom second line"
    assert details["shadow:liveAnomalyRate"] == "nan"
    assert pipeline.shadow is None


async def test_cancelling_run_shadow_detaches_the_trial(tmp_path, store):
    async with running(tmp_path / "state") as pipeline:
        trial = Spy(pipeline.preprocessor, pipeline.backend, 10**6, ShadowLimits())
        shadowing = asyncio.create_task(pipeline.run_shadow(trial))
        await asyncio.sleep(0.4)
        assert pipeline.shadow is trial and trial.calls > 0
        shadowing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await shadowing
        assert pipeline.shadow is None
        await asyncio.sleep(0.1)  # an observation queued before the cancel may still run
        calls, seen = trial.calls, published(pipeline)
        await asyncio.sleep(0.4)
        assert published(pipeline) > seen, "the pipeline kept deciding"
        assert trial.calls == calls, "a detached trial is not fed"
    assert trial.report is not None and trial.report.reason == "shadow trial cancelled"
    assert not trial.report.passed


async def test_a_swap_during_the_trial_fails_it(tmp_path, store, make_model):
    async with running(tmp_path / "state") as pipeline:
        trial = Spy(pipeline.preprocessor, pipeline.backend, 10**6, ShadowLimits())
        shadowing = asyncio.create_task(pipeline.run_shadow(trial))
        await asyncio.sleep(0.3)
        await swap_model(pipeline, make_model(2), store)
        report = await asyncio.wait_for(shadowing, 5)
        assert pipeline.shadow is None
        await asyncio.sleep(0.1)
        calls = trial.calls
        await asyncio.sleep(0.3)
        assert trial.calls == calls, "the new model's rounds never reach the trial"
    assert not report.passed and report.reason == "model swapped during shadow"
    assert report.decisions > 0


async def test_one_trial_at_a_time(tmp_path, store):
    backend = store_backend(tmp_path / "state")
    async with backend:
        pipeline = make_pipeline(backend)
        first = ShadowTrial(pipeline.preprocessor, backend, 10, ShadowLimits())
        shadowing = asyncio.create_task(pipeline.run_shadow(first))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already runs a shadow trial"):
            await pipeline.run_shadow(ShadowTrial(pipeline.preprocessor, backend, 10,
                                                  ShadowLimits()))
        assert pipeline.shadow is first
        shadowing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await shadowing


# -- prepare and commit -------------------------------------------------------------------

async def test_prepare_then_close_changes_nothing(tmp_path, store, make_model):
    backend = store_backend(tmp_path / "state")
    async with backend:
        pipeline = make_pipeline(backend)
        stage = pipeline.preprocessor
        candidate = await prepare_swap(pipeline, make_model(2), store)
        assert candidate.backend._session is not None  # loaded and golden-checked
        assert pipeline.backend is backend and store.current().version == 1
        await candidate.close()
        await candidate.close()  # idempotent
        assert candidate.backend._session is None and candidate.state == "discarded"
        assert pipeline.backend is backend and pipeline.preprocessor is stage
        assert backend._session is not None
        with pytest.raises(SwapError, match="discarded"):
            await commit_swap(pipeline, candidate, store)
    assert store.current().version == 1 and store.previous() is None
    assert candidate.slot.name in {s.name for s in store.slots()}, "staged, unused"


async def test_prepare_then_commit_swaps(tmp_path, store, make_model):
    backend = store_backend(tmp_path / "state")
    async with backend:
        pipeline = make_pipeline(backend)
        fill(pipeline)
        candidate = await prepare_swap(pipeline, make_model(2, thresholds=[9.0] * 6), store,
                                       build_preprocessor=stage_for)
        assert (await pipeline.decide_once())[0].model.version == 1
        result = await commit_swap(pipeline, candidate, store)
        assert result.preprocessor_rebuilt and candidate.state == "committed"
        assert pipeline.backend is candidate.backend
        assert pipeline.preprocessor is candidate.preprocessor
        assert backend._session is None, "the old backend is closed"
        await candidate.close()  # committed: a no-op, the backend serves
        assert candidate.backend._session is not None
        fill(pipeline, seed=4)
        assert (await pipeline.decide_once())[0].model.version == 2
        with pytest.raises(SwapError, match="committed"):
            await commit_swap(pipeline, candidate, store)
    assert (store.current().version, store.previous().version) == (2, 1)


async def test_a_candidate_prepared_for_another_model_is_refused(tmp_path, store,
                                                                   make_model):
    backend = store_backend(tmp_path / "state")
    async with backend:
        pipeline = make_pipeline(backend)
        first = await prepare_swap(pipeline, make_model(2), store)
        second = await prepare_swap(pipeline, make_model(3), store)
        await commit_swap(pipeline, first, store)
        with pytest.raises(SwapError, match="swapped models since"):
            await commit_swap(pipeline, second, store)
        await second.close()
        assert pipeline.backend is first.backend
    assert store.current().version == 2


# -- limits, figures, details ------------------------------------------------------------

def test_limits_from_the_manifest():
    assert ShadowLimits.from_manifest({}) == ShadowLimits(0.05, 0.3)
    assert ShadowLimits.from_manifest({"shadow": None}) == ShadowLimits()
    assert ShadowLimits.from_manifest({"shadow": {}}) == ShadowLimits()
    assert ShadowLimits.from_manifest({"shadow": {"max_error_ks": 0.2}}) == ShadowLimits(
        0.05, 0.2)
    assert ShadowLimits.from_manifest(
        {"shadow": {"max_anomaly_rate_delta": 0, "max_error_ks": 1}}) == ShadowLimits(0, 1)


@pytest.mark.parametrize("shadow", [
    "strict", [0.1], {"max_error_ks": "0.2"}, {"max_error_ks": True},
    {"max_error_ks": 1.5}, {"max_anomaly_rate_delta": -0.1},
    {"max_anomaly_rate_delta": math.nan}, {"max_error_KS": 0.2},
])
def test_bad_limits_are_a_malformed_bundle(shadow):
    with pytest.raises(BundleError) as caught:
        ShadowLimits.from_manifest({"shadow": shadow})
    assert caught.value.reason == "malformed" and not caught.value.retryable


def test_ks_distance():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert ks_distance(a, a[::-1]) == 0
    assert ks_distance(a, a + 10) == 1
    assert ks_distance(a, a + 2) == 0.5
    assert ks_distance(np.array([1.0, 2.0]), np.array([1.5])) == 0.5
    assert math.isnan(ks_distance(a, np.array([])))


def test_details_fit_the_jobs_contract():
    report = ShadowReport(
        decisions=1234, live_anomaly_rate=0.0123456, candidate_anomaly_rate=0.3098765,
        anomaly_rate_delta=0.2975309, error_ks=0.123456789, live_error_p50=0.0212345,
        live_error_p95=0.0398765, candidate_error_p50=123456.789, candidate_error_p95=1e-7,
        limits=ShadowLimits(), passed=False, reason="anomaly rate 0.3099 vs 0.01235 "
        "(limit 0.05)\t" + "x" * 2000)
    details = report.details()
    assert all(STATUS_KEY.fullmatch(key) for key in details)
    check_status_details(details)
    assert details["shadow:decisions"] == "1234"
    assert details["shadow:liveAnomalyRate"] == "0.01235"
    assert details["shadow:errorKs"] == "0.1235"
    assert details["shadow:candidateErrorP50"] == "1.235e+05"
    assert details["shadow:candidateErrorP95"] == "1e-07"
    assert len(details["shadow:reason"]) == 1024
    assert set(details) == {
        "shadow:passed", "shadow:decisions", "shadow:liveAnomalyRate",
        "shadow:candidateAnomalyRate", "shadow:anomalyRateDelta",
        "shadow:maxAnomalyRateDelta", "shadow:errorKs", "shadow:maxErrorKs",
        "shadow:liveErrorP50", "shadow:liveErrorP95", "shadow:candidateErrorP50",
        "shadow:candidateErrorP95", "shadow:reason"}


def test_a_trial_needs_decisions():
    with pytest.raises(ValueError, match="at least 1"):
        ShadowTrial(object(), object(), 0, ShadowLimits())


def test_a_bundle_carries_the_shadow_limits(tmp_path):
    """build_bundle keeps (and signs) a manifest's extra fields, so `shadow` travels."""
    model_dir = tmp_path / "model"
    shutil.copytree(BUILTIN, model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["shadow"] = {"max_anomaly_rate_delta": 0.02, "max_error_ks": 0.25}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    key = Ed25519PrivateKey.generate()
    bundle = build_bundle(model_dir, tmp_path / "b.tar.gz", key)
    dest = extract_bundle(bundle, tmp_path / "x")
    verified = verify_bundle(dest, TrustStore.from_keys(key.public_key()),
                             installed_version=None)
    assert ShadowLimits.from_manifest(verified.model_dump()) == ShadowLimits(0.02, 0.25)
