"""The agent's configuration: the old agent's JSON file as it is, or edged YAML.

Both formats produce one :class:`AgentConfig`. Which one a file is follows from its
content: a JSON object of ``sagemaker_edge_*`` keys (plus optional ``edged_*``
extensions) is the agent JSON; anything else is YAML (JSON included) with an ``agent:``
section and optional ``device:`` and ``log:``. Every mistake is reported with file, line
and key, in the style of ``edged check-config``; the command exits 78.

The JSON is translated key by key into the YAML's shape and validated by the same model,
so a wrong value is reported under the JSON key the operator wrote. Keys that meant
something only to the old agent are accepted and listed in
:attr:`LoadedAgentConfig.ignored`, each with a note, for the command to log once.

Relative paths follow each format's own reader: the old agent resolved its JSON's against
the working directory it was started in (``./agent/capture``), and without
``edged_model_roots`` that directory is the model root (urls like
``agent/model/0/NAME/1.0``), unless it is ``/``; edged YAML's are relative to the file.
:attr:`LoadedAgentConfig.relative_to` says which directory it was, for the log.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from edged.base.errors import ConfigError
from edged.base.strict_json import JsonError
from edged.base.strict_json import loads as strict_loads
from edged.capture.store import CapturePolicy, CaptureSettings
from edged.config import DeviceSpec, LogSpec, _Problems, load_config_yaml
from edged.config.capture import IotCredentialsSpec, split_iot_endpoint
from edged.config.dependencies import BOTO3, missing
from edged.config.locate import default_state_dir
from edged.config.yamlfile import MAX_BYTES, MAX_DEPTH, Location, read_config_text
from edged.plugin.config import Strict

MIB = 1 << 20


def _state_dir() -> Path:
    # systemd's StateDirectory= sets this (as for `edged run`); elsewhere ./state, which a
    # loaded config resolves like any relative path it holds.
    return default_state_dir()


class CaptureSection(CapturePolicy):
    """Where CaptureData records go; the capture store's settings (docs/capture.md).
    ``disk_path`` defaults to $STATE_DIRECTORY/capture."""


class AgentConfig(Strict):
    """Everything ``edged agent`` needs, from either file format."""

    device_name: str = Field(min_length=1, max_length=128,
                             description="This device's name (capture paths, logs).")
    fleet_name: str | None = Field(None, description="The device fleet's name.")
    region: str | None = Field(None, description="AWS region of the S3 bucket.")
    model_roots: list[Path] = Field(
        default_factory=lambda: [_state_dir() / "models"], min_length=1,
        description="Directories LoadModel may load from; a relative url resolves "
        "against the first. Default: $STATE_DIRECTORY/models.")
    max_request_bytes: int = Field(
        16 * MIB, ge=1024, le=2**31 - 1,
        description="Largest request accepted; bigger ones fail with RESOURCE_EXHAUSTED. "
        "Large tensors belong in shared memory.")
    max_loaded_models: int = Field(16, ge=1, le=1024,
                                   description="Models loaded at once at most.")
    max_inflight_bytes: int = Field(
        512 * MIB, ge=MIB, le=2**48,
        description="Working memory the Predict and CaptureData calls in flight may take "
        "together, as estimated before each runs (input bytes x the model's measured "
        "factor); a call beyond it fails at once with RESOURCE_EXHAUSTED.")
    max_batch: int = Field(
        1024, ge=1, le=2**31 - 1,
        description="Largest leading dimension (batch) of a Predict input; larger ones "
        "fail with RESOURCE_EXHAUSTED.")
    max_concurrent_rpcs: int = Field(
        16, ge=1, le=4096,
        description="Calls served at once; gRPC refuses more with RESOURCE_EXHAUSTED "
        "before reading them (each may hold up to max_request_bytes).")
    predict_threads: int = Field(
        default_factory=lambda: max(2, min(8, os.cpu_count() or 2)), ge=1, le=256,
        description="Predict calls running at once (ONNX Runtime releases the GIL).")
    session_threads: int = Field(
        1, ge=1, le=64,
        description="ONNX Runtime intra-op threads per call; 1 lets concurrent "
        "Predicts use the cores instead.")
    shm_prefix: str = Field(
        "edged-", pattern=r"^[A-Za-z0-9._-]{0,200}$",
        description="segment_id N names the POSIX shared-memory object /<prefix>N.")
    verify_models: bool = Field(
        True, description="Check the SHA-256 of every file a model's manifest lists.")
    restore_models: bool = Field(
        False, description="Remember the loaded models (name, url) in "
        "<capture disk_path>/.loaded-models.json and load them again at start, so that a "
        "client that loaded its model once finds it after the agent restarts. Off: a "
        "restart starts with no model loaded, as the old agent did.")
    capture: CaptureSection = Field(default_factory=CaptureSection)
    credentials: IotCredentialsSpec | None = Field(
        None, description="S3 credentials for the Cloud destination from the AWS IoT "
        "credentials provider, for the device's certificate (docs/credentials.md); the "
        "thing name defaults to device_name. Absent: the standard AWS chain.")

    @property
    def loaded_models_file(self) -> Path:
        """Where ``restore_models`` keeps the loaded set: beside the capture spool (both
        are the agent's state, and the spool's lock keeps a second agent off both)."""
        return self.capture_settings().disk_path / ".loaded-models.json"

    def capture_settings(self) -> CaptureSettings:
        c = self.capture
        return CaptureSettings(**{
            **c.model_dump(),
            "disk_path": c.disk_path or _state_dir() / "capture",
            "s3_region": self.region,
            "device_name": self.device_name,
            "fleet_name": self.fleet_name,
        })


class _YamlFile(Strict):
    """An edged YAML agent config: ``agent:`` plus the usual ``device:`` and ``log:``."""

    device: DeviceSpec = Field(default_factory=DeviceSpec)
    log: LogSpec = Field(default_factory=LogSpec)
    agent: dict[str, Any] = Field(description="The agent's settings (AgentConfig).")


@dataclass(frozen=True)
class LoadedAgentConfig:
    """A validated config, where it came from, and what was accepted but not used."""

    config: AgentConfig
    path: Path
    format: Literal["json", "yaml"]
    log: LogSpec
    #: (key, note) for each key that meant something to the old agent only.
    ignored: list[tuple[str, str]] = field(default_factory=list)
    #: The directory relative paths were resolved against: the working directory at
    #: start for the old agent's JSON (as the old agent did), the config file's own
    #: directory for edged YAML.
    relative_to: Path = Path("/")

    def paths(self) -> dict[str, str | list[str]]:
        """Every path the config names, absolute, for the agent to log once at start."""
        config = self.config
        paths: dict[str, str | list[str]] = {
            "model_roots": [str(root) for root in config.model_roots],
            "capture_disk_path": str(config.capture_settings().disk_path)}
        if config.credentials is not None:
            for name in ("cert_file", "key_file", "ca_file"):
                if (value := getattr(config.credentials, name)) is not None:
                    paths[name] = str(value)
        if config.restore_models:
            paths["loaded_models_file"] = str(config.loaded_models_file)
        return paths


# -- the agent JSON -------------------------------------------------------------------------

_CAPTURE = "sagemaker_edge_core_capture_data_"
_ENDPOINT = "sagemaker_edge_provider_aws_iot_cred_endpoint"
_CREDENTIAL_FILES = ("sagemaker_edge_provider_aws_cert_file",
                     "sagemaker_edge_provider_aws_cert_pk_file",
                     "sagemaker_edge_provider_aws_ca_cert_file")
_CREDENTIALS_NOTE = (f"not used without {_ENDPOINT}: S3 uploads take credentials from the "
                     "standard AWS chain (environment, shared files, instance role)")

_EMBED_NOTE = ("obsolete: tensors and auxiliary data are always inline (base64) in the "
               "capture record; there are no separate files")

#: JSON key -> location in the YAML shape (under ``agent:``).
JSON_KEYS: dict[str, Location] = {
    "sagemaker_edge_core_device_name": ("device_name",),
    "sagemaker_edge_core_device_fleet_name": ("fleet_name",),
    "sagemaker_edge_core_region": ("region",),
    "sagemaker_edge_provider_s3_bucket_name": ("capture", "s3_bucket"),
    f"{_CAPTURE}destination": ("capture", "destination"),
    f"{_CAPTURE}disk_path": ("capture", "disk_path"),
    "sagemaker_edge_core_folder_prefix": ("capture", "folder_prefix"),
    f"{_CAPTURE}buffer_size": ("capture", "buffer_size"),
    f"{_CAPTURE}batch_size": ("capture", "batch_size"),
    f"{_CAPTURE}push_period_seconds": ("capture", "push_period_s"),
    # The IoT credentials provider (edged.capture.credentials), used when the endpoint is set.
    _ENDPOINT: ("credentials", "endpoint"),
    "sagemaker_edge_provider_aws_cert_file": ("credentials", "cert_file"),
    "sagemaker_edge_provider_aws_cert_pk_file": ("credentials", "key_file"),
    "sagemaker_edge_provider_aws_ca_cert_file": ("credentials", "ca_file"),
    # edged's own settings, for devices that keep the JSON file.
    "edged_model_roots": ("model_roots",),
    "edged_max_request_bytes": ("max_request_bytes",),
    "edged_max_loaded_models": ("max_loaded_models",),
    "edged_max_inflight_bytes": ("max_inflight_bytes",),
    "edged_max_batch": ("max_batch",),
    "edged_max_concurrent_rpcs": ("max_concurrent_rpcs",),
    "edged_predict_threads": ("predict_threads",),
    "edged_session_threads": ("session_threads",),
    "edged_shm_prefix": ("shm_prefix",),
    "edged_verify_models": ("verify_models",),
    "edged_restore_models": ("restore_models",),
    "edged_s3_endpoint_url": ("capture", "s3_endpoint_url"),
    "edged_capture_fsync": ("capture", "fsync"),
}

#: Keys the old agent read that edged accepts and does not use, with the reason.
IGNORED_KEYS: dict[str, str] = {
    "sagemaker_edge_core_root_certs_path":
        "not used: models are not signed with AWS's key; edged checks the SHA-256 of "
        "every file listed in a model's manifest.json",
    "sagemaker_edge_provider_provider_path":
        "obsolete: S3 upload is built into edged; no provider library is loaded",
    f"{_CAPTURE}periodic_upload":
        "obsolete: captures are flushed when batch_size are pending or every "
        "push_period_seconds",
    f"{_CAPTURE}periodic_upload_period_seconds":
        "obsolete: captures are flushed when batch_size are pending or every "
        "push_period_seconds",
    "sagemaker_edge_telemetry_libsystemd_path":
        "obsolete: edged speaks the systemd notify protocol itself",
    f"{_CAPTURE}base64_embed_limit": _EMBED_NOTE,
}

_PROVIDER = "sagemaker_edge_provider_provider"
_VERBOSE = "sagemaker_edge_log_verbose"
_JSON_LOG_FORMAT = "edged_log_format"


def _json_lines(text: str) -> dict[str, int]:
    """The line of each top-level key's first appearance (the json module has none)."""
    lines: dict[str, int] = {}
    for match in re.finditer(r'"((?:[^"\\]|\\.)*)"\s*:', text):
        lines.setdefault(match.group(1), text.count("\n", 0, match.start()) + 1)
    return lines


