"""Inference backend ``edge_agent``: the model runs in an edge agent (``edged agent``, or
a remaining original SageMaker Edge Agent), reached over its Unix socket with gRPC.

The daemon keeps its own preprocessing (its parameters come from the model's manifest,
read here when the graph is built) and sends the model input to the agent's ``Predict``
in calls of at most ``max_batch`` windows.

One channel per backend, opened when it starts and closed when it stops. gRPC's channel
does the reconnecting: when the agent restarts, the channel reconnects on its own
(reconnect backoff capped at one second); calls wait for the channel to be ready
(``wait_for_ready``) up to their deadline, and a call that fails with UNAVAILABLE after it
was sent (the agent died under it), or with RESOURCE_EXHAUSTED (the agent's memory in
flight is taken for now), is retried by the channel's retry policy. No call is
retried by a hand-written loop; the one exception is semantic, not a transport retry: a
restarted agent that has forgotten the model (NOT_FOUND) is told to load ``model_url``
again, once.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import structlog
from pydantic import Field, model_validator

from edged import hookimpl
from edged.base.errors import ModelError
from edged.model.package import MANIFEST, ModelManifest, parse_manifest, resolve_model_path
from edged.plugin.components import BuildContext
from edged.plugin.config import InferenceConfig
from edged.plugin.events import ModelRef
from edged.plugin.registry import ComponentType

if TYPE_CHECKING:
    import grpc

log = structlog.get_logger("edged.edge_agent")

SERVICE = "AWS.SageMaker.Edge.Agent"
#: The agent's model-name rule, as the published interface states it.
AGENT_MODEL_NAME = r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$"

# DataType enum values of the interface -> numpy dtypes.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype(np.uint8), 1: np.dtype(np.int16), 2: np.dtype(np.int32),
    3: np.dtype(np.int64), 4: np.dtype(np.float16), 5: np.dtype(np.float32),
    6: np.dtype(np.float64),
}
_DATA_TYPES = {dtype: code for code, dtype in _DTYPES.items()}
_DTYPE_NAMES = {0: "UINT8", 1: "INT16", 2: "INT32", 3: "INT64", 4: "FLOAT16", 5: "FLOAT32",
                6: "FLOAT64"}


class EdgeAgentConfig(InferenceConfig):
    type: Literal["edge_agent"]
    socket: Path = Field(
        description="The agent's Unix socket (what `edged agent -a` serves on).",
    )
    model_name: str = Field(
        pattern=AGENT_MODEL_NAME, max_length=100,
        description="The model's name in the agent (LoadModel's `name`).",
    )
    model_url: str | None = Field(
        None,
        description="A model directory on this device. If set, the backend asks the agent "
        "to load it when starting (already loaded under `model_name` is fine) and again "
        "if a restarted agent has forgotten it. If unset, the model must already be "
        "loaded in the agent.",
    )
    manifest: str | None = Field(
        None,
        description="The model's manifest: a manifest.json, a model directory or "
        "builtin:NAME. The daemon's preprocessor takes its parameters from it although "
        "the model runs in the agent. Default: `<model_url>/manifest.json`.",
    )
    deadline_s: float = Field(
        2.0, gt=0, le=600,
        description="Deadline of each Predict call (one call per `max_batch` windows); "
        "a call still unanswered then fails the round with a timeout error.",
    )
    max_batch: int = Field(
        64, ge=1, le=1024,
        description="Windows per Predict call; bigger rounds are split into several "
        "calls. 1024 reference windows are 2.4 MB, within gRPC's 4 MB message limit.",
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, le=600,
        description="How long starting waits for the agent to answer (and to load the "
        "model); then the start fails and `on_start_failure` applies.",
    )
    unload_on_stop: bool = Field(
        False,
        description="Unload `model_name` from the agent when the backend stops (leave it "
        "false when other clients use the model).",
    )

    @model_validator(mode="after")
    def _manifest_known(self) -> EdgeAgentConfig:
        if self.manifest is None and self.model_url is None:
            raise ValueError("set `manifest` (or `model_url`, whose manifest.json is the "
                             "default): the preprocessor needs the model's parameters")
        return self


def load_manifest(spec: str) -> ModelManifest:
    """A manifest from a manifest file, a model directory or ``builtin:NAME``.

    Only the manifest is read: the model file is the agent's business (it may sit on
    another path, or be a compiled artefact this device cannot read)."""
    path = resolve_model_path(spec)
    return parse_manifest(path / MANIFEST if path.is_dir() else path)


def _manifest_spec(config: EdgeAgentConfig) -> str:
    if config.manifest is not None:
        return config.manifest
    url = config.model_url or ""
    if not Path(url).expanduser().is_dir():
        raise ModelError(f"model_url {url!r} is not a local directory, so its manifest "
                         "cannot be read here: set `manifest`")
    return url


def channel_options(max_batch_bytes: int) -> list[tuple[str, Any]]:
    """The channel's settings: reconnect quickly after an agent restart, retry calls that
    fail with UNAVAILABLE, and allow messages of ``max_batch`` windows."""
    service_config = {
        "methodConfig": [{
            "name": [{"service": SERVICE}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                # RESOURCE_EXHAUSTED: the agent's memory in flight is taken (by other
                # clients, perhaps hostile ones); it refuses at once, so a few retries
                # within the deadline keep the daemon deciding.
                "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
            },
        }],
    }
    limit = max(4 << 20, 2 * max_batch_bytes + (64 << 10))
    return [
        ("grpc.service_config", json.dumps(service_config)),
        ("grpc.enable_retries", 1),
        # gRPC's default reconnect backoff grows to 120 s: a daemon would then stay blind
        # for up to two minutes after its agent came back.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]


class EdgeAgentBackend:
    """A model served by an edge agent. ``predict`` is thread-safe (gRPC channels are)."""

    def __init__(self, config: EdgeAgentConfig, ctx: BuildContext | None = None) -> None:
        self.config = config
        self.name = ctx.name if ctx is not None else config.model_name
        manifest = load_manifest(_manifest_spec(config))
        self.manifest = manifest.model_dump()
        self.model = ModelRef(manifest.name, manifest.version)
        self._input = manifest.inputs[0]
        self._output = manifest.outputs[0]
        self._dtype = np.dtype(self._input.dtype)
        self._tail = tuple(int(d) for d in self._input.shape[1:] if d is not None)
        if len(self._tail) != len(self._input.shape) - 1:
            raise ModelError(f"manifest input {self._input.name}{self._input.shape}: only "
                             "the first (batch) dimension may be open")
        self.target = f"unix://{Path(config.socket).expanduser().absolute()}"
        self._channel: grpc.Channel | None = None
        self._stub = None
        self._pb = None
        self._batch: int | None = None  # the agent's fixed batch size, if it has one
        self._out_tail: tuple[int, ...] = ()
        self._out_dtype = np.dtype(np.float32)
        self._reload_lock = threading.Lock()
        self._loads = 0
        self._state: grpc.ChannelConnectivity | None = None
        self._down_since: float | None = None
        self._connected = False

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> EdgeAgentBackend:
        import asyncio

        self.open()
        try:
            await asyncio.to_thread(self.start)
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        try:
            if self.config.unload_on_stop and self._channel is not None:
                await asyncio.to_thread(self.unload)
        finally:
            self.close()

    def open(self) -> None:
        """Create the channel (connecting happens in the background, on first use)."""
        import grpc  # imported here: plugin discovery must stay cheap

        from edged.agent.proto import agent_pb2, agent_pb2_grpc

        row_bytes = int(np.prod(self._tail)) * self._dtype.itemsize
        self._pb = agent_pb2
        self._channel = grpc.insecure_channel(
            self.target, options=channel_options(self.config.max_batch * row_bytes))
        self._stub = agent_pb2_grpc.AgentStub(self._channel)
        self._channel.subscribe(self._on_state, try_to_connect=True)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.unsubscribe(self._on_state)
            self._channel.close()
        self._channel = self._stub = None

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        """Log the connection's ups and downs (called on a gRPC thread)."""
        import grpc

        self._state = state
        if state == grpc.ChannelConnectivity.READY:
            if self._down_since is not None:
                log.info("edge_agent_reconnected", component=self.name, target=self.target,
                         gap_s=round(time.monotonic() - self._down_since, 3))
            self._down_since = None
            self._connected = True
        elif (state == grpc.ChannelConnectivity.TRANSIENT_FAILURE and self._connected
              and self._down_since is None):
            self._down_since = time.monotonic()
            log.warning("edge_agent_disconnected", component=self.name, target=self.target)

    def start(self) -> None:
        """Load the model if ``model_url`` is set, read its tensor metadata from the agent
        and check it against the manifest. Blocking."""
        model = self._load() if self.config.model_url is not None else self._describe()
        self._check(model)
        log.info("edge_agent_ready", component=self.name, target=self.target,
                 model=self.config.model_name, version=self.model.version,
                 batch=self._batch or "any")

    def _call(self, method: str, request: Any, timeout: float) -> Any:
        import grpc

        try:
            return getattr(self._stub, method)(request, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise self._error(method, exc, timeout) from None

    def _error(self, method: str, exc: Any, timeout: float) -> Exception:
        """A gRPC failure as an exception that says what went wrong, and where."""
        import grpc

        code, details = exc.code(), exc.details()
        where = f"edge agent at {self.target}, model {self.config.model_name!r}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            if self._state != grpc.ChannelConnectivity.READY:
                state = self._state.name if self._state is not None else "unknown"
                return TimeoutError(f"{where}: {method} could not reach the agent within "
                                    f"{timeout:g} s (connection {state})")
            return TimeoutError(f"{where}: {method} got no answer within {timeout:g} s")
        if code == grpc.StatusCode.UNAVAILABLE:
            return ConnectionError(f"{where}: {method} failed, agent unavailable: {details}")
        return ModelError(f"{where}: {method} failed: {code.name}: {details}")

    def _load(self) -> Any:
        import grpc

        request = self._pb.LoadModelRequest(url=self.config.model_url,
                                            name=self.config.model_name)
        timeout = self.config.connect_timeout_s
        try:
            model = self._stub.LoadModel(request, timeout=timeout, wait_for_ready=True).model
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise self._error("LoadModel", exc, timeout) from None
            model = self._describe()
            if model.url and model.url != self.config.model_url:
                log.warning("edge_agent_model_url_differs", component=self.name,
                            model=self.config.model_name, loaded=model.url,
                            configured=self.config.model_url)
            return model
        self._loads += 1
        log.info("edge_agent_model_loaded", component=self.name,
                 model=self.config.model_name, url=self.config.model_url)
        return model

    def _describe(self) -> Any:
        import grpc

        request = self._pb.DescribeModelRequest(name=self.config.model_name)
        timeout = self.config.connect_timeout_s
        try:
            return self._stub.DescribeModel(request, timeout=timeout,
                                            wait_for_ready=True).model
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise ModelError(f"edge agent at {self.target} has no model "
                                 f"{self.config.model_name!r} loaded; load it or set "
                                 "`model_url`") from None
            raise self._error("DescribeModel", exc, timeout) from None

    def _check(self, model: Any) -> None:
        """The agent's tensor metadata must agree with the manifest's schema."""
        where = f"edge agent model {self.config.model_name!r}"
        if not model.input_tensor_metadatas or not model.output_tensor_metadatas:
            raise ModelError(f"{where}: the agent reports no input or output tensors")
        meta = model.input_tensor_metadatas[0]
        expected = (self._input.name, self._input.dtype, self._input.shape)
        name = meta.name.decode() if isinstance(meta.name, bytes) else meta.name
        shape = list(meta.shape)
        dtype = _DTYPES.get(meta.data_type)
        batch_ok = len(shape) > 0 and (shape[0] <= 0 or self._input.shape[0] in (None,
                                                                               shape[0]))
        if (name != self._input.name or dtype != self._dtype
                or tuple(shape[1:]) != self._tail or not batch_ok):
            raise ModelError(
                f"{where}: its input {name}, {_DTYPE_NAMES.get(meta.data_type, '?')}, "
                f"{shape} does not match the manifest's {expected[0]}, "
                f"{expected[1]}, {[-1 if d is None else d for d in expected[2]]}")
        self._batch = shape[0] if shape[0] > 0 else None
        if self._batch is not None and self._batch > self.config.max_batch:
            raise ModelError(f"{where}: the agent takes batches of exactly {self._batch} "
                             f"windows, more than max_batch={self.config.max_batch}")
        out = model.output_tensor_metadatas[0]
        out_dtype = _DTYPES.get(out.data_type)
        if out_dtype is None or len(out.shape) < 1:
            raise ModelError(f"{where}: unusable output metadata {out}")
        self._out_dtype = out_dtype
        self._out_tail = tuple(int(d) for d in out.shape[1:])

    def unload(self) -> None:
        request = self._pb.UnLoadModelRequest(name=self.config.model_name)
        try:
            self._call("UnLoadModel", request, self.config.deadline_s)
        except (ModelError, TimeoutError, ConnectionError) as exc:
            log.warning("edge_agent_unload_failed", component=self.name, error=str(exc))
        else:
            log.info("edge_agent_model_unloaded", component=self.name,
                     model=self.config.model_name)

    # -- inference ----------------------------------------------------------------------

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self._stub is None:
            raise ModelError("edge agent backend is not started")
        x = np.ascontiguousarray(x, dtype=self._dtype)
        if x.shape[1:] != self._tail:
            raise ValueError(f"model input has shape {x.shape}; the model takes "
                             f"(n, {', '.join(map(str, self._tail))})")
        step = self._batch or self.config.max_batch
        out = np.empty((len(x), *self._out_tail), dtype=self._out_dtype)
        for start in range(0, len(x), step):
            chunk = x[start:start + step]
            rows = len(chunk)
            if self._batch is not None and rows < self._batch:
                # A model compiled for a fixed batch: pad the last call, drop the extra.
                chunk = np.concatenate([chunk, np.zeros((self._batch - rows, *self._tail),
                                                        dtype=self._dtype)])
            out[start:start + rows] = self._predict(chunk)[:rows]
        return out

    def _predict(self, chunk: np.ndarray) -> np.ndarray:
        import grpc

        pb = self._pb
        meta = pb.TensorMetadata(name=self._input.name, data_type=_DATA_TYPES[self._dtype],
                                 shape=chunk.shape)
        request = pb.PredictRequest(
            name=self.config.model_name,
            tensors=[pb.Tensor(tensor_metadata=meta, byte_data=chunk.tobytes())])
        timeout = self.config.deadline_s
        try:
            response = self._stub.Predict(request, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or self.config.model_url is None:
                raise self._error("Predict", exc, timeout) from None
            # A restarted agent that has forgotten the model: load it again, once.
            self._reload()
            try:
                response = self._stub.Predict(request, timeout=timeout, wait_for_ready=True)
            except grpc.RpcError as again:
                raise self._error("Predict", again, timeout) from None
        return self._parse(response, len(chunk))

    def _reload(self) -> None:
        with self._reload_lock:
            log.warning("edge_agent_model_missing", component=self.name,
                        model=self.config.model_name, action="reloading")
            self._check(self._load())

    def _parse(self, response: Any, rows: int) -> np.ndarray:
        where = f"edge agent model {self.config.model_name!r}: Predict"
        if not response.tensors:
            raise ModelError(f"{where} returned no tensor")
        tensor = response.tensors[0]
        if tensor.WhichOneof("data") != "byte_data":
            raise ModelError(f"{where} returned its output in shared memory, not inline")
        dtype, shape = self._out_dtype, (rows, *self._out_tail)
        if tensor.HasField("tensor_metadata"):
            meta = tensor.tensor_metadata
            dtype = _DTYPES.get(meta.data_type, dtype)
            if len(meta.shape):
                shape = tuple(meta.shape)
        data = tensor.byte_data
        if (shape[0] != rows or shape[1:] != self._out_tail
                or len(data) != int(np.prod(shape)) * dtype.itemsize):
            raise ModelError(f"{where} returned {len(data)} bytes of shape {list(shape)}; "
                             f"expected {rows} windows of {list(self._out_tail)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)


def _build(config: EdgeAgentConfig, ctx: BuildContext) -> EdgeAgentBackend:
    return EdgeAgentBackend(config, ctx)


@hookimpl
def edged_component_types() -> list[ComponentType]:
    return [ComponentType("inference", "edge_agent", EdgeAgentConfig, _build,
                          "the model runs in an edge agent (edged agent or SageMaker "
                          "Edge Agent), called over its Unix socket")]
