"""The webhook actuator against a real HTTP server on the loopback interface."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import structlog.testing

from edged.base.errors import ConfigError
from edged.base.metrics import Counters
from edged.builtin.webhook import WebhookActuator, WebhookConfig
from edged.config import parse_config
from edged.plugin.components import BuildContext
from edged.plugin.events import Event, ModelRef
from edged.plugin.manager import make_plugin_manager
from tests.support import free_port
from tests.support.payloads import assert_valid, tracked_events


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class Script:
    """What the server answers: ``statuses`` in turn (then 200), each after ``delay_s``."""

    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    received: list[Received] = field(default_factory=list)


class Receiver(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping must not hold the test up

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", free_port()), Handler)
        self.script = Script()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/hooks/edged"


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        script = self.server.script
        body = self.rfile.read(int(self.headers["Content-Length"]))
        script.received.append(Received(self.path, dict(self.headers), json.loads(body)))
        time.sleep(script.delay_s)
        status = script.statuses.pop(0) if script.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver")
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def alarm(turbine: str = "turbine-02") -> Event:
    return Event(kind="alarm", pipeline="turbines", turbine=turbine, time=1718000000.125,
                 groups=("vibration", "rotation"), values={"roll_std": 0.5, "rps": 0.1},
                 thresholds={"roll_std": 0.2, "rps": 0.3},
                 model=ModelRef("windturbine-v1", 1),
                 detail={"consecutive": 2, "primary": "vibration"})


def make(url: str, counters: Counters | None = None, **options) -> WebhookActuator:
    config = WebhookConfig(type="webhook", inputs=["turbines"], url=url,
                           backoff_s=0.01, max_backoff_s=0.05, **options)
    return WebhookActuator(config, BuildContext(name="ops", device_id="gw-7",
                                                state_dir=None, counters=counters or Counters()))


async def test_posts_the_alarm_payload_with_a_bearer_token_from_the_environment(
        receiver, monkeypatch):
    monkeypatch.setenv("WEBHOOK_TOKEN", "s3cret")
    async with make(receiver.url, token="${WEBHOOK_TOKEN}",
                    headers={"X-Site": "north", "X-Key": "${WEBHOOK_TOKEN}"}) as actuator:
        await actuator.handle(alarm())
    [request] = receiver.script.received
    assert request.path == "/hooks/edged"
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Site"] == "north"
    assert request.headers["X-Key"] == "s3cret"
    assert request.headers["Idempotency-Key"] == request.body["id"]
    assert request.body == {
        "schema": 1, "id": "gw-7:turbines:turbine-02:1718000000125:alarm",
        "event": "alarm", "device": "gw-7", "pipeline": "turbines", "turbine": "turbine-02",
        "groups": ["vibration", "rotation"], "primary": "vibration",
        "values": {"roll_std": 0.5, "rps": 0.1}, "thresholds": {"roll_std": 0.2, "rps": 0.3},
        "model": {"name": "windturbine-v1", "version": 1},
        "time": "2024-06-10T06:13:20.125Z", "timestamp": 1718000000.125,
        "detail": {"consecutive": 2},
    }


async def test_every_event_is_posted_as_the_published_schema(receiver):
    """docs/schema/alarm-v1.json, for events raised as the runtime raises them."""
    events = tracked_events()
    async with make(receiver.url) as actuator:
        for event in events:
            await actuator.handle(event)
    bodies = [request.body for request in receiver.script.received]
    for body in bodies:
        assert_valid(body)
    assert [body["event"] for body in bodies] == [event.kind for event in events]
    assert bodies[0]["detail"] == {"consecutive": 2, "rows": 610}


async def test_retries_5xx_and_429_then_succeeds(receiver):
    receiver.script.statuses = [500, 503, 429]
    counters = Counters()
    async with make(receiver.url, counters, retries=3) as actuator:
        await actuator.handle(alarm())
    assert len(receiver.script.received) == 4
    assert len({r.body["id"] for r in receiver.script.received}) == 1
    assert counters.get("webhook_retries", actuator="ops") == 3
    assert counters.get("webhook_failures", actuator="ops") == 0


async def test_gives_up_after_bounded_retries(receiver):
    receiver.script.statuses = [500] * 10
    counters = Counters()
    async with make(receiver.url, counters, retries=2) as actuator:
        await actuator.handle(alarm())
    assert len(receiver.script.received) == 3
    assert counters.get("webhook_failures", actuator="ops") == 1


async def test_a_4xx_answer_is_not_retried(receiver):
    receiver.script.statuses = [404]
    counters = Counters()
    async with make(receiver.url, counters, retries=3) as actuator:
        await actuator.handle(alarm())
    assert len(receiver.script.received) == 1
    assert counters.get("webhook_failures", actuator="ops") == 1
    assert counters.get("webhook_retries", actuator="ops") == 0


async def test_a_slow_server_times_out_and_is_retried(receiver):
    receiver.script.delay_s = 1.0
    counters = Counters()
    started = time.monotonic()
    async with make(receiver.url, counters, retries=1, timeout_s=0.2) as actuator:
        await actuator.handle(alarm())
    assert time.monotonic() - started < 1.0
    assert len(receiver.script.received) == 2
    assert counters.get("webhook_failures", actuator="ops") == 1


async def test_connection_refused_is_retried_then_counted():
    counters = Counters()
    async with make(f"http://127.0.0.1:{free_port()}/x", counters, retries=2) as actuator:
        await actuator.handle(alarm())
    assert counters.get("webhook_retries", actuator="ops") == 2
    assert counters.get("webhook_failures", actuator="ops") == 1


async def test_failures_are_logged_at_a_limited_rate(receiver):
    receiver.script.statuses = [404] * 5
    counters = Counters()
    async with make(receiver.url, counters, retries=0) as actuator:
        with structlog.testing.capture_logs() as logs:
            for _ in range(5):
                await actuator.handle(alarm())
    assert counters.get("webhook_failures", actuator="ops") == 5
    [failed] = [e for e in logs if e["event"] == "webhook_failed"]
    assert failed["reason"] == "HTTP 404" and failed["gave_up"] == "refused"
    assert failed["url"] == receiver.url and failed["log_level"] == "error"


def config_text(extra: str) -> str:
    return f"""