class _JsonProblems(_Problems):
    """Reports a location in the YAML shape under the JSON key it came from."""

    _reverse: dict[Location, str] = {loc: key for key, loc in JSON_KEYS.items()}

    def __init__(self, filename: str, key_lines: dict[str, int]) -> None:
        super().__init__(filename, {})
        self.key_lines = key_lines

    def add_key(self, key: str, message: str) -> None:
        line = self.key_lines.get(key)
        where = f"{self.filename}, line {line}" if line else self.filename
        self.items.append(f"Invalid config for '{key}' at {where}: {message}")

    def add(self, loc: Location, message: str) -> None:
        for n in range(len(loc), 0, -1):
            key = self._reverse.get(tuple(loc[:n]))
            if key is not None:
                message = message.replace(f"key '{loc[-1]}'", f"key '{key}'")
                self.add_key(key, message)
                return
        self.add_key(".".join(str(p) for p in loc) or "(top level)", message)


def _read_json(text: str) -> Any:
    """The agent JSON under the config files' bounds; a key given twice is a mistake, not
    a silent override."""
    return strict_loads(text, max_bytes=MAX_BYTES, max_depth=MAX_DEPTH)


def _parse_json(text: str, filename: str, cwd: Path) -> LoadedAgentConfig:
    try:
        data = _read_json(text)
    except JsonError as exc:
        raise ConfigError([f"Invalid JSON at {filename}: {exc}"]) from None
    problems = _JsonProblems(filename, _json_lines(text))
    if not isinstance(data, dict):
        problems.add((), "the file must hold one JSON object of sagemaker_edge_* keys")
        raise ConfigError(problems.items)
    add = problems.add_key

    shaped: dict[str, Any] = {}
    ignored: list[tuple[str, str]] = []
    log = LogSpec()
    for key, value in data.items():
        if key in JSON_KEYS:
            *parents, last = JSON_KEYS[key]
            target = shaped
            for part in parents:
                target = target.setdefault(str(part), {})
            target[str(last)] = value
        elif key in IGNORED_KEYS:
            ignored.append((key, IGNORED_KEYS[key]))
        elif key == _PROVIDER:
            if value not in ("Aws", "None"):
                add(key, f"must be 'Aws' or 'None' (got {value!r})")
        elif key == _VERBOSE:
            if not isinstance(value, bool | int | str):
                add(key, f"must be true or false (got {value!r})")
            elif str(value).lower() in ("true", "1"):
                log = LogSpec(level="debug")
        elif key == _JSON_LOG_FORMAT:
            if value not in ("auto", "json", "console"):
                add(key, f"must be 'auto', 'json' or 'console' (got {value!r})")
            else:
                log = LogSpec(level=log.level, format=value)
        elif key.startswith("sagemaker_edge_"):
            # Another agent release may have written keys this one never knew; a device
            # must still be able to switch agents without editing its file.
            ignored.append((key, "unknown to edged: ignored"))
        else:
            add(key, f"unknown key '{key}' (the agent JSON holds sagemaker_edge_* and "
                "edged_* keys; see docs/agent.md)")
    shaped.setdefault("device_name", DeviceSpec().id)
    _credentials(data, shaped, ignored, add)
    if data.get(_PROVIDER) == "None" and data.get(f"{_CAPTURE}destination") == "Cloud":
        add(f"{_CAPTURE}destination", "'Cloud' needs sagemaker_edge_provider_provider 'Aws' "
            "(it is 'None')")
    if isinstance(shaped.get("model_roots"), str):
        shaped["model_roots"] = [shaped["model_roots"]]
    if "model_roots" not in shaped and cwd != Path(cwd.anchor):
        # The old agent loaded a url like agent/model/0/NAME/1.0 from its working
        # directory. Never the file system's root, though (a service without
        # WorkingDirectory= runs in /): every path would be under it.
        shaped["model_roots"] = [str(cwd)]

    # The old agent opened ./agent/certificates/... and ./agent/capture from where it was
    # started; a device's file and start script were written for that.
    config = _validate(shaped, (), problems, cwd)
    if problems.items or config is None:
        raise ConfigError(problems.items)
    return LoadedAgentConfig(config, Path(filename), "json", log, ignored, cwd)


