"""The plugin contract, in one import: ``from edged.plugin import ...``.

What a plugin registers (:class:`ComponentType`, :class:`CliCommand`, through the
``edged_*`` hooks marked with :data:`hookimpl`), what its components are (the protocols
``Source``, ``Preprocessor``, ``InferenceBackend``, ``Actuator`` and the ``Component``
base; ``SwappableBackend``, a backend that hot-swaps), what it is built with (its kind's
typed factory, like ``SourceFactory``; :class:`BuildContext`; its config model on a kind's
base), and what flows through them (``Readings``, ``Scores``, ``Decision``, ``Round``,
``Event``). The hook reference is :mod:`edged.plugin.hookspecs`; docs/plugins.md tells
the rest.
"""

from edged import hookimpl
from edged.base.errors import ModelError, RowError
from edged.plugin.alarm_payload import alarm_payload
from edged.plugin.components import (
    Actuator,
    BuildContext,
    Component,
    Emit,
    InferenceBackend,
    Preprocessor,
    Readings,
    Scores,
    Source,
    SwappableBackend,
)
from edged.plugin.config import (
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
from edged.plugin.events import Decision, Event, EventKind, ModelRef, Round
from edged.plugin.registry import (
    ActuatorFactory,
    CliCommand,
    ComponentType,
    InferenceFactory,
    Kind,
    PreprocessorFactory,
    ServiceFactory,
    ServiceType,
    SourceFactory,
)

__all__ = [
    "Actuator", "ActuatorConfig", "ActuatorFactory", "BuildContext", "CliCommand", "Component",
    "ComponentConfig", "ComponentType", "Decision", "Emit", "EnvSecret", "Event", "EventKind",
    "InferenceBackend", "InferenceConfig", "InferenceFactory", "Kind", "ModelError", "ModelRef",
    "Preprocessor", "PreprocessorConfig", "PreprocessorFactory", "QueueConfig", "Readings", "Round",
    "RowError", "Scores", "ServiceFactory", "ServiceType", "Source", "SourceConfig",
    "SourceFactory", "StartPolicy", "Strict",
    "SwappableBackend", "alarm_payload", "hookimpl",
]
