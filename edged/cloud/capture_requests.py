"""Capture on demand: a request over the cloud link asks a pipeline to capture every
decision of one turbine (or all) for a while. See docs/capture.md, "Capture on demand".

A cloud service (:class:`edged.cloud.link.CloudService`): requests arrive QoS 1 on
``edged/<thing>/capture/request`` as JSON, are checked strictly, handed to the pipeline's
:meth:`PipelineCapture.request`, and answered QoS 1 on ``edged/<thing>/capture/response``
with ``accepted`` or ``rejected`` and a reason that names what was wrong and where.
Every request is counted as ``capture_requests{result=accepted|rejected}``; a bad one is
answered, never raised.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

import aiomqtt
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.base.strict_json import JsonError
from edged.base.strict_json import loads as strict_loads
from edged.capture.policy import MAX_ON_DEMAND_S
from edged.capture.url_protocol import describe
from edged.mqtt.link import BrokerLink, Received
from edged.plugin.config import NAME_PATTERN

log = structlog.get_logger("edged.cloud.capture_requests")

REQUEST_TOPIC = "edged/{thing}/capture/request"
RESPONSE_TOPIC = "edged/{thing}/capture/response"
#: Largest request payload read; a bigger one is rejected unparsed.
MAX_REQUEST_BYTES = 4096
#: Longest wait for the broker's PUBACK of one response.
PUBLISH_TIMEOUT_S = 5.0
#: Responses waiting to be published; beyond it they are dropped (and logged).
RESPONSE_QUEUE = 1000


class CaptureRequest(BaseModel):
    """One request, as sent on the request topic."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    pipeline: Annotated[str, Field(pattern=NAME_PATTERN)]
    # A turbine id as the source names it, or "*" for every turbine of the pipeline.
    turbine: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
    duration_s: Annotated[float, Field(ge=1, le=MAX_ON_DEMAND_S, allow_inf_nan=False)]
    request_id: Annotated[str, Field(min_length=1, max_length=128)]


class CaptureRequests:
    """Takes capture requests for the pipelines in ``captures`` (name -> PipelineCapture)."""

    def __init__(self, *, link: BrokerLink, thing: str, captures: dict[str, Any],
                 counters: Counters) -> None:
        self.link = link
        self.captures = captures
        self.counters = counters
        self.request_topic = REQUEST_TOPIC.format(thing=thing)
        self.response_topic = RESPONSE_TOPIC.format(thing=thing)
        self._responses: asyncio.Queue[dict[str, Any]] = asyncio.Queue(RESPONSE_QUEUE)
        self._rate_limit = RateLimit()

    async def subscribe(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self.request_topic, qos=1)

    def dispatch(self, message: Received) -> None:
        if str(message.topic) != self.request_topic:
            return
        try:
            response = self.handle(message.payload)
        except Exception as exc:  # a bug here must never end the cloud link
            log.exception("capture_request_failed")
            response = {"request_id": None, "status": "rejected",
                        "reason": f"internal error: {type(exc).__name__}"}
        self.counters.inc("capture_requests", result=response["status"])
        if response["status"] == "rejected":
            self._rate_limit.warning(log, "capture_request_rejected",
                                     request_id=response["request_id"],
                                     reason=response["reason"])
        try:
            self._responses.put_nowait(response)
        except asyncio.QueueFull:
            self._rate_limit.warning(log, "capture_response_dropped",
                                     request_id=response["request_id"])

    def handle(self, payload: Any) -> dict[str, Any]:
        """Check one request and act on it; return the response."""
        if isinstance(payload, str):
            payload = payload.encode()
        if not isinstance(payload, (bytes, bytearray)):
            return _rejected(None, "request: payload must be a JSON object")
        if len(payload) > MAX_REQUEST_BYTES:
            return _rejected(None, f"request: larger than {MAX_REQUEST_BYTES} bytes")
        try:
            # A key given twice is refused: which turbine or duration would be meant?
            body = strict_loads(payload, max_bytes=MAX_REQUEST_BYTES)
        except JsonError as exc:
            return _rejected(None, f"request: {exc}")
        if not isinstance(body, dict):
            return _rejected(None, "request: must be a JSON object, got "
                             f"{type(body).__name__}")
        request_id = body.get("request_id")
        if not isinstance(request_id, str) or not 0 < len(request_id) <= 128:
            request_id = None
        try:
            request = CaptureRequest.model_validate(body)
        except ValidationError as exc:
            return _rejected(request_id, describe(exc))
        capture = self.captures.get(request.pipeline)
        if capture is None:
            known = ", ".join(sorted(self.captures)) or "none"
            return _rejected(request_id, f"pipeline: no pipeline {request.pipeline!r} with "
                             f"a capture: section on this device (these have one: {known})")
        capture.request(request.turbine, request.duration_s)
        log.info("capture_request_accepted", request_id=request_id,
                 pipeline=request.pipeline, turbine=request.turbine,
                 duration_s=request.duration_s)
        return {"request_id": request_id, "status": "accepted",
                "until": round(time.time() + request.duration_s, 3)}

    async def run(self) -> None:
        while True:
            response = await self._responses.get()
            body = json.dumps(response, separators=(",", ":")).encode()
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                    await self.link.publish(self.response_topic, body, qos=1,
                                            priority="critical")
            except (aiomqtt.MqttError, TimeoutError) as exc:
                self._rate_limit.warning(log, "capture_response_failed",
                                         request_id=response["request_id"], error=repr(exc))


def _rejected(request_id: str | None, reason: str) -> dict[str, Any]:
    return {"request_id": request_id, "status": "rejected", "reason": reason}
