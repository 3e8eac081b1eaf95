"""Actuator ``webhook``: POSTs the alarm payload (:mod:`edged.plugin.alarm_payload`) to an
HTTP(S) URL.

Built on :mod:`edged.base.http` (the standard library, in a worker thread), so the
device install needs nothing more; the environment's ``https_proxy``/``no_proxy`` apply.
Network errors, 5xx and 429 answers are retried a bounded number of times with
exponential backoff and full jitter (:mod:`edged.base.retry`; a ``Retry-After`` in
seconds is the least wait, up to ``max_backoff_s``); any other answer outside 2xx is the
receiver refusing the request, and repeating it would not help. Redirects are not
followed: a POST redirected becomes a GET, and the alarm is dropped.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import ssl
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import structlog
from pydantic import BeforeValidator, Field, SecretStr, field_validator
from pydantic_core import PydanticCustomError

from edged import __version__, hookimpl
from edged.base import retry
from edged.base.http import Reply, request, tls_context
from edged.base.log import RateLimit
from edged.base.secrets import SECRET_REFERENCE, SecretError, resolve_secret
from edged.plugin.alarm_payload import alarm_payload, dumps
from edged.plugin.components import BuildContext, Component
from edged.plugin.config import ActuatorConfig, EnvSecret
from edged.plugin.events import Event
from edged.plugin.registry import ComponentType

log = structlog.get_logger("edged.actuator.webhook")

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


def _header_value(value: Any) -> Any:
    """A header value: literal text, or ``${NAME}``, a secret (edged.base.secrets)."""
    if not isinstance(value, str):
        return value
    match = SECRET_REFERENCE.fullmatch(value)
    if match is None:
        return SecretStr(value)
    try:
        return SecretStr(resolve_secret(match.group(1)))
    except SecretError as exc:
        raise PydanticCustomError("env_secret", str(exc)) from None


#: Header values are kept as secrets either way, so that none is ever logged.
HeaderValue = Annotated[SecretStr, BeforeValidator(_header_value)]


class WebhookConfig(ActuatorConfig):
    type: Literal["webhook"]
    url: str = Field(description="Where the alarm payload is POSTed (http:// or https://).")
    timeout_s: float = Field(5.0, gt=0, le=300, description="Bound on each request.")
    retries: int = Field(
        3, ge=0, le=20,
        description="Further attempts after a network error, a 5xx or a 429 answer.",
    )
    backoff_s: float = Field(0.5, gt=0, description="Bound of the first retry delay (drawn "
                             "uniformly below it, full jitter); doubles each time.")
    max_backoff_s: float = Field(10.0, gt=0, description="Upper bound of the retry delay.")
    token: EnvSecret | None = Field(
        None, description="Sent as `Authorization: Bearer <token>`; written as ${ENV_NAME}.")
    headers: dict[str, HeaderValue] = Field(
        default_factory=dict,
        description="Extra request headers; a value may be ${ENV_NAME} to read a secret "
        "from the environment.",
    )
    verify_tls: bool = Field(True, description="Check the server's certificate and name.")
    ca_file: Path | None = Field(
        None, description="PEM bundle of CAs to trust instead of the system's.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if not _HEADER_NAME.fullmatch(name):
                _header_error(f"{name!r} is not a valid header name")
            if name.lower() in ("content-type", "content-length", "host"):
                _header_error(f"header {name!r} is set by the actuator")
            if any(c in secret.get_secret_value() for c in "\r\n\0"):
                _header_error(f"the value of header {name!r} contains a line break")
        return value


def _header_error(message: str) -> NoReturn:
    # The error type the config loader reports without the input: header values may be
    # secrets, and must not be echoed into logs.
    raise PydanticCustomError("env_secret", message)


class _Retryable(Exception):
    """A failure worth another attempt: network trouble, 5xx or 429."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Refused(Exception):
    """The receiver answered and will not take the request (4xx, 3xx)."""


