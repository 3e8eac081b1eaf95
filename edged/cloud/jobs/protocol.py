"""The AWS IoT Jobs MQTT contract, device side: topics, requests, replies and limits.

Pure functions and dataclasses, no I/O: the executor and the tests' jobs service
(``tests/support/jobs_peer.py``) both speak through them, so the two cannot drift apart.
/work/shared/reference/iot-jobs.md is the contract; docs/jobs.md says what is built.

The jobs package's exceptions live here, one place for all of them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from edged.base.errors import EdgedError
from edged.base.strict_json import JsonError
from edged.base.strict_json import loads as strict_loads
from edged.config.cloud import STEP_TIMEOUT_MINUTES

JOB_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
STATUS_KEY = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
STATUS_VALUE_MAX = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: ``$next`` names the next pending execution in describe requests.
NEXT = "$next"

#: Statuses the device may set; the rest are the service's.
DEVICE_STATUSES = frozenset({"IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"})
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "REMOVED",
                               "CANCELED"})
STATUSES = frozenset({"QUEUED", "IN_PROGRESS"}) | TERMINAL_STATUSES
#: Largest reply read: AWS IoT's own cap on an MQTT message (a job document is at most
#: 32,768 characters of it).
MAX_REPLY_BYTES = 128 * 1024


class JobsProtocolError(EdgedError):
    """A jobs request, reply or topic breaks the contract."""


class JobDocumentError(EdgedError):
    """A job document is refused for good; ``reason`` says why (never retryable)."""

    REASONS = frozenset({"malformed", "too_large"})

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown job document error reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retryable = False


# -- topics ------------------------------------------------------------------------------

def _check_thing(thing: str) -> str:
    # Thing names are 1-128 of [a-zA-Z0-9:_-]; a '/' or wildcard would escape the prefix.
    if not STATUS_KEY.fullmatch(thing):
        raise JobsProtocolError(f"invalid thing name {thing!r}")
    return thing


def check_job_id(job_id: str, *, allow_next: bool = False) -> str:
    """``job_id`` if it fits the contract (1-64 of ``[a-zA-Z0-9_-]``), else an error."""
    if allow_next and job_id == NEXT:
        return job_id
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise JobsProtocolError(f"invalid jobId {job_id!r}: 1-64 of [a-zA-Z0-9_-]")
    return job_id


def prefix(thing: str) -> str:
    return f"$aws/things/{_check_thing(thing)}/jobs"


def start_next_topic(thing: str) -> str:
    return f"{prefix(thing)}/start-next"


def describe_topic(thing: str, job_id: str) -> str:
    return f"{prefix(thing)}/{check_job_id(job_id, allow_next=True)}/get"


def update_topic(thing: str, job_id: str) -> str:
    return f"{prefix(thing)}/{check_job_id(job_id)}/update"


def get_pending_topic(thing: str) -> str:
    return f"{prefix(thing)}/get"


def notify_next_topic(thing: str) -> str:
    return f"{prefix(thing)}/notify-next"


def notify_topic(thing: str) -> str:
    return f"{prefix(thing)}/notify"


def accepted(request_topic: str) -> str:
    return f"{request_topic}/accepted"


def rejected(request_topic: str) -> str:
    return f"{request_topic}/rejected"


def reply_subscriptions(thing: str) -> list[str]:
    """What a device subscribes to: both pushes and every reply of its own thing."""
    base = prefix(thing)
    return [f"{base}/notify-next", f"{base}/notify", f"{base}/start-next/+",
            f"{base}/get/+", f"{base}/+/get/+", f"{base}/+/update/+"]


@dataclass(frozen=True)
class Topic:
    """A parsed jobs topic: ``operation`` is one of start-next, get, describe, update,
    notify, notify-next; ``reply`` is accepted, rejected or None (a request or a push)."""

    thing: str
    operation: str
    job_id: str | None = None
    reply: str | None = None


def parse_topic(topic: str, thing: str | None = None) -> Topic:
    """Parse a jobs topic; with ``thing``, refuse topics of any other thing (the contract:
    check the thing name before acting on a reply)."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[:2] != ["$aws", "things"] or parts[3] != "jobs":
        raise JobsProtocolError(f"not a jobs topic: {topic!r}")
    name, rest = parts[2], parts[4:]
    if thing is not None and name != thing:
        raise JobsProtocolError(f"topic {topic!r} is for thing {name!r}, not {thing!r}")
    _check_thing(name)
    reply = None
    if rest[-1] in ("accepted", "rejected"):
        reply, rest = rest[-1], rest[:-1]
    if rest == ["start-next"]:
        return Topic(name, "start-next", None, reply)
    if rest == ["get"]:
        return Topic(name, "get", None, reply)
    if rest in (["notify"], ["notify-next"]) and reply is None:
        return Topic(name, rest[0], None, None)
    if len(rest) == 2 and rest[1] in ("get", "update"):
        job_id = check_job_id(rest[0], allow_next=rest[1] == "get")
        return Topic(name, "describe" if rest[1] == "get" else "update", job_id, reply)
    raise JobsProtocolError(f"unknown jobs operation in {topic!r}")


