"""Pre-signed upload URLs, the device's side: asks the fleet's signer for them over the
cloud link (:class:`UploadUrlClient`), for the capture spool's
:class:`edged.capture.destinations.PresignedDestination`. The contract (topics, messages,
limits) is :mod:`edged.capture.url_protocol`; docs/capture.md, "Pre-signed uploads".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import uuid

import aiomqtt
import structlog

from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.capture.destinations import DeliveryError
from edged.capture.url_protocol import (
    REQUEST_TOPIC,
    TRANSIENT_CODES,
    Accepted,
    ObjectToSign,
    Rejected,
    SignedUrl,
    client_token_of,
    parse,
    reply_topic,
)
from edged.mqtt.link import BrokerLink, Received

log = structlog.get_logger("edged.cloud.upload_urls")


class UploadUrlClient:
    """The device's side: a cloud service (:class:`edged.cloud.link.CloudService`) that asks
    for URLs and matches the answers to the requests by ``clientToken``.

    :meth:`sign_blocking` is what a destination calls from the uplink's worker thread.
    Replies that cannot be read are counted (``upload_url_replies{result=invalid}``) and
    logged, and fail the request they name at once; a request without an answer in
    its ``timeout_s`` fails as transient, and the uplink asks again after its backoff."""

    def __init__(self, *, link: BrokerLink, thing: str, counters: Counters) -> None:
        self.link = link
        self.thing = thing
        self.counters = counters
        self.request_topic = REQUEST_TOPIC.format(thing=thing)
        self._replies = {reply_topic(thing, "accepted"): Accepted,
                         reply_topic(thing, "rejected"): Rejected}
        self._waiting: dict[str, asyncio.Future[Accepted | Rejected]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rate_limit = RateLimit()
        # Set once the replies' topics were first subscribed to: a request sent before
        # would have its answer dropped by the broker. (Later connections resume the
        # persistent session, which keeps the subscription.)
        self._subscribed = asyncio.Event()

    async def subscribe(self, client: aiomqtt.Client) -> None:
        await client.subscribe(f"{self.request_topic}/+", qos=1)
        self._subscribed.set()

    def dispatch(self, message: Received) -> None:
        model = self._replies.get(str(message.topic))
        if model is None:
            return
        payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) \
            else str(message.payload).encode()
        try:
            reply = parse(model, payload)
        except ValueError as exc:
            self.counters.inc("upload_url_replies", result="invalid")
            self._rate_limit.warning(log, "upload_url_reply_invalid",
                                     topic=str(message.topic), error=str(exc))
            waiting = self._waiting.get(client_token_of(payload) or "")
            if waiting is not None and not waiting.done():
                waiting.set_exception(DeliveryError(
                    f"the signer's reply on {message.topic} is invalid: {exc}",
                    transient=False))
            return
        waiting = self._waiting.get(reply.client_token)
        if waiting is None or waiting.done():
            self.counters.inc("upload_url_replies", result="unexpected")
            return  # a late answer to a request that gave up, or another client's
        self.counters.inc("upload_url_replies", result=model.__name__.lower())
        waiting.set_result(reply)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.Future()  # replies arrive through dispatch()
        finally:
            self._loop = None
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(DeliveryError("the cloud link is stopping",
                                                        transient=True))

    async def sign(self, objects: list[ObjectToSign], timeout_s: float) -> list[SignedUrl]:
        """One signed URL per object, in order; DeliveryError (transient when asking
        again later may help) if the signer refuses, is silent for ``timeout_s`` or
        answers nonsense."""
        token = str(uuid.uuid4())
        request = {"clientToken": token, "objects": [
            {"key": o.key, "bytes": o.size, "md5": o.md5} for o in objects]}
        future: asyncio.Future[Accepted | Rejected] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        try:
            async with asyncio.timeout(timeout_s):
                await self._subscribed.wait()
                await self.link.publish(self.request_topic, json.dumps(request), qos=1,
                                        priority="capture")
                reply = await future
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise DeliveryError(f"no upload URLs from the signer on {self.request_topic} "
                                f"within {timeout_s} s ({exc or 'timed out'})",
                                transient=True) from None
        finally:
            del self._waiting[token]
        if isinstance(reply, Rejected):
            raise DeliveryError(f"the signer refused: {reply.code}: {reply.message}",
                                transient=reply.code in TRANSIENT_CODES)
        return _match(objects, reply)

    def sign_blocking(self, objects: list[ObjectToSign], timeout_s: float) -> list[SignedUrl]:
        """:meth:`sign` from a thread other than the event loop's."""
        loop = self._loop
        if loop is None:
            raise DeliveryError("the cloud link is not running: no signer to ask for "
                                "upload URLs", transient=True)
        future = asyncio.run_coroutine_threadsafe(self.sign(objects, timeout_s), loop)
        try:
            # sign() is bounded by timeout_s; the margin covers a loop that stopped
            # before running it, which would otherwise leave this thread waiting forever.
            return future.result(timeout_s + 5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeliveryError("the event loop did not ask the signer in time",
                                transient=True) from None


def _match(objects: list[ObjectToSign], reply: Accepted) -> list[SignedUrl]:
    """The reply's URLs in the order of ``objects``: exactly one for each key asked."""
    urls = {u.key: u for u in reply.urls}
    asked = [o.key for o in objects]
    if len(urls) != len(reply.urls) or set(urls) != set(asked):
        missing = sorted(set(asked) - set(urls))
        extra = sorted(set(urls) - set(asked))
        raise DeliveryError(f"the signer's URLs do not match the objects asked for "
                            f"(missing {missing[:3]}, unexpected {extra[:3]}, "
                            f"{len(reply.urls)} for {len(asked)} keys)", transient=False)
    return [SignedUrl(key, urls[key].url, dict(urls[key].headers)) for key in asked]


__all__ = ["UploadUrlClient"]
