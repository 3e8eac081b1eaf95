"""The configuration: typed models, validation against the registry, located errors.

A config is checked in two passes. The first validates the top level (device, log,
plugins, component names and wiring keys); the second validates each component against
the config model of the plugin its ``type:`` selects. The second pass reads the
components as written, so it runs even where the first found mistakes: one run reports
every mistake, each naming the file, the line and the key, with a suggestion for a
misspelt key or plugin type.
"""

from __future__ import annotations

import difflib
import re
import socket
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from pydantic_core import PydanticCustomError

from edged.base.errors import ConfigError
from edged.config.capture import PipelineCaptureSpec
from edged.config.locate import default_state_dir
from edged.config.yamlfile import Location, line_of, load_yaml, read_yaml
from edged.plugin.config import (  # noqa: F401 - re-exported: the config's own names
    NAME_PATTERN,
    ActuatorConfig,
    ComponentConfig,
    EnvSecret,
    InferenceConfig,
    PreprocessorConfig,
    QueueConfig,
    SourceConfig,
    StartPolicy,
    Strict,
)
from edged.plugin.registry import Kind, Registry


class PipelineSpec(Strict):
    """A pipeline: sources -> buffers -> preprocessing -> inference -> decisions."""

    inputs: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        min_length=1, description="Sources whose readings this pipeline consumes."
    )
    preprocessor: dict[str, Any] = Field(description="Preprocessor config (with `type`).")
    inference: dict[str, Any] = Field(description="Inference backend config (with `type`).")
    interval_s: float = Field(0.5, gt=0, le=3600, description="Time between decisions.")
    stale_after_s: float = Field(
        5.0, gt=0, description="A turbine silent this long raises `sensor_stale`."
    )
    max_turbines: int = Field(10_000, ge=1, description="Turbines this pipeline tracks.")
    evict_after_s: float = Field(
        3600.0, gt=0, description="A turbine silent this long loses its slot (and its "
        "history); when every slot is taken, a new turbine takes the slot of the "
        "longest-silent stale one at once."
    )
    queue: QueueConfig = Field(
        default_factory=lambda: QueueConfig(size=10_000, overflow="drop_oldest"),
        description="Reading batches waiting to enter the buffers.",
    )
    capture: PipelineCaptureSpec | None = Field(
        None, description="Sampled capture of decisions to a spool and S3 or disk "
        "(docs/capture.md, Pipeline capture); absent: none.",
    )


class DeviceSpec(Strict):
    id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)


class LogSpec(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a terminal, JSON lines otherwise."
    )
    stats_interval_s: float = Field(
        60.0, ge=0, description="Log every counter and queue this often (0: never)."
    )
    decisions: Literal["none", "anomalies", "all"] = Field(
        "anomalies", description="Decisions logged (`decision`, at info): every one, the "
        "anomalous ones (at most 50 lines a second per pipeline), or none (docs/watch.md)."
    )


class PluginsSpec(Strict):
    block: list[str] = Field(default_factory=list, description="Plugins not to load.")


class ShutdownSpec(Strict):
    stage_timeout_s: float = Field(
        5.0, gt=0, le=300, description="Bound on each shutdown stage."
    )


class ReloadSpec(Strict):
    timeout_s: float = Field(
        10.0, gt=0, le=600, description="Bound on reading, validating and building a "
        "reloaded config (off the event loop); beyond it the reload is refused.")