def _credentials(data: dict[str, Any], shaped: dict[str, Any],
                 ignored: list[tuple[str, str]], add: Any) -> None:
    """The old agent's IoT credentials keys as a ``credentials: {provider: iot}``
    section; the certificate keys alone (an empty endpoint) are ignored."""
    credentials = shaped.get("credentials")
    if credentials is None:
        return
    if not data.get(_ENDPOINT):
        del shaped["credentials"]
        ignored.extend((key, _CREDENTIALS_NOTE) for key in (_ENDPOINT, *_CREDENTIAL_FILES)
                       if key in data)
        return
    credentials["provider"] = "iot"
    try:
        _, _, alias = split_iot_endpoint(str(data[_ENDPOINT]))
    except ValueError:
        return  # the section's own validation reports it, under the endpoint's key
    fleet = data.get("sagemaker_edge_core_device_fleet_name")
    if alias is None and fleet:
        # The alias SageMaker Edge Manager's CreateDeviceFleet makes for a fleet.
        credentials["role_alias"] = f"SageMakerEdge-{fleet}"
    elif alias is None:
        add(_ENDPOINT, "give the full https://<endpoint>/role-aliases/<role alias>/credentials "
            "URL, or sagemaker_edge_core_device_fleet_name for the fleet's alias "
            "SageMakerEdge-<fleet>")
        del shaped["credentials"]