sources:
  farm: {{type: simulator}}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx}}
actuators:
  hook:
    type: webhook
    inputs: [turbines]
    url: https://ops.example.com/hooks/edged
{extra}"""


def test_secrets_must_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("WEBHOOK_TOKEN", raising=False)
    registry = make_plugin_manager()[1]
    for extra, message in [
        ("    token: abc123", "must reference an environment variable"),
        ("    token: ${WEBHOOK_TOKEN}", "WEBHOOK_TOKEN is not set"),
        ("    headers:\n      X-Key: ${WEBHOOK_TOKEN}", "WEBHOOK_TOKEN is not set"),
        ("    url: ftp://x", "http:// or https://"),
        ("    headers: {Bad Name: x}", "not a valid header name"),
        ("    headers: {Content-Type: text/plain}", "set by the actuator"),
        ('    headers: {X-Key: "abc123\\r\\nX-Evil: 1"}', "contains a line break"),
    ]:
        text = config_text(extra).replace("    url: https://ops.example.com/hooks/edged\n",
                                          "") if "url:" in extra else config_text(extra)
        with pytest.raises(ConfigError) as caught:
            parse_config(text, "edged.yaml", registry)
        assert message in str(caught.value)
        assert "abc123" not in str(caught.value)
    monkeypatch.setenv("WEBHOOK_TOKEN", "tok-91x")
    config = parse_config(config_text("    token: ${WEBHOOK_TOKEN}"), "edged.yaml", registry)
    hook = config.actuators["hook"]
    assert hook.verify_tls and hook.timeout_s == 5 and hook.retries == 3
    assert "tok-91x" not in repr(hook)
    assert hook.token.get_secret_value() == "tok-91x"
