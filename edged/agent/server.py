"""The gRPC server: ``AWS.SageMaker.Edge.Agent`` on a Unix socket.

Every rpc runs on the event loop except the work that takes time: model loading in a
worker thread, and Predict in a pool of ``predict_threads`` threads, so that concurrent
Predict calls run in parallel (ONNX Runtime releases the GIL). A refused request is
answered with the status code its :class:`~edged.agent.errors.AgentError` names and a
message saying what was wrong; nothing a client sends stops the agent serving others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
import structlog

from edged.agent.captures import CapturePlan, plan_capture
from edged.agent.config import AgentConfig
from edged.agent.errors import (
    AgentError,
    AgentStartError,
    AlreadyExists,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from edged.agent.memory import (
    CAPTURE_COPIES,
    MemoryBudget,
    give_back,
    map_large_buffers,
    run_options,
)
from edged.agent.models import LoadedModel, ModelRegistry, check_name
from edged.agent.proto import agent_pb2 as pb
from edged.agent.proto import agent_pb2_grpc
from edged.agent.restore import LoadedModelsFile, restore
from edged.agent.tensors import (
    PredictPlan,
    SharedMemoryReader,
    output_tensors,
    plan_predict,
)
from edged.base.errors import ModelError
from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.base.unix_socket import claim_socket_path
from edged.capture.store import (
    BufferFull,
    CaptureError,
    CaptureRecord,
    CaptureStore,
    DuplicateCaptureId,
)
from edged.model.package import MANIFEST, read_manifest

log = structlog.get_logger("edged.agent")

SOCKET_MODE = 0o660
_STATUS = {"FAILURE": pb.FAILURE, "SUCCESS": pb.SUCCESS, "IN_PROGRESS": pb.IN_PROGRESS,
           "NOT_FOUND": pb.NOT_FOUND}

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class CaptureSink(Protocol):
    """What the server needs of the capture store (:class:`edged.capture.CaptureStore`)."""

    async def submit(self, record: CaptureRecord) -> None: ...

    def status(self, capture_id: str) -> str: ...


def _rpc(method: Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]):
    """Turns the agent's errors into gRPC statuses; logs anything unexpected."""

    @functools.wraps(method)
    async def wrapper(self: AgentServicer, request: Req,
                      context: grpc.aio.ServicerContext) -> Resp:
        rpc = method.__name__
        try:
            return await method(self, request, context)
        except AgentError as exc:
            self.counters.inc("agent_requests_refused", rpc=rpc, code=exc.code,
                              reason=exc.reason)
            # A client repeating a bad call must not flood the journal.
            suppressed = self.refusals.allow(f"{rpc}:{exc.reason}")
            if suppressed is not None:
                log.info("request_refused", rpc=rpc, code=exc.code, reason=exc.reason,
                         message=str(exc), suppressed_since_last=suppressed)
            code, message = getattr(grpc.StatusCode, exc.code), str(exc)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            self.counters.inc("agent_requests_failed", rpc=rpc)
            log.exception("request_failed", rpc=rpc)
            code, message = grpc.StatusCode.INTERNAL, f"{rpc} failed: {exc}"
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    return wrapper


def _model_message(model: LoadedModel) -> pb.Model:
    def meta(infos):
        return [pb.TensorMetadata(name=i.name, data_type=i.data_type, shape=list(i.shape))
                for i in infos]

    return pb.Model(url=model.url, name=model.name,
                    input_tensor_metadatas=meta(model.inputs),
                    output_tensor_metadatas=meta(model.outputs))


