"""Requests to the IoT Jobs service over the cloud link, matched to their replies.

The service answers every request on the request topic's ``/accepted`` or ``/rejected``
twin and echoes the request's ``clientToken``; replies for other things, for tokens this
process did not send (an earlier life's, another client's) and malformed ones are counted
and ignored. A reply that carries one of our tokens but cannot be read fails its request
at once (``JobsProtocolError``) rather than leaving it to time out; one whose fields are
read but for a few odd values is taken, the odd ones counted
(``jobs_reply_fields_unread``). A request without a reply in ``timeout_s`` (the link
dropped, the reply was lost) raises ``TimeoutError``: the caller decides whether to ask
again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import aiomqtt
import structlog

from edged.base import strict_json
from edged.base.errors import EdgedError
from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.cloud.jobs import protocol
from edged.cloud.jobs.protocol import Accepted, ExecutionState, JobExecution, JobsProtocolError
from edged.mqtt.link import BrokerLink, Received

log = structlog.get_logger("edged.cloud.jobs")


class JobsRejected(EdgedError):
    """The service rejected a request: ``code`` (VersionMismatch, InvalidStateTransition,
    ResourceNotFound, RequestThrottled, ...) and the execution's current state when it
    sent one."""

    def __init__(self, code: str, message: str | None,
                 state: ExecutionState | None) -> None:
        super().__init__(f"{code}: {message or 'no message'}")
        self.code = code
        self.state = state


class JobsClient:
    """List, describe and update executions of one thing over ``link``.

    ``dispatch`` must be given every message the link receives; for a push it returns the
    ids of the executions the push names (notify-next: the next one, or none; notify:
    every pending one), for anything else None."""

    def __init__(self, link: BrokerLink, thing: str, counters: Counters, *,
                 timeout_s: float = 15.0) -> None:
        self.link = link
        self.thing = thing
        self.counters = counters
        self.timeout_s = timeout_s
        self._waiting: dict[str, asyncio.Future[Accepted]] = {}
        self._rate_limit = RateLimit()

    async def subscribe(self, client: aiomqtt.Client) -> None:
        """Subscribe on a new connection: the replies and both pushes (QoS 1, so a
        notification sent while the device was offline waits in its session)."""
        await client.subscribe([(topic, 1)
                                for topic in protocol.reply_subscriptions(self.thing)])

    def dispatch(self, message: Received) -> frozenset[str] | None:
        topic = str(message.topic)
        payload = message.payload if isinstance(message.payload, (bytes, str)) else b""
        try:
            parsed = protocol.parse_topic(topic, self.thing)
            if parsed.operation == "notify-next":
                announced = protocol.parse_notify_next(payload)
                if announced is not None:
                    self._unread(topic, announced.unread)
                return frozenset() if announced is None else frozenset({announced.job_id})
            if parsed.operation == "notify":
                return protocol.parse_notify(payload)
            if parsed.reply is None:
                return None
            _, reply = protocol.parse_reply(topic, payload, self.thing)
        except JobsProtocolError as exc:
            self._ignore("malformed", topic, str(exc))
            self._fail_waiter(payload, exc)
            return None
        self._unread(topic, reply.unread)
        waiter = self._waiting.pop(reply.client_token or "", None)
        if waiter is None:
            self._ignore("unmatched", topic, f"clientToken {reply.client_token!r}")
        elif not waiter.done():
            if isinstance(reply, Accepted):
                waiter.set_result(reply)
            else:
                waiter.set_exception(JobsRejected(reply.code, reply.message,
                                                  reply.execution_state))
        return None

    def _fail_waiter(self, payload: bytes | str, error: JobsProtocolError) -> None:
        """A reply we cannot read that carries one of our tokens fails that request now."""
        try:
            data = strict_json.loads(payload, max_bytes=protocol.MAX_REPLY_BYTES,
                                     repeated_keys=True)
        except strict_json.JsonError:
            return
        token = data.get("clientToken") if isinstance(data, dict) else None
        waiter = self._waiting.pop(token, None) if isinstance(token, str) else None
        if waiter is not None and not waiter.done():
            waiter.set_exception(JobsProtocolError(f"unreadable reply: {error}"))

    def _unread(self, topic: str, fields: tuple[str, ...]) -> None:
        if fields:
            self.counters.inc("jobs_reply_fields_unread", len(fields))
            self._rate_limit.warning(log, "jobs_reply_fields_unread", topic=topic,
                                     fields=list(fields[:10]))

    def _ignore(self, why: str, topic: str, detail: str) -> None:
        self.counters.inc("jobs_replies_ignored", reason=why)
        suppressed = self._rate_limit.allow(why)
        if suppressed is not None:
            log.warning("jobs_reply_ignored", reason=why, topic=topic, detail=detail,
                        suppressed_since_last=suppressed)

    async def _request(self, topic: str, build: Callable[[str], bytes]) -> Accepted:
        token = uuid.uuid4().hex
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[token] = waiter
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.link.publish(topic, build(token), qos=1, priority="critical")
                return await waiter
        except aiomqtt.MqttError as exc:
            raise TimeoutError(f"jobs request to {topic} not sent: {exc}") from None
        finally:
            self._waiting.pop(token, None)

    async def pending(self) -> list[JobExecution]:
        """The executions pending for this thing (summaries, without documents): those
        in progress first, then the queued ones, each in the service's order."""
        reply = await self._request(protocol.get_pending_topic(self.thing),
                                    protocol.get_pending)
        return [*reply.in_progress, *reply.queued]

    async def describe(self, job_id: str) -> JobExecution:
        """The execution with its document (its pre-signed URLs freshly signed)."""
        reply = await self._request(protocol.describe_topic(self.thing, job_id),
                                    lambda token: protocol.describe(job_id, token))
        if reply.execution is None:
            raise JobsProtocolError(f"describe of {job_id} returned no execution")
        return reply.execution

    async def update(self, job_id: str, status: str, details: dict[str, str],
                     expected_version: int | None,
                     step_timeout_minutes: int | None = None) -> ExecutionState | None:
        """Set the execution's status and statusDetails; returns its new state."""
        reply = await self._request(
            protocol.update_topic(self.thing, job_id),
            lambda token: protocol.update(job_id, status, token, details, expected_version,
                                          step_timeout_minutes))
        return reply.execution_state
