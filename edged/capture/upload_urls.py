"""Pre-signed upload URLs: captures reach S3 from a device that holds no S3 credentials.

Before an upload the device asks the fleet's signer, over the cloud MQTT link, for one
pre-signed PUT URL per object; the signer (``edged_cloud.upload_signer``, or any service
that speaks this contract) checks that every key lies in the asking thing's own partition
and signs it with its own credentials, bound to the object's MD5; the device then PUTs
each object to its URL (:class:`edged.capture.destinations.PresignedDestination`). See
docs/capture.md, "Pre-signed uploads".

Topics (``<thing>``: the cloud thing name, which must be the device id)::

    edged/<thing>/capture/upload-urls            the request, QoS 1
    edged/<thing>/capture/upload-urls/accepted   the signer's answer
    edged/<thing>/capture/upload-urls/rejected   its refusal

    request   {"clientToken": "...", "objects": [{"key": "device=<thing>/model=.../
               <uuid>.jsonl.gz", "bytes": 1234, "md5": "<base64 MD5 of the body>"}, ...]}
    accepted  {"clientToken": "...", "expiresAt": 1733420000,
               "urls": [{"key": "...", "url": "https://...", "headers": {"Content-MD5": ...}}]}
    rejected  {"clientToken": "...", "code": "InvalidRequest|Forbidden|Throttled|Unavailable",
               "message": "what and where"}

Keys are relative to the signer's bucket and prefix, which the device never learns.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import http.client
import json
import re
import ssl
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import aiomqtt
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edged.base.http import request, tls_context
from edged.builtin.mqtt.connection import BrokerLink
from edged.capture.commands import describe
from edged.capture.destinations import DeliveryError, s3_refusal
from edged.log import RateLimit
from edged.metrics import Counters
from edged.strict_json import JsonError
from edged.strict_json import loads as strict_loads

log = structlog.get_logger("edged.capture.upload_urls")

REQUEST_TOPIC = "edged/{thing}/capture/upload-urls"
#: Objects one request may name (an upload has one object per partition: a handful).
MAX_OBJECTS = 1000
#: Largest request or reply payload read; a bigger one is refused unparsed.
MAX_PAYLOAD_BYTES = 1 << 20
#: Refusals worth asking again for later; any other is final for that upload.
TRANSIENT_CODES = frozenset({"Throttled", "Unavailable"})
RejectionCode = Literal["InvalidRequest", "Forbidden", "Throttled", "Unavailable"]

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: A capture object key (edged.capture.segments.build_objects), relative to the prefix.
KEY_PATTERN = re.compile(
    r"device=(?P<device>[^/]+)/model=[^/]+/version=[^/]+/"
    rf"date=\d{{4}}-\d{{2}}-\d{{2}}/hour=\d{{2}}/{_UUID}\.jsonl\.gz")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]|(^|/)\.\.?(/|$)")
_MD5 = r"^[A-Za-z0-9+/]{22}==$"  # base64 of 16 bytes


def reply_topic(thing: str, outcome: Literal["accepted", "rejected"]) -> str:
    return f"{REQUEST_TOPIC.format(thing=thing)}/{outcome}"


def key_problem(key: str, thing: str) -> str | None:
    """Why ``thing`` may not have ``key`` signed, or None: a capture object key in the
    thing's own partition, with no dot segments or control characters."""
    match = KEY_PATTERN.fullmatch(key)
    if match is None or _UNSAFE.search(key):
        return f"{key!r} is not a capture object key (device=<id>/model=.../<uuid>.jsonl.gz)"
    if match["device"] != thing:
        return f"{key!r} is not in this thing's partition (device={thing})"
    return None


@dataclass(frozen=True)
class ObjectToSign:
    key: str
    size: int
    md5: str  # base64 of the body's MD5, as S3's Content-MD5 header carries it

    @classmethod
    def of(cls, key: str, body: bytes) -> ObjectToSign:
        return cls(key, len(body), base64.b64encode(hashlib.md5(body).digest()).decode())


@dataclass(frozen=True)
class SignedUrl:
    key: str
    url: str
    headers: dict[str, str]  # to send with the PUT, exactly


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True,
                              populate_by_name=True)


class RequestedObject(_Message):
    key: Annotated[str, Field(min_length=1, max_length=1024)]
    size: Annotated[int, Field(alias="bytes", ge=0, le=5 << 30)]  # one S3 PUT's limit
    md5: Annotated[str, Field(pattern=_MD5)]


class UrlRequest(_Message):
    client_token: Annotated[str, Field(alias="clientToken", min_length=1, max_length=64)]
    objects: Annotated[list[RequestedObject], Field(min_length=1, max_length=MAX_OBJECTS)]


