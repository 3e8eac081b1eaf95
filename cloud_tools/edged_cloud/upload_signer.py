"""The fleet's signer of capture upload URLs: devices upload to S3 with no S3 credentials.

It subscribes to every thing's requests (``edged/+/capture/upload-urls``) on the fleet's
broker (AWS IoT Core under the signer's own certificate, or any MQTT broker), checks that
each key lies in the asking thing's own partition (``device=<thing>/...``: the topic
names the thing, and the broker's policy lets a thing publish on its own topics only),
and answers with pre-signed PUT URLs bound to each object's MD5, signed with this
service's AWS credentials (a role allowed ``s3:PutObject`` on the capture prefix). The
contract is edged.cloud.upload_urls; docs/capture.md, "Pre-signed uploads".

    python -m edged_cloud.upload_signer --host BROKER [--port 8883 --ca-file F
        --cert-file F --key-file F --client-id ID] --bucket BUCKET [--prefix captures]
        [--endpoint-url URL] [--region R] [--expires-s 900] [--share GROUP]

Several signers can share the load: ``--share GROUP`` subscribes through the broker's
shared subscription ``$share/GROUP/...`` (IoT Core and mosquitto), so each request
reaches one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import aiomqtt
import structlog

from edged.base.log import configure_logging
from edged.base.metrics import Counters
from edged.capture.url_protocol import (
    REQUEST_TOPIC,
    UrlRequest,
    client_token_of,
    key_problem,
    parse,
    reply_topic,
)
from edged.mqtt.link import BrokerConfig, BrokerLink, TlsConfig

log = structlog.get_logger("edged_cloud.upload_signer")

SUBSCRIPTION = REQUEST_TOPIC.format(thing="+")
_TOPIC = re.compile(r"edged/(?P<thing>[a-zA-Z0-9:_-]{1,128})/capture/upload-urls")
#: What S3 allows a SigV4 pre-signed URL: 1 s to 7 days.
EXPIRES_RANGE_S = (1, 7 * 86400)

Outcome = Literal["accepted", "rejected"]


@dataclass
class Signer:
    """Answers one request. ``s3``: a boto3 S3 client with the signer's credentials."""

    s3: Any
    bucket: str
    prefix: str = "captures"
    expires_s: int = 900
    clock: Callable[[], float] = field(default=time.time)

    def __post_init__(self) -> None:
        low, high = EXPIRES_RANGE_S
        if not low <= self.expires_s <= high:
            raise ValueError(f"expires_s must be within {low}..{high} s, not {self.expires_s}")
        self.prefix = self.prefix.strip("/")

    def answer(self, thing: str, payload: bytes) -> tuple[Outcome, dict[str, Any]]:
        """(``accepted``, the URLs) or (``rejected``, a code and what was wrong)."""
        try:
            request = parse(UrlRequest, payload)
        except ValueError as exc:
            return _refusal(client_token_of(payload), "InvalidRequest", f"request: {exc}")
        problems = [f"objects[{i}].key: {problem}" for i, o in enumerate(request.objects)
                    if (problem := key_problem(o.key, thing)) is not None]
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            return _refusal(request.client_token, "Forbidden", "; ".join(problems[:3]) + more)
        expires_at = int(self.clock()) + self.expires_s
        try:
            urls = [{"key": o.key, "url": self._sign(o.key, o.md5),
                     "headers": {"Content-MD5": o.md5}} for o in request.objects]
        except Exception as exc:  # no credentials, a bad region: the device asks again
            log.error("upload_signing_failed", thing=thing, error=repr(exc))
            return _refusal(request.client_token, "Unavailable",
                            f"the signer cannot sign now: {type(exc).__name__}")
        return "accepted", {"clientToken": request.client_token, "expiresAt": expires_at,
                            "urls": urls}

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _sign(self, relative: str, md5: str) -> str:
        # Content-MD5 is a signed header: S3 takes only the bytes the device asked for.
        return self.s3.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": self.key(relative),
                                  "ContentMD5": md5},
            ExpiresIn=self.expires_s)


