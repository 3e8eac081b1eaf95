"""The AWS IoT Jobs MQTT contract, device side: topics, requests, replies and limits.

Pure functions and dataclasses, no I/O: the executor and the tests' jobs service
(``tests/support/jobs_peer.py``) both speak through them, so the two cannot drift apart.
/work/shared/reference/iot-jobs.md is the contract; docs/jobs.md says what is built.

The jobs package's exceptions live here, one place for all of them.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from edged.base.errors import EdgedError
from edged.base.strict_json import JsonError
from edged.base.strict_json import loads as strict_loads
from edged.config.cloud import STEP_TIMEOUT_MINUTES

JOB_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
STATUS_KEY = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
STATUS_VALUE_MAX = 1024  # in UTF-16 code units, as the service counts them
#: What an empty statusDetails value becomes: the service takes 1 to 1,024 characters.
EMPTY_VALUE = "-"
#: What a character of Unicode category C other than a control becomes (a format
#: character such as a zero-width space, a lone surrogate, private use, unassigned).
REPLACEMENT = "\ufffd"
#: clientToken: 1-64 of the printable ASCII characters but space.
_TOKEN = re.compile(r"[\x21-\x7e]{1,64}")
#: ``$next`` names the next pending execution in describe requests.
NEXT = "$next"

#: Statuses the device may set; the rest are the service's.
DEVICE_STATUSES = frozenset({"IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"})
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "REMOVED",
                               "CANCELED"})
STATUSES = frozenset({"QUEUED", "IN_PROGRESS"}) | TERMINAL_STATUSES
#: The codes of a rejected reply over MQTT: AWS's whole list.
CODES = frozenset({"InvalidTopic", "InvalidJson", "InvalidRequest", "InvalidStateTransition",
                   "ResourceNotFound", "VersionMismatch", "InternalError", "RequestThrottled",
                   "TerminalStateReached"})
#: Refusals to ask again after a pause: the service is busy, the request is not wrong.
TRANSIENT_CODES = frozenset({"RequestThrottled", "InternalError"})
#: Refusals that say the execution is no longer the device's: it ended (a terminal
#: status cannot change; describing one answers TerminalStateReached) or was deleted.
GONE_CODES = frozenset({"InvalidStateTransition", "TerminalStateReached", "ResourceNotFound"})
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

def utf16_length(value: str) -> int:
    """``value``'s length as the service counts it: UTF-16 code units (a character
    outside the Basic Multilingual Plane, an emoji say, counts twice)."""
    return len(value.encode("utf-16-le", "surrogatepass")) // 2


def invisible(value: str) -> int | None:
    """The index of the first character of Unicode category C (``\\p{C}``: control,
    format, surrogate, private use, unassigned) in ``value``, or None. AWS refuses a
    statusDetails value holding one (``[^\\p{C}]+``)."""
    if value.isprintable():
        return None  # the fast path: printable text holds no character of category C
    for index, char in enumerate(value):
        if unicodedata.category(char)[0] == "C":
            return index
    return None


def check_status_details(details: dict[str, str]) -> dict[str, str]:
    """``details`` if every key and value fits the contract, else an error naming it:
    keys 1-128 of ``[a-zA-Z0-9:_-]``, values 1-1,024 characters (UTF-16 code units)
    matching ``[^\\p{C}]+``."""
    if not isinstance(details, dict):
        raise JobsProtocolError("statusDetails must be an object of strings")
    for key, value in details.items():
        if not isinstance(key, str) or not STATUS_KEY.fullmatch(key):
            raise JobsProtocolError(f"statusDetails key {key!r}: 1-128 of [a-zA-Z0-9:_-]")
        if not isinstance(value, str) or not 1 <= utf16_length(value) <= STATUS_VALUE_MAX:
            raise JobsProtocolError(f"statusDetails[{key!r}]: a string of 1-1024 characters")
        at = invisible(value)
        if at is not None:
            raise JobsProtocolError(
                f"statusDetails[{key!r}] holds U+{ord(value[at]):04X} at {at} (category "
                f"{unicodedata.category(value[at])}): values match [^\\p{{C}}]+")
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


def _visible(value: str) -> str:
    """``value`` without a character of category C: a control (a line break, a tab in an
    exception's text) becomes a space, any other (zero-width space, BOM, soft hyphen, a
    lone surrogate, private use, unassigned) U+FFFD, which shows that something was
    there."""
    return "".join(
        char if unicodedata.category(char)[0] != "C" else
        " " if unicodedata.category(char) == "Cc" else REPLACEMENT
        for char in value)


def _first_units(value: str, units: int) -> str:
    """The longest start of ``value`` of at most ``units`` UTF-16 code units."""
    if utf16_length(value) <= units:
        return value
    kept, used = [], 0
    for char in value:
        used += 2 if ord(char) > 0xFFFF else 1
        if used > units:
            break
        kept.append(char)
    return "".join(kept)


def clamp_status_details(details: dict[str, Any]) -> Clamped:
    """Make progress details fit the limits, so that an update is never refused for
    them: invalid keys and None values are dropped, values become strings, characters of
    category C are replaced (see ``_visible``), long values are cut to 1,024 UTF-16 code
    units and an empty value becomes ``EMPTY_VALUE``. Each change is counted."""
    kept: dict[str, str] = {}
    truncated = dropped = cleaned = 0
    for key, raw in details.items():
        if not isinstance(key, str) or not STATUS_KEY.fullmatch(key) or raw is None:
            dropped += 1
            continue
        value = raw if isinstance(raw, str) else str(raw)
        if invisible(value) is not None:
            value = _visible(value)
            cleaned += 1
        if utf16_length(value) > STATUS_VALUE_MAX:
            value = _first_units(value, STATUS_VALUE_MAX)
            truncated += 1
        if not value:
            value = EMPTY_VALUE
            cleaned += 1
        kept[key] = value
    return Clamped(kept, truncated, dropped, cleaned)


def _step_timeout(minutes: int | None) -> int | None:
    low, high = STEP_TIMEOUT_MINUTES
    if minutes is not None and (type(minutes) is not int or not low <= minutes <= high):
        raise JobsProtocolError(f"stepTimeoutInMinutes {minutes!r}: {low}-{high}")
    return minutes


def check_client_token(client_token: str) -> str:
    """``client_token`` if the service takes it: 1-64 printable ASCII characters, no
    space."""
    if not isinstance(client_token, str) or not _TOKEN.fullmatch(client_token):
        raise JobsProtocolError(f"clientToken {client_token!r}: 1-64 printable ASCII "
                                "characters")
    return client_token



def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def start_next(client_token: str, status_details: dict[str, str] | None = None,
               step_timeout_minutes: int | None = None) -> bytes:
    """The payload of a start-next request."""
    payload: dict[str, Any] = {"clientToken": check_client_token(client_token)}
    if status_details is not None:
        payload["statusDetails"] = check_status_details(status_details)
    if _step_timeout(step_timeout_minutes) is not None:
        payload["stepTimeoutInMinutes"] = step_timeout_minutes
    return _encode(payload)


def get_pending(client_token: str) -> bytes:
    """The payload of a request for the pending list (publish it to
    ``get_pending_topic(thing)``)."""
    return _encode({"clientToken": check_client_token(client_token)})


def describe(job_id: str, client_token: str, include_document: bool = True,
             execution_number: int | None = None) -> bytes:
    """The payload of a describe request (publish it to ``describe_topic(thing, job_id)``)."""
    check_job_id(job_id, allow_next=True)
    payload: dict[str, Any] = {"clientToken": check_client_token(client_token),
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
    payload: dict[str, Any] = {"status": status, "clientToken": check_client_token(client_token),
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

class _Fields:
    """Reads one object of a reply field by field. A field whose value is not of the
    contract's type (a string version, a float time, a boolean number) is left unread,
    its path noted in ``unread``, instead of refusing the whole reply: what matters is
    read, and one odd value (a field AWS adds or changes) does not make the device wait
    for a reply that never comes."""

    def __init__(self, data: dict[str, Any], where: str, unread: list[str]) -> None:
        self.data = data
        self.where = where
        self.unread = unread

    def get(self, key: str, kind: type) -> Any:
        value = self.data.get(key)
        if value is None:
            return None
        # bool is an int in Python; the contract's numbers never are booleans.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            self.unread.append(f"{self.where}.{key}")
            return None
        return value

    def details(self) -> dict[str, str]:
        """``statusDetails``: its string-to-string entries (any other is left unread)."""
        details = self.get("statusDetails", dict) or {}
        kept = {k: v for k, v in details.items() if isinstance(k, str) and isinstance(v, str)}
        if len(kept) != len(details):
            self.unread.append(f"{self.where}.statusDetails")
        return kept

    def object(self, key: str) -> dict[str, Any] | None:
        return self.get(key, dict)


#: The fields of an execution that are read; the others are kept as they came (``extra``).
_EXECUTION_FIELDS = frozenset({
    "jobId", "thingName", "status", "statusDetails", "queuedAt", "startedAt",
    "lastUpdatedAt", "versionNumber", "executionNumber", "jobDocument"})


@dataclass(frozen=True)
class JobExecution:
    """One job execution as the service reports it (or its summary in a pending list).

    ``status`` is the service's word as sent: one this contract does not list is kept
    and counts as not terminal. ``unread`` names fields whose values were not of the
    contract's type (read as None); ``extra`` keeps the fields not read, as they came."""

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
    unread: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, document_error: str | None = None, *,
                  where: str = "execution", unread: list[str] | None = None
                  ) -> JobExecution:
        """The execution in ``data``; JobsProtocolError only if it is no object or has
        no valid ``jobId`` (without one nothing can be done with it)."""
        if not isinstance(data, dict):
            raise JobsProtocolError(f"{where} must be an object")
        job_id = data.get("jobId")
        if job_id is None:
            raise JobsProtocolError(f"{where} lacks 'jobId'")
        check_job_id(job_id)
        own: list[str] = []
        fields = _Fields(data, where, own)
        execution = cls(
            document_error=document_error,
            job_id=job_id,
            thing_name=fields.get("thingName", str), status=fields.get("status", str),
            status_details=fields.details(),
            queued_at=fields.get("queuedAt", int),
            started_at=fields.get("startedAt", int),
            last_updated_at=fields.get("lastUpdatedAt", int),
            version_number=fields.get("versionNumber", int),
            execution_number=fields.get("executionNumber", int),
            job_document=fields.object("jobDocument"),
            unread=tuple(own),
            extra={k: v for k, v in data.items()
                   if k not in _EXECUTION_FIELDS or f"{where}.{k}" in own},
        )
        if unread is not None:
            unread.extend(own)
        return execution