# -- requests ----------------------------------------------------------------------------

def check_status_details(details: dict[str, str]) -> dict[str, str]:
    """``details`` if every key and value fits the contract, else an error naming it."""
    if not isinstance(details, dict):
        raise JobsProtocolError("statusDetails must be an object of strings")
    for key, value in details.items():
        if not isinstance(key, str) or not STATUS_KEY.fullmatch(key):
            raise JobsProtocolError(f"statusDetails key {key!r}: 1-128 of [a-zA-Z0-9:_-]")
        if not isinstance(value, str) or not 1 <= len(value) <= STATUS_VALUE_MAX:
            raise JobsProtocolError(f"statusDetails[{key!r}]: a string of 1-1024 characters")
        if _CONTROL.search(value):
            raise JobsProtocolError(f"statusDetails[{key!r}] holds control characters")
    return details


@dataclass(frozen=True)
class Clamped:
    """What ``clamp_status_details`` kept and how much it had to change."""

    details: dict[str, str]
    truncated: int = 0
    dropped: int = 0
    cleaned: int = 0

    @property
    def changed(self) -> int:
        return self.truncated + self.dropped + self.cleaned


def clamp_status_details(details: dict[str, Any]) -> Clamped:
    """Make progress details fit the limits, so that an update is never rejected for them:
    invalid keys are dropped, values become strings, control characters become spaces,
    long values are truncated and empty ones dropped. Each change is counted."""
    kept: dict[str, str] = {}
    truncated = dropped = cleaned = 0
    for key, raw in details.items():
        if not isinstance(key, str) or not STATUS_KEY.fullmatch(key) or raw is None:
            dropped += 1
            continue
        value = raw if isinstance(raw, str) else str(raw)
        value, n = _CONTROL.subn(" ", value)
        cleaned += bool(n)
        if len(value) > STATUS_VALUE_MAX:
            value = value[:STATUS_VALUE_MAX]
            truncated += 1
        if not value:
            dropped += 1
            continue
        kept[key] = value
    return Clamped(kept, truncated, dropped, cleaned)


def _step_timeout(minutes: int | None) -> int | None:
    low, high = STEP_TIMEOUT_MINUTES
    if minutes is not None and (type(minutes) is not int or not low <= minutes <= high):
        raise JobsProtocolError(f"stepTimeoutInMinutes {minutes!r}: {low}-{high}")
    return minutes


def _token(client_token: str) -> str:
    # The service limits clientToken to 64 printable characters.
    if not isinstance(client_token, str) or not 1 <= len(client_token) <= 64 or \
            _CONTROL.search(client_token):
        raise JobsProtocolError(f"clientToken {client_token!r}: 1-64 printable characters")
    return client_token


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def start_next(client_token: str, status_details: dict[str, str] | None = None,
               step_timeout_minutes: int | None = None) -> bytes:
    """The payload of a start-next request."""
    payload: dict[str, Any] = {"clientToken": _token(client_token)}
    if status_details is not None:
        payload["statusDetails"] = check_status_details(status_details)
    if _step_timeout(step_timeout_minutes) is not None:
        payload["stepTimeoutInMinutes"] = step_timeout_minutes
    return _encode(payload)