# -- edged YAML -----------------------------------------------------------------------------


def _parse_yaml(text: str, filename: str) -> LoadedAgentConfig:
    data, lines = load_config_yaml(text, filename)
    problems = _Problems(filename, lines)
    if not isinstance(data, dict):
        problems.add((), "the file must hold a mapping with an 'agent' section")
        raise ConfigError(problems.items)
    try:
        top = _YamlFile.model_validate(data)
    except ValidationError as exc:
        problems.add_validation((), exc)
        raise ConfigError(problems.items) from None
    body = dict(top.agent)
    body.setdefault("device_name", top.device.id)
    ignored: list[tuple[str, str]] = []
    capture = body.get("capture")
    if isinstance(capture, dict) and "base64_embed_limit" in capture:
        # Meaningful in earlier releases: a file written for them must still load.
        body["capture"] = {k: v for k, v in capture.items() if k != "base64_embed_limit"}
        ignored.append(("agent.capture.base64_embed_limit", _EMBED_NOTE))
    # Relative paths are relative to the config file, wherever the agent was started.
    base = Path(filename).resolve().parent
    config = _validate(body, ("agent",), problems, base)
    if problems.items or config is None:
        raise ConfigError(problems.items)
    return LoadedAgentConfig(config, Path(filename), "yaml", top.log, ignored, base)