@dataclass(frozen=True)
class ExecutionState:
    """The short state an update reply carries (``executionState``)."""

    status: str | None = None
    status_details: dict[str, str] = field(default_factory=dict)
    version_number: int | None = None

    @classmethod
    def from_json(cls, data: Any, unread: list[str] | None = None) -> ExecutionState:
        if not isinstance(data, dict):
            raise JobsProtocolError("executionState must be an object")
        fields = _Fields(data, "executionState", [] if unread is None else unread)
        return cls(fields.get("status", str), fields.details(),
                   fields.get("versionNumber", int))


@dataclass(frozen=True)
class Accepted:
    """An accepted reply: ``execution`` (describe, start-next; None when nothing is
    pending), ``execution_state`` and ``job_document`` (update), ``in_progress`` and
    ``queued`` (the pending list's summaries); ``unread`` names the fields left unread
    (see ``_Fields``)."""

    client_token: str | None = None
    timestamp: int | None = None
    execution: JobExecution | None = None
    execution_state: ExecutionState | None = None
    job_document: dict[str, Any] | None = None
    in_progress: tuple[JobExecution, ...] = ()
    queued: tuple[JobExecution, ...] = ()
    unread: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rejected:
    """A rejected reply: ``code`` such as VersionMismatch, with the current state if any."""

    code: str
    message: str | None = None
    client_token: str | None = None
    timestamp: int | None = None
    execution_state: ExecutionState | None = None
    unread: tuple[str, ...] = ()


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