def _retry_after(reply: Reply) -> float | None:
    value = reply.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back on the backoff


class WebhookActuator(Component):
    def __init__(self, config: WebhookConfig, ctx: BuildContext) -> None:
        self.config = config
        self.name = ctx.name
        self.device_id = ctx.device_id
        self.counters = ctx.counters
        for counter in ("webhook_retries", "webhook_failures"):
            ctx.counters.declare(counter, actuator=ctx.name)
        parts = urllib.parse.urlsplit(config.url)
        # The query may carry a token: logs name the endpoint without it.
        self.endpoint = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        self.log = log.bind(actuator=ctx.name, url=self.endpoint)
        self.rate_limit = RateLimit(interval=30.0)
        self._tls: ssl.SSLContext | None = None

    async def __aenter__(self) -> WebhookActuator:
        # Loading the CA bundle reads files: off the event loop.
        self._tls = await asyncio.to_thread(tls_context, ca_file=self.config.ca_file,
                                            verify=self.config.verify_tls)
        if not self.config.verify_tls and self.config.url.startswith("https:"):
            self.log.warning("webhook_tls_unverified")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._tls = None

    def _headers(self, event_id: str) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"edged/{__version__}",
            # Retries resend the same alarm: receivers may deduplicate on this key.
            "Idempotency-Key": event_id,
        }
        if self.config.token is not None:
            headers["Authorization"] = f"Bearer {self.config.token.get_secret_value()}"
        headers.update({k: v.get_secret_value() for k, v in self.config.headers.items()})
        return headers

    def _post(self, body: bytes, headers: dict[str, str]) -> int:
        """One attempt, in a worker thread: the status code, or a classified failure."""
        assert self._tls is not None, "the webhook actuator was not started"
        try:
            # The body is read (up to 64 KiB) only to let the server finish; it is not used.
            reply = request("POST", self.config.url, timeout_s=self.config.timeout_s,
                            proxy=True, tls=self._tls, headers=headers, body=body)
        except (OSError, http.client.HTTPException) as exc:  # unreachable, TLS, timeouts
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        if 200 <= reply.status < 300:
            return reply.status
        if reply.status >= 500 or reply.status == 429:
            raise _Retryable(f"HTTP {reply.status}", _retry_after(reply))
        raise _Refused(f"HTTP {reply.status}")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = retry.delay(attempt, self.config.backoff_s, self.config.max_backoff_s)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.max_backoff_s))
        return delay

    async def handle(self, event: Event) -> None:
        payload = alarm_payload(event, self.device_id)
        body, headers = dumps(payload), self._headers(payload["id"])
        attempts = self.config.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                status = await asyncio.to_thread(self._post, body, headers)
            except _Refused as exc:
                self._failed(event, str(exc), attempt, retryable=False)
                return
            except _Retryable as exc:
                if attempt == attempts:
                    self._failed(event, str(exc), attempt, retryable=True)
                    return
                self.counters.inc("webhook_retries", actuator=self.name)
                await asyncio.sleep(self._delay(attempt, exc.retry_after))
            else:
                self.log.debug("webhook_sent", kind=event.kind, turbine=event.turbine,
                               status=status, attempts=attempt)
                return

    def _failed(self, event: Event, reason: str, attempts: int, retryable: bool) -> None:
        self.counters.inc("webhook_failures", actuator=self.name)
        suppressed = self.rate_limit.allow("failed")
        if suppressed is not None:
            self.log.error("webhook_failed", kind=event.kind, turbine=event.turbine,
                           reason=reason, attempts=attempts,
                           gave_up="retries exhausted" if retryable else "refused",
                           suppressed=suppressed)


@hookimpl
def edged_component_types() -> list[ComponentType]:
    return [ComponentType("actuator", "webhook", WebhookConfig, WebhookActuator,
                          "POST alarms as JSON to an HTTP(S) endpoint, with retries")]