class SignedObject(_Message):
    key: str
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=8192)]
    headers: dict[str, str] = Field(default_factory=dict)


class Accepted(_Message):
    client_token: Annotated[str, Field(alias="clientToken")]
    urls: list[SignedObject]
    expires_at: Annotated[float | None, Field(alias="expiresAt")] = None


class Rejected(_Message):
    client_token: Annotated[str, Field(alias="clientToken")]
    code: RejectionCode
    message: Annotated[str, Field(max_length=4096)] = ""


def parse(model: type[_Message], payload: bytes) -> Any:
    """``payload`` as ``model``; ValueError that says what is wrong and where. A key given
    twice is refused (which URL, which object would be meant?)."""
    try:
        return model.model_validate(strict_loads(payload, max_bytes=MAX_PAYLOAD_BYTES))
    except JsonError as exc:
        raise ValueError(str(exc)) from None
    except ValidationError as exc:
        raise ValueError(describe(exc)) from None


def client_token_of(payload: bytes) -> str | None:
    """The clientToken of a reply that failed to parse, to fail its request at once."""
    try:
        # Only to name the request that failed: a repeated key may stand here.
        data = strict_loads(payload, max_bytes=MAX_PAYLOAD_BYTES, repeated_keys=True)
    except JsonError:
        return None
    token = data.get("clientToken") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


class UploadUrlClient:
    """The device's side: a cloud service (:class:`edged.cloud.CloudService`) that asks
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

    def dispatch(self, message: aiomqtt.Message) -> None:
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


class PresignedDestination:
    """Objects PUT to the URLs a signer hands out: S3 without S3 credentials.

    ``signer`` (an :class:`UploadUrlClient`) is attached by the cloud link
    (edged.cloud.build_cloud); until it is, and while the link is down, uploads fail as
    transient and wait in the spool. Every attempt asks for fresh URLs, so a URL that
    expired meanwhile is never used twice. Blocking, like every destination: the uplink
    calls it from a worker thread."""

    name = "Cloud"

    def __init__(self, *, timeout_s: float = 15.0, put_timeout_s: float = 30.0,
                 ca_file: Path | None = None) -> None:
        self.timeout_s = timeout_s  # for the signer's answer
        self.put_timeout_s = put_timeout_s
        self.ca_file = ca_file
        self.signer: UploadUrlClient | None = None
        self._tls: ssl.SSLContext | None = None

    def open(self) -> None:
        try:
            self._tls = tls_context(ca_file=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise DeliveryError(f"cannot load ca_file {self.ca_file}: {exc}",
                                transient=False) from exc

    def write(self, objects: list[tuple[str, bytes]]) -> None:
        signer = self.signer
        if signer is None:
            raise DeliveryError("no cloud link to ask for upload URLs", transient=True)
        urls = signer.sign_blocking([ObjectToSign.of(key, body) for key, body in objects],
                                    self.timeout_s)
        for signed, (_, body) in zip(urls, objects, strict=True):
            self._put(signed, body)

    def _put(self, signed: SignedUrl, body: bytes) -> None:
        # Never log the query: it carries the signature.
        where = f"PUT {urllib.parse.urlsplit(signed.url)._replace(query='').geturl()}"
        headers = {"Content-Type": "application/octet-stream", **signed.headers}
        try:
            # Through the environment's proxy: as urllib did here, as boto3 does for S3.
            reply = request("PUT", signed.url, timeout_s=self.put_timeout_s, proxy=True,
                            tls=self._tls, headers=headers, body=body,
                            max_reply_bytes=4096)
        except (OSError, http.client.HTTPException) as exc:
            raise DeliveryError(f"{where}: {exc}", transient=True) from None
        if not 200 <= reply.status < 300:  # a redirect too: the URL is signed for one host
            code, message = _s3_error(reply.body)
            raise s3_refusal(where, reply.status, code, message or reply.reason)

    def close(self) -> None:
        pass


def _s3_error(body: bytes) -> tuple[str | None, str]:
    """Code and Message of an S3 XML error body (read with a regex: no XML parser for
    what an endpoint sends)."""
    text = body.decode("utf-8", "replace")
    code = re.search(r"<Code>([^<]{1,128})</Code>", text)
    message = re.search(r"<Message>([^<]{0,512})</Message>", text)
    return (code[1] if code else None), (message[1] if message else "")


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


__all__ = ["KEY_PATTERN", "MAX_OBJECTS", "REQUEST_TOPIC", "TRANSIENT_CODES", "Accepted",
           "ObjectToSign", "PresignedDestination", "Rejected", "SignedUrl",
           "UploadUrlClient", "UrlRequest", "client_token_of", "key_problem", "parse",
           "reply_topic"]