def _summaries(fields: _Fields, key: str) -> tuple[JobExecution, ...]:
    """A pending list's summaries; one without a valid jobId is left unread."""
    entries = fields.get(key, list) or []
    found = []
    for index, entry in enumerate(entries):
        try:
            found.append(JobExecution.from_json(entry, where=f"{key}[{index}]",
                                                unread=fields.unread))
        except JobsProtocolError:
            fields.unread.append(f"{key}[{index}]")
    return tuple(found)


def parse_accepted(payload: bytes | str | dict[str, Any]) -> Accepted:
    data, repeated = _load(payload)
    execution = data.get("execution")
    if execution is None:
        _no_repeats(repeated)
    unread: list[str] = []
    fields = _Fields(data, "reply", unread)
    state = fields.object("executionState")
    return Accepted(
        client_token=fields.get("clientToken", str),
        timestamp=fields.get("timestamp", int),
        execution=None if execution is None else JobExecution.from_json(
            execution, repeated, unread=unread),
        execution_state=None if state is None else ExecutionState.from_json(state, unread),
        job_document=fields.object("jobDocument"),
        in_progress=_summaries(fields, "inProgressJobs"),
        queued=_summaries(fields, "queuedJobs"),
        unread=tuple(unread),
    )


def parse_rejected(payload: bytes | str | dict[str, Any]) -> Rejected:
    data, repeated = _load(payload)
    _no_repeats(repeated)
    code = data.get("code")
    if not isinstance(code, str):
        raise JobsProtocolError(f"a rejected reply without its 'code' string: {code!r}")
    unread: list[str] = []
    fields = _Fields(data, "reply", unread)
    state = fields.object("executionState")
    return Rejected(
        code=code,
        message=fields.get("message", str),
        client_token=fields.get("clientToken", str),
        timestamp=fields.get("timestamp", int),
        execution_state=None if state is None else ExecutionState.from_json(state, unread),
        unread=tuple(unread),
    )