def s3_client(endpoint_url: str | None = None, region: str | None = None,
              **credentials: str) -> Any:
    """The boto3 client a Signer signs with: SigV4 (the only signature S3 takes in every
    region, and the one that binds Content-MD5 and an expiry up to 7 days), path-style
    for an S3-compatible ``endpoint_url``; ``credentials`` (``aws_access_key_id``...)
    or else the SDK's default chain."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                        config=Config(signature_version="s3v4",
                                      s3={"addressing_style": "path"} if endpoint_url
                                      else None), **credentials)


def _refusal(token: str | None, code: str, message: str) -> tuple[Outcome, dict[str, Any]]:
    return "rejected", {"clientToken": token or "", "code": code, "message": message}


def thing_of(topic: str) -> str | None:
    match = _TOPIC.fullmatch(topic)
    return match["thing"] if match else None


async def serve(signer: Signer, broker: BrokerConfig, *, share: str | None = None,
                counters: Counters | None = None,
                on_ready: Callable[[], None] = lambda: None) -> NoReturn:
    """Answer requests until cancelled, reconnecting to the broker as long as it takes;
    ``on_ready`` is called once subscribed on each connection. Counts
    ``upload_url_requests{result=accepted|rejected}``."""
    counters = counters or Counters()
    link = BrokerLink(broker, name="upload-signer", device_id="fleet", counters=counters,
                      inbox_size=10_000)
    subscription = f"$share/{share}/{SUBSCRIPTION}" if share else SUBSCRIPTION

    async def subscribe(client: aiomqtt.Client) -> None:
        await client.subscribe(subscription, qos=1)
        log.info("upload_signer_ready", subscription=subscription, bucket=signer.bucket,
                 prefix=signer.prefix)
        on_ready()

    await link.open(connect=False)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(link.run(subscribe), name="upload-signer.link")
            while True:
                await link.inbox.wait()
                for message in link.inbox.take(100):
                    await _handle(signer, link, message, counters)
    finally:
        await link.__aexit__(None, None, None)


async def _handle(signer: Signer, link: BrokerLink, message: aiomqtt.Message,
                  counters: Counters) -> None:
    thing = thing_of(str(message.topic))
    if thing is None:
        return
    payload = message.payload if isinstance(message.payload, bytes) else \
        str(message.payload).encode()
    outcome, reply = signer.answer(thing, payload)
    counters.inc("upload_url_requests", result=outcome)
    if outcome == "rejected":
        log.warning("upload_urls_refused", thing=thing, code=reply["code"],
                    message=reply["message"])
    else:
        log.info("upload_urls_signed", thing=thing, objects=len(reply["urls"]))
    try:
        await link.publish(reply_topic(thing, outcome), json.dumps(reply), qos=1)
    except aiomqtt.MqttError as exc:  # the device times out and asks again
        log.warning("upload_urls_reply_failed", thing=thing, error=str(exc))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edged_cloud.upload_signer",
        description="Sign capture upload URLs for the fleet's devices.")
    parser.add_argument("--host", required=True, help="the broker (IoT Core endpoint)")
    parser.add_argument("--port", type=int, default=8883)
    parser.add_argument("--ca-file", type=Path, help="CA of the broker's certificate")
    parser.add_argument("--cert-file", type=Path, help="the signer's certificate")
    parser.add_argument("--key-file", type=Path, help="the certificate's private key")
    parser.add_argument("--no-tls", action="store_true", help="plain TCP (a local broker)")
    parser.add_argument("--client-id", default="edged-upload-signer")
    parser.add_argument("--share", help="a shared-subscription group, for several signers")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="captures")
    parser.add_argument("--endpoint-url", help="an S3-compatible endpoint")
    parser.add_argument("--region", help="the bucket's region (default: the SDK's)")
    parser.add_argument("--expires-s", type=int, default=900,
                        help="lifetime of a URL (default 900 s)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, "auto")
    s3 = s3_client(args.endpoint_url, args.region)
    tls = None if args.no_tls else TlsConfig(ca_file=args.ca_file, cert_file=args.cert_file,
                                             key_file=args.key_file)
    broker = BrokerConfig(host=args.host, port=args.port, client_id=args.client_id, tls=tls)
    try:
        signer = Signer(s3, args.bucket, args.prefix, args.expires_s)
    except ValueError as exc:
        print(f"upload_signer: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_until_signalled(serve(signer, broker, share=args.share)))
    return 0


async def _until_signalled(work: Coroutine[Any, Any, object]) -> None:
    """``work`` until SIGTERM or SIGINT, which end it cleanly (as systemd stops it)."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    log.info("upload_signer_stopped")


if __name__ == "__main__":
    sys.exit(main())