_LISTEN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})")


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) as (host, port)."""
    match = _LISTEN.fullmatch(listen)
    assert match is not None, listen  # validated by MetricsSpec
    return match.group(1).strip("[]"), int(match.group(2))


def _check_listen(value: Any) -> Any:
    match = _LISTEN.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match.group(2)) > 65535:
        raise PydanticCustomError(
            "listen", "must be HOST:PORT with a port from 0 to 65535, like 127.0.0.1:9464")
    return value


class MetricsSpec(Strict):
    """The local Prometheus endpoint (docs/health.md); absent: no endpoint."""

    listen: Annotated[str, BeforeValidator(_check_listen)] = Field(
        "127.0.0.1:9464", description="Address and port to serve /metrics on; only this "
        "machine by default (0.0.0.0:9464 exposes it to the network).")


class WatchSpec(Strict):
    """The local event stream that `edged watch` follows (docs/watch.md)."""

    enabled: bool = Field(True, description="Serve decisions and alarms on `socket`.")
    socket: Path | None = Field(
        None, description="The Unix socket (mode 0660); default: <state_dir>/watch.sock.")
    max_clients: int = Field(8, ge=1, le=64, description="Watchers at once; more are "
                             "refused (`watch_clients_refused{reason=too_many}`).")
    queue: int = Field(
        1000, ge=10, le=100_000, description="Lines a watcher may fall behind before it "
        "is dropped (`watch_clients_dropped{reason=too_slow}`); detection never waits.")


class DashboardSpec(Strict):
    """The operator's dashboard over HTTP (docs/dashboard.md); absent: no dashboard."""

    listen: Annotated[str, BeforeValidator(_check_listen)] = Field(
        "127.0.0.1:8088", description="Address and port to serve the dashboard on; only "
        "this machine by default (anything wider wants a `token`).")
    token: EnvSecret | None = Field(
        None, description="`${NAME}`: a bearer token every request must carry "
        "(`Authorization: Bearer ...`), from a systemd credential or the environment.")
    max_clients: int = Field(8, ge=1, le=64, description="Live streams (`/events`) at "
                             "once; more are refused with 503.")
    queue: int = Field(
        1000, ge=10, le=100_000, description="Events a stream may fall behind before it "
        "is dropped (`dashboard_clients_dropped{reason=too_slow}`); detection never waits.")


class RawConfig(Strict):
    """The first pass: the top level, with components still untyped."""

    device: DeviceSpec = Field(default_factory=DeviceSpec)
    log: LogSpec = Field(default_factory=LogSpec)
    plugins: PluginsSpec = Field(default_factory=PluginsSpec)
    state_dir: Path | None = None
    shutdown: ShutdownSpec = Field(default_factory=ShutdownSpec)
    reload: ReloadSpec = Field(default_factory=ReloadSpec)
    sources: dict[Annotated[str, Field(pattern=NAME_PATTERN)], dict[str, Any]] = Field(
        min_length=1
    )
    pipelines: dict[Annotated[str, Field(pattern=NAME_PATTERN)], PipelineSpec] = Field(
        min_length=1
    )
    actuators: dict[Annotated[str, Field(pattern=NAME_PATTERN)], dict[str, Any]] = Field(
        default_factory=dict
    )
    cloud: dict[str, Any] | None = Field(
        None, description="The link to AWS IoT Core and IoT Jobs (edged.cloud.link.CloudConfig)."
    )
    metrics: MetricsSpec | None = Field(
        None, description="Serve the health figures to Prometheus (absent: off).")
    watch: WatchSpec = Field(
        default_factory=WatchSpec, description="The event stream of `edged watch`.")
    dashboard: DashboardSpec | None = Field(
        None, description="Serve the operator's dashboard over HTTP (absent: off).")


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    spec: PipelineSpec
    preprocessor: PreprocessorConfig
    inference: InferenceConfig