def parse_notify_next(payload: bytes | str | dict[str, Any]) -> JobExecution | None:
    """The next execution a notify-next push announces; None when nothing is pending."""
    data, repeated = _load(payload)
    execution = data.get("execution")
    if execution is None:
        _no_repeats(repeated)
        return None
    return JobExecution.from_json(execution, repeated)


def parse_notify(payload: bytes | str | dict[str, Any]) -> frozenset[str]:
    """The ids of the executions a notify push lists as pending (IN_PROGRESS and QUEUED);
    an entry without a valid jobId is passed over."""
    data, repeated = _load(payload)
    _no_repeats(repeated)
    jobs = data.get("jobs")
    ids: set[str] = set()
    for status in ("IN_PROGRESS", "QUEUED"):
        entries = jobs.get(status) if isinstance(jobs, dict) else None
        for entry in entries if isinstance(entries, list) else ():
            job_id = entry.get("jobId") if isinstance(entry, dict) else None
            if isinstance(job_id, str) and JOB_ID.fullmatch(job_id):
                ids.add(job_id)
    return frozenset(ids)


def parse_reply(topic: str, payload: bytes | str, thing: str) -> tuple[Topic,
                                                                       Accepted | Rejected]:
    """A reply on one of ``thing``'s accepted/rejected topics, parsed; a reply meant for
    another thing, or a topic that is no reply, is refused."""
    parsed = parse_topic(topic, thing)
    if parsed.reply is None:
        raise JobsProtocolError(f"{topic!r} is not a reply topic")
    reply = parse_accepted(payload) if parsed.reply == "accepted" else parse_rejected(payload)
    return parsed, reply