# -- both -------------------------------------------------------------------------------------


def _validate(body: dict[str, Any], prefix: Location, problems: _Problems,
              base: Path) -> AgentConfig | None:
    """The config, every relative path in it resolved against ``base``."""
    try:
        config = AgentConfig.model_validate(body)
    except ValidationError as exc:
        problems.add_validation(prefix, exc)
        return None
    capture = config.capture
    if capture.batch_size > capture.buffer_size:
        problems.add((*prefix, "capture", "batch_size"),
                     f"must not exceed buffer_size ({capture.buffer_size}); at most half of "
                     f"it is advised (got {capture.batch_size})")
    if capture.destination == "Cloud" and not capture.s3_bucket:
        problems.add((*prefix, "capture", "s3_bucket"),
                     "the Cloud destination needs an S3 bucket")
    if capture.destination == "Cloud":
        # Checked here, not at the capture store's start: a missing boto3 is a config
        # error (exit 78), as for the daemon (edged.config.dependencies).
        problem = missing("Cloud (S3) capture", BOTO3)
        if problem is not None:
            problems.add((*prefix, "capture", "destination"), problem)
    updates: dict[str, Any] = {
        "model_roots": [base / root if not root.is_absolute() else root
                        for root in config.model_roots]}
    if config.credentials is not None:
        c = config.credentials
        updates["credentials"] = c.model_copy(update={
            name: base / path for name in ("cert_file", "key_file", "ca_file")
            if (path := getattr(c, name)) is not None and not path.is_absolute()})
    disk_path = capture.disk_path if capture.disk_path is not None else (
        _state_dir() / "capture")
    if not disk_path.is_absolute():
        updates["capture"] = capture.model_copy(update={"disk_path": base / disk_path})
    config = config.model_copy(update=updates)
    # The capture store's own checks (folder_prefix, ...) belong to the config check too,
    # not to a failed start.
    try:
        if capture.destination == "Disk" or capture.s3_bucket:  # else reported above
            config.capture_settings()
    except ValidationError as exc:
        for item in exc.errors(include_url=False):
            key = str(item["loc"][0]) if item["loc"] else ""
            loc = (*prefix, "capture", key) if key in CaptureSection.model_fields else (
                (*prefix, "capture", "folder_prefix") if not key else (*prefix, key))
            message = item["msg"].removeprefix("Value error, ")
            problems.add(loc, message)
    return config


def parse_agent_config(text: str, filename: str, *,
                       cwd: Path | None = None) -> LoadedAgentConfig:
    """Validate ``text`` (agent JSON or edged YAML); raise :class:`ConfigError` listing
    every mistake, each located. ``cwd``: the working directory the old agent's JSON is
    relative to (default: this process's)."""
    if text.lstrip().startswith("{") and not _edged_shape(text):
        return _parse_json(text, filename, cwd or Path.cwd())
    return _parse_yaml(text, filename)


def _edged_shape(text: str) -> bool:
    """JSON is YAML too: an object with an ``agent`` section is edged's format."""
    try:
        data = _read_json(text)
    except JsonError:
        return False
    return isinstance(data, dict) and "agent" in data and not any(
        str(key).startswith("sagemaker_edge_") for key in data)


def load_agent_config(path: Path | str, *, cwd: Path | None = None) -> LoadedAgentConfig:
    path = Path(path)
    return parse_agent_config(read_config_text(path), str(path), cwd=cwd)
