"""The device side of AWS IoT Jobs over a real MQTT broker, as strict as AWS IoT Core.

``JobsService`` speaks the contract's topics and payloads (``edged.cloud.jobs.protocol``) on
any MQTT broker, so that a device's executor can be run against mosquitto without AWS::

    async with JobsService(broker.host, broker.port) as jobs:
        await jobs.queue_job("turbine-7", "deploy-7", document)
        ...  # the device talks to $aws/things/turbine-7/jobs/...

It is the core of the local jobs service (``edged_cloud.local_jobs.service``, which adds
rollouts and abort criteria on top) and of the tests' jobs peer (tests/support/jobs_peer.py).
It keeps executions per thing in memory, answers start-next, describe ($next too), get
and update, echoes ``clientToken``, and publishes notify-next and notify when the pending
list changes. It is as strict as AWS IoT Core where the device can tell
(/work/shared/reference/iot-jobs.md):

- ``expectedVersion`` (``VersionMismatch`` with the current state); an update of an ended
  execution is ``InvalidStateTransition``, describing one ``TerminalStateReached``, and a
  deleted one (``delete``) is ``ResourceNotFound``;
- statusDetails keys 1-128 of ``[a-zA-Z0-9:_-]``, values 1-1,024 characters (UTF-16 code
  units) of ``[^\\p{C}]+``, clientToken 1-64 printable ASCII characters, step timers 1 to
  10,080 minutes: anything else is ``InvalidRequest``;
- step timers (``stepTimeoutInMinutes`` of start-next or an IN_PROGRESS update, renewed
  only by another one) and a job's in-progress timeout run on ``clock``, a minute lasting
  ``minute_s`` of it: when one runs out the execution becomes TIMED_OUT;
- ``refuse(code, ...)`` answers matching requests ``RequestThrottled`` or
  ``InternalError`` (or any code) on demand, as a busy service does;
- a pre-signed URL placeholder is accepted only in AWS's forms (``queue_job`` refuses
  another, as CreateJob does): ``${aws:iot:s3-presigned-url-v2:https://s3.<region>.
  amazonaws.com/<bucket>/<key>}`` and the older ``${aws:iot:s3-presigned-url:https://
  s3.amazonaws.com/<bucket>/<key>}``, the key encoded as the S3 SDK encodes it (``%XX``
  for all but ``A-Za-z0-9-_.~/``). ``presign`` replaces them each time a document is
  sent, as the service does; with ``presign=None`` they go out unresolved.

By itself it runs no rollouts, retry configuration or abort criteria: one execution is
queued for one thing when its caller says so (``queue_job``), ended when it says so
(``cancel``). ``on_change(execution)`` is called after every change of an execution's
status, which is how the local jobs service counts outcomes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import time
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from edged.cloud.jobs import protocol
from edged.cloud.jobs.protocol import DEVICE_STATUSES, TERMINAL_STATUSES, JobsProtocolError

_PLACEHOLDER = re.compile(r"\$\{aws:iot:s3-presigned-url(-v2)?:([^}]*)\}")
#: A key as the S3 SDK writes it in a URL: unreserved characters and '/', the rest %XX.
_S3_KEY = r"(?:[A-Za-z0-9\-_.~/]|%[0-9A-F]{2})+"
_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_V2_URL = re.compile(rf"https://s3\.[a-z]{{2}}(?:-[a-z]+)+-\d\.amazonaws\.com/{_BUCKET}/"
                     rf"{_S3_KEY}")
_V1_URL = re.compile(rf"https://s3\.amazonaws\.com/{_BUCKET}/{_S3_KEY}")
MINUTES = (1, 10_080)  # step timers and in-progress timeouts
#: The MQTT rejection codes: AWS's whole list.
CODES = frozenset({"InvalidTopic", "InvalidJson", "InvalidRequest", "InvalidStateTransition",
                   "ResourceNotFound", "VersionMismatch", "InternalError", "RequestThrottled",
                   "TerminalStateReached"})
# AWS's own rules, written here from its API reference rather than taken from the device
# code under test (edged.cloud.jobs.protocol), so that a mistake there cannot pass here.
_DETAIL_KEY = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_CLIENT_TOKEN = re.compile(r"[\x21-\x7e]{1,64}")


def status_details_problem(details: Any) -> str | None:
    """Why AWS refuses ``details`` as statusDetails (InvalidRequest), or None: a map of
    keys ``[a-zA-Z0-9:_-]{1,128}`` to values of 1-1,024 UTF-16 code units matching
    ``[^\\p{C}]+`` (Java's length and Unicode category C)."""
    if not isinstance(details, dict):
        return "statusDetails must be an object"
    for key, value in details.items():
        if not _DETAIL_KEY.fullmatch(key):
            return f"statusDetails key {key!r} does not match [a-zA-Z0-9:_-]{{1,128}}"
        if not isinstance(value, str):
            return f"statusDetails[{key!r}] is not a string"
        units = len(value.encode("utf-16-le", "surrogatepass")) // 2
        if not 1 <= units <= 1024:
            return f"statusDetails[{key!r}] has {units} characters, not 1-1024"
        for char in value:
            if unicodedata.category(char).startswith("C"):
                return (f"statusDetails[{key!r}] does not match [^\\p{{C}}]+: "
                        f"U+{ord(char):04X}")
    return None


def placeholder_url(text: str) -> str:
    """The S3 URL of one ``${aws:iot:s3-presigned-url[-v2]:...}`` placeholder if it is
    in AWS's form, else ValueError saying what AWS expects."""
    found = _PLACEHOLDER.fullmatch(text)
    if found is None:
        raise ValueError(f"not a pre-signed URL placeholder: {text!r}")
    url = found.group(2)
    if found.group(1) and not _V2_URL.fullmatch(url):
        raise ValueError(f"the v2 placeholder takes https://s3.<region>.amazonaws.com/"
                         f"<bucket>/<key>, only the key URL-encoded, not {url!r}")
    if not found.group(1) and not _V1_URL.fullmatch(url):
        raise ValueError(f"the v1 placeholder takes https://s3.amazonaws.com/<bucket>/"
                         f"<key>, only the key URL-encoded, not {url!r}")
    return url


@dataclass
class Execution:
    """One job's execution on one thing, as the service holds it."""

    job_id: str
    thing: str
    document: dict[str, Any]
    queued_at: int
    status: str = "QUEUED"
    status_details: dict[str, str] = field(default_factory=dict)
    started_at: int | None = None
    last_updated_at: int | None = None
    version_number: int = 1
    execution_number: int = 1
    step_timeout_minutes: int | None = None
    #: The job's in-progress timeout (its timeoutConfig), started by IN_PROGRESS.
    in_progress_timeout_minutes: int | None = None
    #: When (on the service's clock) the step timer and the in-progress timer run out.
    step_deadline: float | None = None
    in_progress_deadline: float | None = None
    order: int = 0
    #: The document as queued, sent as it is (a key it repeats included), as the
    #: service stores and sends the text a job was created with.
    text: str = ""

    def state(self) -> dict[str, Any]:
        return {"status": self.status, "statusDetails": dict(self.status_details),
                "versionNumber": self.version_number}

    def summary(self) -> dict[str, Any]:
        found = {"jobId": self.job_id, "queuedAt": self.queued_at,
                 "lastUpdatedAt": self.last_updated_at or self.queued_at,
                 "versionNumber": self.version_number,
                 "executionNumber": self.execution_number}
        if self.started_at is not None:
            found["startedAt"] = self.started_at
        return found


@dataclass
class Refusal:
    """Requests the service answers with ``code`` on demand (``JobsService.refuse``):
    those of ``operation`` (start-next, describe, get, update), ``status`` (an update's)
    and ``job_id`` where given, ``times`` more times (None: until ``times`` is set)."""

    code: str
    times: int | None = 1
    operation: str | None = None
    status: str | None = None
    job_id: str | None = None

    def matches(self, parsed: protocol.Topic, request: dict[str, Any]) -> bool:
        return (self.times is None or self.times > 0) and \
            self.operation in (None, parsed.operation) and \
            self.status in (None, request.get("status")) and \
            self.job_id in (None, parsed.job_id)


class _Verbatim:
    """JSON text to be sent as it is inside a reply (``_dumps``), not re-serialised."""

    def __init__(self, text: str) -> None:
        self.text = text


def _dumps(payload: dict[str, Any]) -> str:
    """``payload`` as JSON, each ``_Verbatim`` in it written as its own text."""
    texts: list[str] = []
    # A token drawn afresh, so that no string of the payload can pass for a stand-in.
    token = uuid.uuid4().hex

    def stand_in(value: object) -> str:
        if not isinstance(value, _Verbatim):
            raise TypeError(f"{type(value).__name__} is not JSON")
        texts.append(value.text)
        return f"{token}:{len(texts) - 1}"

    encoded = json.dumps(payload, default=stand_in)
    return re.sub(f'"{token}:(\\d+)"', lambda match: texts[int(match.group(1))], encoded)


class _Refused(Exception):
    """A request the service rejects with ``code``."""

    def __init__(self, code: str, message: str, state: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.state = state


class JobsService:
    """An in-memory IoT Jobs service on an MQTT broker, started as an async context.

    ``clock`` is the service's clock (timestamps, timers); ``minute_s`` how long a minute
    of a step timer or an in-progress timeout lasts on it (60; a test compresses time
    with less, and the device under test must be told the same)."""

    def __init__(self, host: str, port: int, *,
                 presign: Callable[[str], str] | None = None,
                 clock: Callable[[], float] = time.time, minute_s: float = 60.0,
                 on_change: Callable[[Execution], None] | None = None) -> None:
        self.host = host
        self.port = port
        #: S3 URL (as the placeholder holds it) -> pre-signed URL; None leaves
        #: placeholders unresolved.
        self.presign = presign
        self.clock = clock
        self.minute_s = minute_s
        self.on_change = on_change
        self.jobs: dict[str, dict[str, Execution]] = {}
        #: Every request seen, in order: (topic, payload) for tests to inspect.
        self.requests: list[tuple[str, dict[str, Any] | None]] = []
        #: The on-demand refusals in force (``refuse``), and each one sent:
        #: (topic, request, code).
        self.refusals: list[Refusal] = []
        self.refused: list[tuple[str, dict[str, Any] | None, str]] = []
        #: Fields added to every execution and summary sent (what a newer service might
        #: send: a test checks the device reads the rest).
        self.execution_extras: dict[str, Any] = {}
        self._order = itertools.count()
        self._client: aiomqtt.Client | None = None
        self._tasks: list[asyncio.Task] = []
        self._identifier = f"edged-jobs-peer-{uuid.uuid4().hex[:8]}"

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> JobsService:
        # TCP_NODELAY: each request gets two or three QoS 1 replies, each awaiting its
        # PUBACK; without it every one waits ~40 ms for a delayed ACK.
        client = aiomqtt.Client(self.host, self.port, identifier=self._identifier,
                                socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),))
        await client.__aenter__()
        try:
            await client.subscribe("$aws/things/+/jobs/#", qos=1)
        except BaseException:
            await client.__aexit__(None, None, None)
            raise
        self._client = client
        self._tasks = [asyncio.create_task(self._serve(), name="edged-jobs-peer.serve"),
                       asyncio.create_task(self._run_timers(), name="edged-jobs-peer.timers")]
        return self

    async def __aexit__(self, *exc: object) -> None:
        from edged.testing import stop_task

        for task in self._tasks:
            await stop_task(task)
        self._tasks = []
        if self._client is not None:
            client, self._client = self._client, None
            await client.__aexit__(None, None, None)

    # -- what a test does ----------------------------------------------------------------

    async def queue_job(self, thing: str, job_id: str, document: dict[str, Any] | str, *,
                        in_progress_timeout_minutes: int | None = None) -> Execution:
        """Queue ``job_id`` for ``thing`` (CreateJob's checks: the document's size and
        placeholders, the timeout's range); notify-next goes out if the next one changed."""
        protocol.check_job_id(job_id)
        text = document if isinstance(document, str) else json.dumps(document)
        if len(text) > 32_768:
            raise ValueError("a job document holds at most 32,768 characters")
        for found in _PLACEHOLDER.finditer(text):
            placeholder_url(found.group(0))
        if in_progress_timeout_minutes is not None and \
                not MINUTES[0] <= in_progress_timeout_minutes <= MINUTES[1]:
            raise ValueError(f"inProgressTimeoutInMinutes is {MINUTES[0]}-{MINUTES[1]}")
        executions = self.jobs.setdefault(thing, {})
        if job_id in executions:
            raise ValueError(f"job {job_id} is already queued for {thing}")
        before = self._snapshot(thing)
        execution = Execution(job_id, thing, json.loads(text), int(self.clock()),
                              order=next(self._order), text=text,
                              in_progress_timeout_minutes=in_progress_timeout_minutes)
        executions[job_id] = execution
        await self._notify(thing, before)
        return execution

    async def cancel(self, thing: str, job_id: str) -> None:
        """Cancel a pending execution, as an operator or abort criteria would."""
        execution = self.jobs[thing][job_id]
        before = self._snapshot(thing)
        if execution.status not in TERMINAL_STATUSES:
            self._set(execution, "CANCELED")
        await self._notify(thing, before)

    async def delete(self, thing: str, job_id: str) -> None:
        """Delete the execution (DeleteJobExecution, forced): from now on it is
        ResourceNotFound to the device."""
        before = self._snapshot(thing)
        del self.jobs[thing][job_id]
        await self._notify(thing, before)

    def refuse(self, code: str, *, times: int | None = 1, operation: str | None = None,
               status: str | None = None, job_id: str | None = None) -> Refusal:
        """Answer matching requests ``code`` (``RequestThrottled``, ``InternalError``...)
        ``times`` more times (None: until the returned Refusal's ``times`` is set to 0)."""
        if code not in CODES:
            raise ValueError(f"AWS never answers {code!r}: one of {sorted(CODES)}")
        refusal = Refusal(code, times, operation, status, job_id)
        self.refusals.append(refusal)
        return refusal

    def execution(self, thing: str, job_id: str) -> Execution:
        return self.jobs[thing][job_id]

    async def expire_timers(self) -> None:
        """Run out the timers due on ``clock`` now (a test that steps a fake clock)."""
        for thing in list(self.jobs):
            await self._expire(thing)

    # -- the service ---------------------------------------------------------------------

    def _pending(self, thing: str) -> tuple[list[Execution], list[Execution]]:
        executions = sorted(self.jobs.get(thing, {}).values(), key=lambda e: e.order)
        return ([e for e in executions if e.status == "IN_PROGRESS"],
                [e for e in executions if e.status == "QUEUED"])

    def _next(self, thing: str) -> Execution | None:
        in_progress, queued = self._pending(thing)
        return (in_progress or queued or [None])[0]

    def _set(self, execution: Execution, status: str) -> None:
        now = self.clock()
        if status == "IN_PROGRESS" and execution.started_at is None:
            execution.started_at = int(now)
            if execution.in_progress_timeout_minutes is not None:
                execution.in_progress_deadline = \
                    now + execution.in_progress_timeout_minutes * self.minute_s
        if status in TERMINAL_STATUSES:
            execution.step_deadline = execution.in_progress_deadline = None
        execution.status = status
        execution.last_updated_at = int(now)
        execution.version_number += 1
        if self.on_change is not None:
            self.on_change(execution)

    def _start_step_timer(self, execution: Execution, minutes: int | None) -> None:
        if minutes is not None and execution.status == "IN_PROGRESS":
            execution.step_timeout_minutes = minutes
            execution.step_deadline = self.clock() + minutes * self.minute_s

    async def _expire(self, thing: str) -> None:
        """TIMED_OUT for each execution of ``thing`` whose step timer or in-progress
        timeout has run out."""
        now = self.clock()
        before = self._snapshot(thing)
        for execution in self.jobs.get(thing, {}).values():
            deadlines = [d for d in (execution.step_deadline, execution.in_progress_deadline)
                         if d is not None]
            if execution.status == "IN_PROGRESS" and deadlines and now >= min(deadlines):
                self._set(execution, "TIMED_OUT")
        await self._notify(thing, before)

    async def _run_timers(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            await self.expire_timers()

    def _document(self, execution: Execution) -> _Verbatim:
        text = execution.text or json.dumps(execution.document)
        if self.presign is None:
            return _Verbatim(text)
        presign = self.presign
        return _Verbatim(_PLACEHOLDER.sub(lambda m: presign(placeholder_url(m.group(0))),
                                          text))

    def _execution(self, execution: Execution, include_document: bool = True) -> dict:
        found = {"jobId": execution.job_id, "thingName": execution.thing,
                 "status": execution.status, "statusDetails": dict(execution.status_details),
                 "queuedAt": execution.queued_at,
                 "lastUpdatedAt": execution.last_updated_at or execution.queued_at,
                 "versionNumber": execution.version_number,
                 "executionNumber": execution.execution_number, **self.execution_extras}
        if execution.started_at is not None:
            found["startedAt"] = execution.started_at
        if include_document:
            found["jobDocument"] = self._document(execution)
        return found

    async def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        assert self._client is not None
        await self._client.publish(topic, _dumps(payload), qos=1)

    def _snapshot(self, thing: str) -> tuple[list[str], list[str]]:
        in_progress, queued = self._pending(thing)
        return [e.job_id for e in in_progress], [e.job_id for e in queued]

    async def _notify(self, thing: str, before: tuple[list[str], list[str]]) -> None:
        """Push notify if the pending list changed, notify-next if the next one did."""
        after = self._snapshot(thing)
        if after == before:
            return
        now = int(self.clock())
        in_progress, queued = self._pending(thing)
        await self._publish(protocol.notify_topic(thing), {"timestamp": now, "jobs": {
            **({"IN_PROGRESS": [e.summary() for e in in_progress]} if in_progress else {}),
            **({"QUEUED": [e.summary() for e in queued]} if queued else {})}})
        if (before[0] or before[1] or [None])[0] != (after[0] or after[1] or [None])[0]:
            payload: dict[str, Any] = {"timestamp": now}
            following = self._next(thing)
            if following is not None:
                payload["execution"] = self._execution(following)
            await self._publish(protocol.notify_next_topic(thing), payload)

    async def _serve(self) -> None:
        assert self._client is not None
        async for message in self._client.messages:
            topic = str(message.topic)
            try:
                parsed = protocol.parse_topic(topic)
            except JobsProtocolError:
                continue
            if parsed.reply is not None or parsed.operation in ("notify", "notify-next"):
                continue  # our own replies and pushes come back to us
            await self._answer(topic, parsed, bytes(message.payload))

    async def _answer(self, topic: str, parsed: protocol.Topic, raw: bytes) -> None:
        await self._expire(parsed.thing)  # a timer due now has run out before this request
        try:
            request = json.loads(raw) if raw else {}
        except ValueError:
            request = None
        self.requests.append((topic, request))
        token = request.get("clientToken") if isinstance(request, dict) else None
        before = self._snapshot(parsed.thing)
        try:
            if request is None:
                raise _Refused("InvalidJson", "the payload is not JSON")
            if not isinstance(request, dict):
                raise _Refused("InvalidRequest", "the payload must be a JSON object")
            if token is not None and (not isinstance(token, str)
                                      or not _CLIENT_TOKEN.fullmatch(token)):
                token = None  # not echoed: it is not one
                raise _Refused("InvalidRequest", "clientToken must be 1-64 of [\\x21-\\x7E]")
            for refusal in self.refusals:
                if refusal.matches(parsed, request):
                    if refusal.times is not None:
                        refusal.times -= 1
                    self.refused.append((topic, request, refusal.code))
                    raise _Refused(refusal.code, "refused on demand")
            handler = {"start-next": self._start_next, "describe": self._describe,
                       "get": self._get_pending, "update": self._update}[parsed.operation]
            reply = handler(parsed, request)
        except _Refused as refused:
            reply = {"code": refused.code, "message": refused.message}
            if refused.state is not None:
                reply["executionState"] = refused.state
            outcome = protocol.rejected(topic)
        else:
            outcome = protocol.accepted(topic)
        reply["timestamp"] = int(self.clock())
        if token is not None:
            reply["clientToken"] = token
        await self._publish(outcome, reply)
        await self._notify(parsed.thing, before)

    @staticmethod
    def _details(request: dict[str, Any]) -> dict[str, str] | None:
        details = request.get("statusDetails")
        if details is None:
            return None
        problem = status_details_problem(details)
        if problem is not None:
            raise _Refused("InvalidRequest", problem)
        return dict(details)

    @staticmethod
    def _step_timeout(request: dict[str, Any]) -> int | None:
        minutes = request.get("stepTimeoutInMinutes")
        low, high = MINUTES
        if minutes is not None and (type(minutes) is not int or not low <= minutes <= high):
            raise _Refused("InvalidRequest", f"stepTimeoutInMinutes must be {low}-{high}")
        return minutes

    def _start_next(self, parsed: protocol.Topic, request: dict[str, Any]) -> dict:
        details = self._details(request)
        minutes = self._step_timeout(request)
        execution = self._next(parsed.thing)
        if execution is None:
            return {}
        if execution.status == "QUEUED":
            if details is not None:
                execution.status_details = details
            self._set(execution, "IN_PROGRESS")
        self._start_step_timer(execution, minutes)
        return {"execution": self._execution(execution)}

    def _find(self, thing: str, job_id: str) -> Execution:
        execution = self.jobs.get(thing, {}).get(job_id)
        if execution is None:
            raise _Refused("ResourceNotFound", f"no execution of {job_id} for {thing}")
        return execution

    def _describe(self, parsed: protocol.Topic, request: dict[str, Any]) -> dict:
        assert parsed.job_id is not None
        include = request.get("includeJobDocument", True)
        if not isinstance(include, bool):
            raise _Refused("InvalidRequest", "includeJobDocument must be a boolean")
        if parsed.job_id == protocol.NEXT:
            execution = self._next(parsed.thing)
            if execution is None:
                return {}  # nothing pending: the timestamp alone
        else:
            execution = self._find(parsed.thing, parsed.job_id)
        number = request.get("executionNumber")
        if number is not None and number != execution.execution_number:
            raise _Refused("ResourceNotFound", f"no execution number {number}")
        if execution.status in TERMINAL_STATUSES:
            raise _Refused("TerminalStateReached",
                           f"the execution of {execution.job_id} is {execution.status}")
        return {"execution": self._execution(execution, include)}

    def _get_pending(self, parsed: protocol.Topic, request: dict[str, Any]) -> dict:
        in_progress, queued = self._pending(parsed.thing)
        return {"inProgressJobs": [e.summary() | self.execution_extras for e in in_progress],
                "queuedJobs": [e.summary() | self.execution_extras for e in queued]}

    def _update(self, parsed: protocol.Topic, request: dict[str, Any]) -> dict:
        assert parsed.job_id is not None
        execution = self._find(parsed.thing, parsed.job_id)
        status = request.get("status")
        if status not in DEVICE_STATUSES:
            raise _Refused("InvalidRequest", f"a device may not set status {status!r}")
        details = self._details(request)
        minutes = self._step_timeout(request)
        expected = request.get("expectedVersion")
        if expected is not None and (type(expected) is not int):
            raise _Refused("InvalidRequest", "expectedVersion must be an integer")
        if expected is not None and expected != execution.version_number:
            raise _Refused("VersionMismatch",
                           f"expected version {expected}, current {execution.version_number}",
                           execution.state())
        if execution.status in TERMINAL_STATUSES:
            raise _Refused("InvalidStateTransition",
                           f"{execution.status} is terminal, cannot become {status}",
                           execution.state())
        if details is not None:  # first: on_change hears the status with its details
            execution.status_details = details
        self._set(execution, status)
        self._start_step_timer(execution, minutes)
        reply: dict[str, Any] = {}
        if request.get("includeJobExecutionState", False) is True:
            reply["executionState"] = execution.state()
        if request.get("includeJobDocument", False) is True:
            reply["jobDocument"] = self._document(execution)
        return reply