@dataclass(frozen=True)
class EdgedConfig:
    """A validated config: every component's config is an instance of its plugin's
    model."""

    path: Path
    raw: RawConfig
    sources: dict[str, SourceConfig]
    pipelines: dict[str, PipelineConfig]
    actuators: dict[str, ActuatorConfig]
    warnings: list[str] = field(default_factory=list)
    cloud: Any = None  # edged.cloud.link.CloudConfig, or None without a cloud section
    #: The line of each key path, for errors found after validation (located()).
    lines: dict[Location, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def state_dir(self) -> Path:
        if self.raw.state_dir is not None:
            return self.raw.state_dir
        # systemd's StateDirectory= sets $STATE_DIRECTORY; elsewhere, beside the user.
        return default_state_dir()


_KIND_BASES: dict[Kind, type[ComponentConfig]] = {
    "source": SourceConfig,
    "preprocessor": PreprocessorConfig,
    "inference": InferenceConfig,
    "actuator": ActuatorConfig,
}


class _Problems:
    """Collects located error messages for one config file."""

    def __init__(self, filename: str, lines: dict[Location, int]) -> None:
        self.filename = filename
        self.lines = lines
        self.items: list[str] = []

    def add(self, loc: Location, message: str) -> None:
        key = ".".join(str(part) for part in loc) or "(top level)"
        line = line_of(self.lines, loc)
        where = f"{self.filename}, line {line}" if line else self.filename
        self.items.append(f"Invalid config for '{key}' at {where}: {message}")

    def add_validation(self, prefix: Location, error: ValidationError,
                       model: type[BaseModel] | None = None) -> None:
        """Every error of ``error``; with the ``model`` validated, an unknown key comes
        with the nearest known key at its place (did you mean...)."""
        for item in error.errors(include_url=False):
            # pydantic marks an invalid mapping key with a "[key]" step; the key is the loc.
            inner = tuple(part for part in item["loc"] if part != "[key]")
            loc = (*prefix, *inner)
            if item["type"] == "extra_forbidden":
                known = known_keys(model, inner[:-1]) if model is not None else []
                self.add(loc, f"unknown key '{loc[-1]}'{did_you_mean(loc[-1], known)}")
            elif item["type"] == "missing":
                self.add(loc, f"required key '{loc[-1]}' is missing")
            elif item["type"] == "env_secret":
                self.add(loc, item["msg"])
            else:
                message = item["msg"].removeprefix("Value error, ")
                self.add(loc, f"{message} (got {_short(item.get('input'))})")


def did_you_mean(word: Any, known: list[str]) -> str:
    """`` (did you mean 'X'?)`` for the known word nearest ``word``, or nothing."""
    close = difflib.get_close_matches(str(word), known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _allowed(annotation: Any) -> list[Any]:
    """The types an annotation allows, with Annotated, Optional and unions opened."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _allowed(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [t for arg in get_args(annotation) for t in _allowed(arg)]
    return [annotation]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _step(annotation: Any, part: str | int) -> list[Any]:
    if _is_model(annotation):
        found = annotation.model_fields.get(part) if isinstance(part, str) else None
        return _allowed(found.annotation) if found is not None else []
    args = get_args(annotation)
    if get_origin(annotation) is dict and len(args) == 2:
        return _allowed(args[1])
    if get_origin(annotation) in (list, tuple, set, frozenset) and args \
            and isinstance(part, int):
        return _allowed(args[0])
    return []


def known_keys(model: type[BaseModel], loc: Location) -> list[str]:
    """The keys allowed at ``loc`` inside ``model``, for a misspelt key found there.
    pydantic puts a union member's tag into a location: a step that leads nowhere is
    taken for one and skipped."""
    here: list[Any] = [model]
    for part in loc:
        here = [t for annotation in here for t in _step(annotation, part)] or here
    return sorted({key for t in here if _is_model(t)
                   for name, info in t.model_fields.items() for key in (name, info.alias)
                   if key})


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _component(
    registry: Registry, kind: Kind, data: Any, loc: Location, problems: _Problems
) -> ComponentConfig | None:
    if not isinstance(data, dict):
        return None  # the first pass has said so: a component must be a mapping
    type_name = data.get("type")
    names = registry.names(kind)
    if type_name is None:
        problems.add((*loc, "type"), f"required key 'type' is missing (one of: "
                     f"{', '.join(names) or 'none installed'})")
        return None
    ctype = registry.component(kind, str(type_name))
    if ctype is None:
        known = ", ".join(names) or "none installed"
        # Blocked, or a broken plugin may be the one that provides it (the registry says).
        hint = registry.unavailable(kind, str(type_name)) or did_you_mean(type_name, names)
        problems.add((*loc, "type"), f"unknown {kind} type '{type_name}'{hint}; known: {known}")
        return None
    try:
        config = ctype.config.model_validate(data)
    except ValidationError as exc:
        problems.add_validation(loc, exc, ctype.config)
        return None
    if not isinstance(config, _KIND_BASES[kind]):
        problems.add(loc, f"plugin config model {ctype.config.__name__} must subclass "
                     f"{_KIND_BASES[kind].__name__}")
        return None
    return config


def load_config_yaml(text: str, filename: str) -> tuple[Any, dict[Location, int]]:
    """Parse YAML keeping key lines; anything but a bounded YAML document is a
    :class:`ConfigError` (a ``ConfigFileError`` with its reason) naming file and line."""
    return load_yaml(text, filename)


def _section(data: dict, name: str) -> dict[Any, Any]:
    """A top-level section of named entries as written, whatever the first pass found."""
    section = data.get(name)
    return section if isinstance(section, dict) else {}


def parse_config(text: str, filename: str, registry: Registry) -> EdgedConfig:
    """Validate config ``text``; raise :class:`ConfigError` listing every mistake."""
    return validate_config(load_config_yaml(text, filename), filename, registry)


def validate_config(loaded: tuple[Any, dict[Location, int]], filename: str,
                    registry: Registry) -> EdgedConfig:
    """Validate a parsed config (data, key lines); ConfigError listing every mistake."""
    data, lines = loaded
    problems = _Problems(filename, lines)
    if not isinstance(data, dict):
        problems.add((), "the file must hold a mapping of sections (sources, pipelines, ...)")
        raise ConfigError(problems.items)
    raw = None
    try:
        raw = RawConfig.model_validate(data)
    except ValidationError as exc:
        problems.add_validation((), exc, RawConfig)

    # Components are validated from the file as written, so that a mistake in one
    # section does not hide those in another (a file used to need a run per round).
    sources = {name: _component(registry, "source", body, ("sources", name), problems)
               for name, body in _section(data, "sources").items()}
    actuators = {name: _component(registry, "actuator", body, ("actuators", name), problems)
                 for name, body in _section(data, "actuators").items()}
    steps: dict[Any, tuple[Any, Any]] = {}
    for name, body in _section(data, "pipelines").items():
        if isinstance(body, dict):
            loc = ("pipelines", name)
            steps[name] = (
                _component(registry, "preprocessor", body.get("preprocessor"),
                           (*loc, "preprocessor"), problems),
                _component(registry, "inference", body.get("inference"), (*loc, "inference"),
                           problems))

    _check_wiring(data, actuators, problems)
    _check_services(data, registry, problems)
    cloud = _cloud(data, steps, registry, problems)
    if raw is not None:
        _check_presigned(raw, problems)
    if problems.items or raw is None:
        raise ConfigError(problems.items)
    return EdgedConfig(
        path=Path(filename),
        raw=raw,
        sources=sources,  # type: ignore[arg-type]
        pipelines={name: PipelineConfig(name, spec, *steps[name])  # type: ignore[arg-type]
                   for name, spec in raw.pipelines.items()},
        actuators=actuators,  # type: ignore[arg-type]
        warnings=_unused_sources(raw),
        cloud=cloud,
        lines=lines,
    )


def located(config: EdgedConfig, loc: Location, message: str) -> str:
    """``message`` about key ``loc`` of a validated config, located as validation
    locates its own (``Invalid config for 'KEY' at FILE, line N: ...``)."""
    problems = _Problems(str(config.path), config.lines)
    problems.add(loc, message)
    return problems.items[0]


def _cloud(data: dict, steps: dict[Any, tuple[Any, Any]], registry: Registry,
           problems: _Problems) -> Any:
    """The ``cloud`` section, validated; jobs may only replace models kept in a store,
    served by a backend that can hot-swap."""
    body = data.get("cloud")
    if not isinstance(body, dict):
        return None  # absent, or the first pass has said what is wrong with it
    from edged.config.cloud import CloudConfig  # the cloud models build on this package

    try:
        cloud = CloudConfig.model_validate(body)
    except ValidationError as exc:
        problems.add_validation(("cloud",), exc, CloudConfig)
        return None
    if cloud.jobs is not None and cloud.jobs.enabled:
        if cloud.jobs.pipelines is None:  # every pipeline that runs a store model
            for name, (_, inference) in steps.items():
                if inference is not None and _store_of(inference):
                    _check_hot_swap(registry, name, inference,
                                    ("pipelines", name, "inference", "model"), problems)
        else:
            _check_jobs_pipelines(cloud.jobs.pipelines, data, steps, registry, problems)
    return cloud


def _check_jobs_pipelines(names: list[str], data: dict, steps: dict[Any, tuple[Any, Any]],
                          registry: Registry, problems: _Problems) -> None:
    """Each pipeline listed in ``cloud.jobs.pipelines`` exists and can take a job."""
    known = _section(data, "pipelines")
    for index, name in enumerate(names):
        loc = ("cloud", "jobs", "pipelines", index)
        inference = steps.get(name, (None, None))[1]
        if name not in known:
            problems.add(loc, f"no pipeline named '{name}' (pipelines: "
                         f"{', '.join(map(str, known))})")
        elif inference is not None and not _store_of(inference):
            problems.add(loc, f"pipeline '{name}' does not run a store:NAME model, so a "
                         "job cannot replace it (set its inference model to store:NAME)")
        elif inference is not None:
            _check_hot_swap(registry, name, inference, loc, problems)


def _check_hot_swap(registry: Registry, name: str, inference: InferenceConfig,
                    loc: Location, problems: _Problems) -> None:
    """A job swaps the new model into the running pipeline through its backend: one
    whose type does not declare ``hot_swap`` would take the job and fail it."""
    ctype = registry.component("inference", inference.type)
    if ctype is not None and not ctype.hot_swap:
        problems.add(loc, f"pipeline '{name}' runs inference type '{inference.type}', "
                     "which cannot hot-swap models, so a job cannot replace its "
                     f"store:{_store_of(inference)} model (use a backend that can, like "
                     "onnx, or leave the pipeline out of cloud.jobs.pipelines)")


def _check_presigned(raw: RawConfig, problems: _Problems) -> None:
    """Pre-signed capture uploads ask for their URLs over the cloud link, and the signer
    signs only keys under ``device=<thing name>``, where the uplink puts the device id."""
    for name, spec in raw.pipelines.items():
        if spec.capture is None or spec.capture.destination.type != "presigned":
            continue
        loc = ("pipelines", name, "capture", "destination", "type")
        if raw.cloud is None:
            problems.add(loc, "presigned uploads ask for their URLs over the cloud link: "
                         "add a cloud: section (docs/capture.md, \"Pre-signed uploads\")")
            continue
        thing = raw.cloud.get("thing_name")
        if isinstance(thing, str) and thing != raw.device.id:
            problems.add(loc, f"presigned uploads need cloud.thing_name ({thing!r}) to be "
                         f"device.id ({raw.device.id!r}): the signer signs only keys "
                         f"under device=<thing name>")


def store_model(pipeline: PipelineConfig) -> str | None:
    """The name of the model store a pipeline's model comes from (``store:NAME``)."""
    return _store_of(pipeline.inference)


def _store_of(inference: InferenceConfig) -> str | None:
    from edged.model.store import STORE_PREFIX

    model = getattr(inference, "model", None)
    if isinstance(model, str) and model.startswith(STORE_PREFIX):
        return model.removeprefix(STORE_PREFIX)
    return None


#: Sections read by a plugin's service (edged.plugin.registry.ServiceType) of that name.
SERVICE_SECTIONS = ("dashboard",)


def _check_services(data: dict, registry: Registry, problems: _Problems) -> None:
    """A section whose service no loaded plugin provides would be silently ignored."""
    for section in SERVICE_SECTIONS:
        if data.get(section) is not None and section not in registry.services:
            problems.add((section,), f"no loaded plugin provides the '{section}' service"
                         f"{registry.unavailable('service', section)}")


def _check_wiring(data: dict, actuators: dict, problems: _Problems) -> None:
    """Every input names a component of the right kind written in the file (one whose
    own mistakes are reported on their own, not as a missing name)."""
    sources = _section(data, "sources")
    pipelines = _section(data, "pipelines")
    for name, body in pipelines.items():
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list):
            continue  # the first pass has said what is wrong with it
        named = [source for source in inputs if isinstance(source, str)]
        for index, source in enumerate(inputs):
            if isinstance(source, str) and source not in sources:
                problems.add(("pipelines", name, "inputs", index),
                             f"no source named '{source}' (sources: "
                             f"{', '.join(map(str, sources))})")
        if len(set(named)) != len(named):
            problems.add(("pipelines", name, "inputs"), "lists a source more than once")
    for name, actuator in actuators.items():
        for index, pipeline in enumerate(getattr(actuator, "inputs", ())):
            if pipeline not in pipelines:
                problems.add(("actuators", name, "inputs", index),
                             f"no pipeline named '{pipeline}' (pipelines: "
                             f"{', '.join(map(str, pipelines))})")


def _unused_sources(raw: RawConfig) -> list[str]:
    used = {source for spec in raw.pipelines.values() for source in spec.inputs}
    return [f"source '{name}' feeds no pipeline" for name in raw.sources if name not in used]


def load_config(path: Path | str, registry: Registry) -> EdgedConfig:
    """Read (under the size bound) and validate a config file; ConfigError otherwise."""
    return validate_config(read_yaml(path), str(path), registry)


def blocked_plugins(path: Path | str) -> list[str]:
    """The config's ``plugins.block`` list, read before the registry exists (the
    registry depends on it), under the same bounds as the full read. Anything malformed
    is left to full validation."""
    try:
        data, _ = read_yaml(Path(path))
    except ConfigError:
        return []
    return block_list(data)


def block_list(data: Any) -> list[str]:
    """``plugins.block`` of parsed config data; [] where it is missing or malformed."""
    plugins = data.get("plugins") if isinstance(data, dict) else None
    block = plugins.get("block") if isinstance(plugins, dict) else None
    return [str(name) for name in block] if isinstance(block, list) else []
