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

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edged.base.strict_json import JsonError
from edged.base.strict_json import loads as strict_loads

RejectionCode = Literal["InvalidRequest", "Forbidden", "Throttled", "Unavailable"]


_MD5 = r"^[A-Za-z0-9+/]{22}==$"  # base64 of 16 bytes


REQUEST_TOPIC = "edged/{thing}/capture/upload-urls"


#: Objects one request may name (an upload has one object per partition: a handful).
MAX_OBJECTS = 1000


#: Largest request or reply payload read; a bigger one is refused unparsed.
MAX_PAYLOAD_BYTES = 1 << 20


#: Refusals worth asking again for later; any other is final for that upload.
TRANSIENT_CODES = frozenset({"Throttled", "Unavailable"})


_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


#: A capture object key (edged.capture.segments.build_objects), relative to the prefix.
KEY_PATTERN = re.compile(
    r"device=(?P<device>[^/]+)/model=[^/]+/version=[^/]+/"
    rf"date=\d{{4}}-\d{{2}}-\d{{2}}/hour=\d{{2}}/{_UUID}\.jsonl\.gz")


_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]|(^|/)\.\.?(/|$)")


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


def describe(error: ValidationError) -> str:
    """Every problem of a request as ``field: message``, joined by ``; ``."""
    parts = []
    for e in error.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "request"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)
