"""The agent's request errors, each carrying the gRPC status code it is answered with.

Raised by the model registry and the tensor decoding (plain Python, no grpc import), and
turned into a status by the server. docs/agent.md lists which request meets which code.
"""

from __future__ import annotations

from edged.base.errors import EdgedError


class AgentError(EdgedError):
    """A request the agent refuses; ``code`` names a ``grpc.StatusCode`` member and
    ``reason`` the refusal in counters and logs (by default the code, in lower case)."""

    code = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.code.lower()


class InvalidArgument(AgentError):
    """The request is malformed: a bad name, url, tensor size, data type or handle."""

    code = "INVALID_ARGUMENT"


class NotFound(AgentError):
    """No model of that name is loaded, or none at the url LoadModel was given (as the
    published agent.proto answers it)."""

    code = "NOT_FOUND"


class AlreadyExists(AgentError):
    """A model of that name is loaded (or being loaded)."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(AgentError):
    """The model exists but cannot run here: ONNX Runtime refuses it, or its package is
    broken (manifest, hashes, unsupported tensor types)."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(AgentError):
    """A limit is reached: loaded models, capture buffer, batch, memory in flight."""

    code = "RESOURCE_EXHAUSTED"


class PermissionDenied(AgentError):
    """The agent may not open a client's shared-memory segment."""

    code = "PERMISSION_DENIED"


class Unavailable(AgentError):
    """The capture store cannot take a record (not running, spool unwritable)."""

    code = "UNAVAILABLE"


class AgentStartError(EdgedError):
    """The agent cannot serve: the socket is taken, is not a socket, or cannot be bound."""