class AgentServicer(agent_pb2_grpc.AgentServicer):
    """The seven rpcs. Built by :class:`AgentServer`; usable on its own in tests."""

    def __init__(self, config: AgentConfig, models: ModelRegistry, pool: ThreadPoolExecutor,
                 capture: CaptureSink | None, counters: Counters, *,
                 saved: LoadedModelsFile | None = None) -> None:
        self.config = config
        self.models = models
        #: Where the loaded set is remembered (``restore_models``), or None.
        self.saved = saved
        self.pool = pool
        self.capture = capture
        self.counters = counters
        self.shm = SharedMemoryReader(config.shm_prefix)
        self.budget = MemoryBudget(config.max_inflight_bytes)
        self.refusals = RateLimit()
        self._lock = threading.Lock()
        #: Predict calls inside ONNX Runtime right now, and the most seen at once.
        self.in_flight = 0
        self.max_in_flight = 0

    # -- inference --------------------------------------------------------------------------

    @_rpc
    async def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        check_name(request.name)
        model = self.models.get(request.name)
        # Everything is checked, and the call's memory estimated, before a byte of shared
        # memory is read or the model runs.
        plan = plan_predict(model, request.tensors)
        if plan.batch > self.config.max_batch:
            raise ResourceExhausted(
                f"Predict on {model.name!r}: batch {plan.batch} is more than max_batch "
                f"({self.config.max_batch}); send smaller batches", reason="max_batch")
        cost = model.footprint.estimate(plan.nbytes)
        future = self.budget.submit(
            self.pool, cost, f"Predict of {plan.nbytes} input bytes on {model.name!r}",
            self._predict, model, plan, cost)
        tensors = await asyncio.wrap_future(future)
        self.counters.inc("agent_predictions", model=model.name)
        return pb.PredictResponse(tensors=tensors)

    def _predict(self, model: LoadedModel, plan: PredictPlan, cost: int) -> list[pb.Tensor]:
        try:
            return output_tensors(model, self._run(model, plan, cost))
        finally:
            give_back(cost)

    def _run(self, model: LoadedModel, plan: PredictPlan, cost: int) -> list:
        feeds = plan.feeds(self.shm)
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return model.run(feeds, run_options(cost))
        except Exception as exc:
            # ONNX Runtime's own checks (e.g. inconsistent dynamic dimensions).
            if type(exc).__name__ in ("InvalidArgument", "InvalidGraph"):
                raise InvalidArgument(f"model {model.name!r} refused the input: "
                                      f"{str(exc).strip()[:500]}") from exc
            raise
        finally:
            with self._lock:
                self.in_flight -= 1

    # -- models -----------------------------------------------------------------------------

    @_rpc
    async def LoadModel(self, request: pb.LoadModelRequest, context) -> pb.LoadModelResponse:
        check_name(request.name)
        started = time.monotonic()
        model = await asyncio.to_thread(self.models.load, request.url, request.name)
        log.info("model_loaded", model=model.name, url=model.url, file=str(model.file),
                 seconds=round(time.monotonic() - started, 3))
        await self._remember()
        return pb.LoadModelResponse(model=_model_message(model))

    @_rpc
    async def UnLoadModel(self, request: pb.UnLoadModelRequest,
                          context) -> pb.UnLoadModelResponse:
        check_name(request.name)
        self.models.unload(request.name)
        log.info("model_unloaded", model=request.name)
        await self._remember()
        return pb.UnLoadModelResponse()

    async def _remember(self) -> None:
        if self.saved is not None:
            await asyncio.to_thread(self.saved.save, self.models)

    @_rpc
    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[_model_message(m) for m in self.models.list()])

    @_rpc
    async def DescribeModel(self, request: pb.DescribeModelRequest,
                            context) -> pb.DescribeModelResponse:
        check_name(request.name)
        return pb.DescribeModelResponse(model=_model_message(self.models.get(request.name)))

    # -- capture ----------------------------------------------------------------------------

    def _store(self) -> CaptureSink:
        if self.capture is None:
            raise Unavailable("data capture is not running")
        return self.capture

    @_rpc
    async def CaptureData(self, request: pb.CaptureDataRequest,
                          context) -> pb.CaptureDataResponse:
        store = self._store()
        if not request.capture_id:
            raise InvalidArgument("capture_id is empty")
        if not request.model_name:
            raise InvalidArgument("model_name is empty")
        check_name(request.model_name)
        try:
            model = self.models.get(request.model_name)
        except AgentError:
            model = None  # capturing for a model that is not loaded here is allowed
        # Checked against the model, and the call's memory estimated, before a byte of
        # shared memory is read.
        plan = plan_capture(request, model)
        with self.budget.hold(CAPTURE_COPIES * plan.nbytes,
                              f"CaptureData of {plan.nbytes} bytes"):
            await self._capture(store, plan, model)
        self.counters.inc("agent_captures")
        return pb.CaptureDataResponse()

    async def _capture(self, store: CaptureSink, plan: CapturePlan,
                       model: LoadedModel | None) -> None:
        # Shared-memory tensors are copied now: the client may reuse its segment as soon
        # as the call returns, while the record waits for its batch.
        record = await asyncio.to_thread(self._record, plan, model)
        try:
            await store.submit(record)
        except BufferFull as exc:
            raise ResourceExhausted(f"the capture buffer is full: {exc}") from None
        except DuplicateCaptureId as exc:
            raise AlreadyExists(str(exc)) from None
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        except CaptureError as exc:
            raise Unavailable(f"the capture store cannot take the record: {exc}") from None

    def _record(self, plan: CapturePlan, model: LoadedModel | None) -> CaptureRecord:
        return plan.record(self.shm, _model_version(model))  # reads files: in a thread

    @_rpc
    async def GetCaptureDataStatus(self, request: pb.GetCaptureDataStatusRequest,
                                   context) -> pb.GetCaptureDataStatusResponse:
        store = self._store()
        if not request.capture_id:
            raise InvalidArgument("capture_id is empty")
        return pb.GetCaptureDataStatusResponse(
            status=_STATUS[store.status(request.capture_id)])