def describe(job_id: str, client_token: str, include_document: bool = True,
             execution_number: int | None = None) -> bytes:
    """The payload of a describe request (publish it to ``describe_topic(thing, job_id)``)."""
    check_job_id(job_id, allow_next=True)
    payload: dict[str, Any] = {"clientToken": _token(client_token),
                               "includeJobDocument": bool(include_document)}
    if execution_number is not None:
        if type(execution_number) is not int or execution_number < 1:
            raise JobsProtocolError(f"executionNumber {execution_number!r}: an integer >= 1")
        payload["executionNumber"] = execution_number
    return _encode(payload)


def update(job_id: str, status: str, client_token: str, status_details: dict[str, str],
           expected_version: int | None, step_timeout_minutes: int | None = None,
           include_state: bool = True) -> bytes:
    """The payload of an update request (publish it to ``update_topic(thing, job_id)``)."""
    check_job_id(job_id)
    if status not in DEVICE_STATUSES:
        raise JobsProtocolError(f"a device may not set status {status!r}: "
                                f"one of {sorted(DEVICE_STATUSES)}")
    payload: dict[str, Any] = {"status": status, "clientToken": _token(client_token),
                               "statusDetails": check_status_details(status_details),
                               "includeJobExecutionState": bool(include_state)}
    if expected_version is not None:
        if type(expected_version) is not int or expected_version < 1:
            raise JobsProtocolError(f"expectedVersion {expected_version!r}: an integer >= 1")
        payload["expectedVersion"] = expected_version
    if _step_timeout(step_timeout_minutes) is not None:
        payload["stepTimeoutInMinutes"] = step_timeout_minutes
    return _encode(payload)


# -- replies -----------------------------------------------------------------------------

def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...],
           required: bool = False) -> Any:
    value = data.get(key)
    if value is None:
        if required:
            raise JobsProtocolError(f"reply lacks {key!r}")
        return None
    # bool is an int in Python; the contract's numbers never are booleans.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (
            kind if isinstance(kind, tuple) else (kind,))):
        raise JobsProtocolError(f"reply field {key!r} has the wrong type: {value!r}")
    return value


def _status_and_details(data: dict) -> tuple[str | None, dict[str, str]]:
    """An execution's ``status`` and ``statusDetails``, checked."""
    status = _field(data, "status", str)
    if status is not None and status not in STATUSES:
        raise JobsProtocolError(f"unknown execution status {status!r}")
    details = _field(data, "statusDetails", dict) or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in details.items()):
        raise JobsProtocolError("statusDetails must map strings to strings")
    return status, dict(details)


@dataclass(frozen=True)
class JobExecution:
    """One job execution as the service reports it."""

    job_id: str
    thing_name: str | None = None
    status: str | None = None
    status_details: dict[str, str] = field(default_factory=dict)
    queued_at: int | None = None
    started_at: int | None = None
    last_updated_at: int | None = None
    version_number: int | None = None
    execution_number: int | None = None
    job_document: dict[str, Any] | None = None
    #: Why the document cannot be trusted as parsed: the reply that carried it repeats a
    #: key. The executor reports such an execution REJECTED and runs none of it.
    document_error: str | None = None

    @classmethod
    def from_json(cls, data: Any, document_error: str | None = None) -> JobExecution:
        if not isinstance(data, dict):
            raise JobsProtocolError("an execution must be an object")
        status, details = _status_and_details(data)
        return cls(
            document_error=document_error,
            job_id=check_job_id(_field(data, "jobId", str, required=True)),
            thing_name=_field(data, "thingName", str), status=status,
            status_details=details,
            queued_at=_field(data, "queuedAt", int),
            started_at=_field(data, "startedAt", int),
            last_updated_at=_field(data, "lastUpdatedAt", int),
            version_number=_field(data, "versionNumber", int),
            execution_number=_field(data, "executionNumber", int),
            job_document=_field(data, "jobDocument", dict),
        )


