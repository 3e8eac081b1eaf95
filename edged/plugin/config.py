"""The config bases every plugin builds on: strict models, secrets from the environment,
the start-up policy, bounded queues, and the base config of each component kind.

A plugin's config model subclasses its kind's base (``SourceConfig``, ...) with
``type: Literal["name"]``; unknown keys are errors everywhere (``Strict``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr
from pydantic_core import PydanticCustomError

from edged.base.secrets import SECRET_REFERENCE, SecretError, resolve_secret

NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _secret_from_env(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value
    match = SECRET_REFERENCE.fullmatch(value) if isinstance(value, str) else None
    # A custom error type, so that located messages never echo the value: a secret
    # written in the file must not be copied into logs too.
    if match is None:
        raise PydanticCustomError(
            "env_secret",
            "a secret must reference an environment variable, like ${EDGED_TOKEN}, "
            "not be written in the file",
        )
    try:  # a systemd credential $CREDENTIALS_DIRECTORY/NAME, else the environment
        return SecretStr(resolve_secret(match.group(1)))
    except SecretError as exc:
        raise PydanticCustomError("env_secret", str(exc)) from None


#: A secret field: written in YAML as ``${NAME}``, read from the systemd credential
#: ``$CREDENTIALS_DIRECTORY/NAME`` or else the environment (edged.base.secrets).
EnvSecret = Annotated[SecretStr, BeforeValidator(_secret_from_env)]


class StartPolicy(Strict):
    """What the runtime does when a component fails to start."""

    policy: Literal["fail", "retry", "disable"] = Field(
        "fail",
        description="fail: the daemon does not start; retry: try again with jittered "
        "backoff, then fail; disable: log the reason and run without the component.",
    )
    attempts: int = Field(5, ge=1, description="Start attempts under the retry policy.")
    backoff_s: float = Field(1.0, gt=0, description="Bound of the first retry delay (drawn "
                             "uniformly below it, full jitter); doubles each time.")
    max_backoff_s: float = Field(30.0, gt=0, description="Upper bound of the retry delay.")


class QueueConfig(Strict):
    """A bounded queue between two stages."""

    size: int = Field(ge=1, le=10_000_000, description="Items the queue holds at most.")
    overflow: Literal["drop_oldest", "drop_newest", "block"] = Field(
        description="When full: drop the oldest item, drop the new one, or make the "
        "producer wait. Every drop is counted."
    )


class ComponentConfig(Strict):
    """Fields every component has; plugin config models subclass a kind's base."""

    type: str = Field(description="The registered component type.")
    on_start_failure: StartPolicy = Field(default_factory=StartPolicy)


class SourceConfig(ComponentConfig):
    """Base of sensor-source configs."""


class PreprocessorConfig(ComponentConfig):
    """Base of preprocessor configs."""


class InferenceConfig(ComponentConfig):
    """Base of inference-backend configs."""


class ActuatorConfig(ComponentConfig):
    """Base of actuator configs: wiring, debounce and cooldown are the runtime's."""

    inputs: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        min_length=1, description="Pipelines whose events this actuator receives."
    )
    debounce: int = Field(
        2, ge=1, description="Act after this many consecutive anomalous decisions."
    )
    clear_after: int = Field(
        4, ge=1, description="Clear an alarm after this many consecutive healthy decisions."
    )
    cooldown_s: float = Field(
        30.0, ge=0, description="Least time between two alarms for the same turbine."
    )
    events: list[Literal["alarm", "clear", "sensor_stale", "sensor_recovered"]] = Field(
        default_factory=lambda: ["alarm", "clear", "sensor_stale", "sensor_recovered"],
        description="Event kinds delivered to this actuator.",
    )
    queue: QueueConfig = Field(
        default_factory=lambda: QueueConfig(size=1000, overflow="drop_oldest"),
        description="Events waiting for this actuator.",
    )
