"""The base of every exception edged raises on purpose, and the errors shared across
packages. A package's own errors live beside its code (``edged.model.bundle.errors``,
``edged.agent.errors``, ``edged.cloud.jobs.protocol``, ...), all subclasses of EdgedError."""

from __future__ import annotations


class EdgedError(Exception):
    """Base class of edged's own errors."""


class ConfigError(EdgedError):
    """A configuration is invalid; `problems` holds one located message per mistake."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class PluginError(EdgedError):
    """A plugin could not be loaded or registered something inconsistent."""


class ComponentStartError(EdgedError):
    """A component failed to start and its start-up policy says the daemon must not run."""


class ModelError(EdgedError):
    """A model directory or file is missing, malformed or incompatible with its pipeline."""


class GoldenError(ModelError):
    """A model's golden pairs are unreadable or not reproduced; ``reason`` is the bundle
    refusal reason it is reported under: too_large, malformed or golden_failed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RowError(EdgedError):
    """One sensor row was rejected; `reason` is the counter it is tallied under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