@dataclass(frozen=True)
class ExecutionState:
    """The short state an update reply carries (``executionState``)."""

    status: str | None = None
    status_details: dict[str, str] = field(default_factory=dict)
    version_number: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> ExecutionState:
        if not isinstance(data, dict):
            raise JobsProtocolError("executionState must be an object")
        status, details = _status_and_details(data)
        return cls(status, details, _field(data, "versionNumber", int))


@dataclass(frozen=True)
class Accepted:
    """An accepted reply: ``execution`` (start-next, describe; None when nothing is
    pending), ``execution_state`` and ``job_document`` (update)."""

    client_token: str | None = None
    timestamp: int | None = None
    execution: JobExecution | None = None
    execution_state: ExecutionState | None = None
    job_document: dict[str, Any] | None = None


@dataclass(frozen=True)
class Rejected:
    """A rejected reply: ``code`` such as VersionMismatch, with the current state if any."""

    code: str
    message: str | None = None
    client_token: str | None = None
    timestamp: int | None = None
    execution_state: ExecutionState | None = None


def _load(payload: bytes | str | dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The reply as an object, and what was wrong with it if it repeats a key.

    A repeated key (in practice inside a job document, which is written by whoever
    creates jobs) is not resolved by letting the last one win: the reply is read that
    way only so that the execution it carries can be refused by its id (REJECTED)
    instead of asked for again and again."""
    if isinstance(payload, dict):
        return payload, None
    repeated = None
    try:
        data = strict_loads(payload, max_bytes=MAX_REPLY_BYTES)
    except JsonError as exc:
        try:
            data = strict_loads(payload, max_bytes=MAX_REPLY_BYTES, repeated_keys=True)
        except JsonError:
            raise JobsProtocolError(f"reply refused: {exc}") from None
        repeated = str(exc)  # it parses but for the repeat: that was the only fault
    if not isinstance(data, dict):
        raise JobsProtocolError("reply must be a JSON object")
    return data, repeated


def _no_repeats(repeated: str | None) -> None:
    """A reply that carries no execution has nothing to refuse but itself."""
    if repeated is not None:
        raise JobsProtocolError(f"reply refused: {repeated}")


def parse_accepted(payload: bytes | str | dict[str, Any]) -> Accepted:
    data, repeated = _load(payload)
    execution = data.get("execution")
    state = data.get("executionState")
    if execution is None:
        _no_repeats(repeated)
    return Accepted(
        client_token=_field(data, "clientToken", str),
        timestamp=_field(data, "timestamp", int),
        execution=None if execution is None else JobExecution.from_json(execution, repeated),
        execution_state=None if state is None else ExecutionState.from_json(state),
        job_document=_field(data, "jobDocument", dict),
    )


def parse_rejected(payload: bytes | str | dict[str, Any]) -> Rejected:
    data, repeated = _load(payload)
    _no_repeats(repeated)
    state = data.get("executionState")
    return Rejected(
        code=_field(data, "code", str, required=True),
        message=_field(data, "message", str),
        client_token=_field(data, "clientToken", str),
        timestamp=_field(data, "timestamp", int),
        execution_state=None if state is None else ExecutionState.from_json(state),
    )


def parse_notify_next(payload: bytes | str | dict[str, Any]) -> JobExecution | None:
    """The next execution a notify-next push announces; None when nothing is pending."""
    data, repeated = _load(payload)
    execution = data.get("execution")
    if execution is None:
        _no_repeats(repeated)
        return None
    return JobExecution.from_json(execution, repeated)


def parse_reply(topic: str, payload: bytes | str, thing: str) -> tuple[Topic,
                                                                       Accepted | Rejected]:
    """A reply on one of ``thing``'s accepted/rejected topics, parsed; a reply meant for
    another thing, or a topic that is no reply, is refused."""
    parsed = parse_topic(topic, thing)
    if parsed.reply is None:
        raise JobsProtocolError(f"{topic!r} is not a reply topic")
    reply = parse_accepted(payload) if parsed.reply == "accepted" else parse_rejected(payload)
    return parsed, reply