def _model_version(model: LoadedModel | None) -> int | None:
    """The version in a loaded model's manifest (the capture's ``version=`` partition);
    None for a bare ``*.onnx`` directory, a model not loaded here, or an unreadable
    manifest."""
    if model is None or not (model.directory / MANIFEST).is_file():
        return None
    try:
        return read_manifest(model.directory, verify=False).version
    except (ModelError, OSError):
        return None


def _prepare_socket(path: Path) -> None:
    """Remove a stale socket file; refuse one another agent still serves on."""
    try:
        if claim_socket_path(path):
            log.info("stale_socket_removed", path=str(path))
    except (FileExistsError, ValueError) as exc:
        raise AgentStartError(str(exc)) from None


class AgentServer:
    """The agent: model registry, Predict pool, capture store and gRPC server, started
    and stopped together. ``async with AgentServer(config, "/run/edged/agent.sock")``.

    ``capture`` injects a capture store (tests); by default one is built from the
    config and entered with the server.
    """

    def __init__(self, config: AgentConfig, address: str, *,
                 capture: CaptureSink | None = None, counters: Counters | None = None,
                 grace_s: float = 5.0) -> None:
        self.config = config
        # Absolute: every message about the socket names where it is.
        self.path = Path(address.removeprefix("unix://")).absolute()
        self.counters = counters if counters is not None else Counters()
        self.grace_s = grace_s
        self._capture = capture
        self._stack = AsyncExitStack()
        self.servicer: AgentServicer | None = None
        self.server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        """What a client dials."""
        return f"unix://{self.path}"

    async def __aenter__(self) -> AgentServer:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        config = self.config
        capture = self._capture
        if capture is None:
            credentials = None
            if config.credentials is not None:
                from edged.capture.credentials import provider_from_spec

                credentials = provider_from_spec(config.credentials, config.device_name,
                                                 counters=self.counters)
            store = CaptureStore(config.capture_settings(), counters=self.counters,
                                 credentials=credentials)
            capture = await self._stack.enter_async_context(store)
        map_large_buffers()
        pool = ThreadPoolExecutor(config.predict_threads, thread_name_prefix="edged-predict")
        # Off the loop: a Predict still inside ONNX Runtime finishes before this returns.
        self._stack.push_async_callback(asyncio.to_thread, pool.shutdown, wait=True,
                                        cancel_futures=True)
        models = ModelRegistry(config.model_roots, max_models=config.max_loaded_models,
                               session_threads=config.session_threads,
                               verify=config.verify_models)
        self._stack.callback(models.clear)
        _prepare_socket(self.path)  # before restoring: not for an agent that cannot serve
        saved: LoadedModelsFile | None = LoadedModelsFile(
            config.loaded_models_file, fsync=config.capture.fsync, counters=self.counters)
        restored = 0
        if config.restore_models:
            # Before the socket accepts a call: a client that cached "loaded" finds its
            # model on its first call after the restart.
            restored = await asyncio.to_thread(restore, models, saved)
        else:
            await asyncio.to_thread(saved.discard)
            saved = None
        self.servicer = AgentServicer(config, models, pool, capture, self.counters,
                                      saved=saved)

        # Beyond max_concurrent_rpcs gRPC answers RESOURCE_EXHAUSTED itself, before it
        # reads the request: each call may hold up to max_request_bytes.
        server = grpc.aio.server(
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
            options=[("grpc.max_receive_message_length", config.max_request_bytes),
                     ("grpc.max_send_message_length", -1)])
        agent_pb2_grpc.add_AgentServicer_to_server(self.servicer, server)
        try:
            server.add_insecure_port(f"unix://{self.path}")
        except RuntimeError as exc:
            raise AgentStartError(f"cannot listen on {self.path}: {exc}") from None
        await server.start()
        self.server = server
        self._stack.push_async_callback(self._stop_server)
        # Owner and group only: the group is how client applications get access.
        os.chmod(self.path, SOCKET_MODE)
        log.info("agent_listening", socket=str(self.path), roots=[str(r) for r in
                                                                  config.model_roots],
                 predict_threads=config.predict_threads, models_restored=restored)

    async def _stop_server(self) -> None:
        assert self.server is not None
        # Refuse new calls, give running ones the grace period, then cancel them.
        await self.server.stop(self.grace_s)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
