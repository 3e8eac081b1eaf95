"""Source ``mqtt``: sensor rows published on an MQTT broker by turbines or gateways.

The broker connection (:mod:`edged.mqtt.link`) puts every message in an
inbox; the receive loop takes them in bursts, parses them
(:mod:`edged.builtin.mqtt.formats`: plain CSV messages together, any other one by one)
and hands the pipeline one batch per burst (at most ``batch_rows`` rows or ``batch_ms``
of messages): at 20,000 one-row messages a second, a batch per message would cost more
than the parsing.

No message stops the loop: what the parser refuses is counted under its reason, and
anything else a message makes it raise is counted under ``decode_failed``; either way
the next message is read. Restarting the source instead (as a crash would) lets the
inbox fill while it backs off, and detection stops for everyone.
"""

from __future__ import annotations

import asyncio
import re
from typing import Literal

import aiomqtt
import numpy as np
import structlog
from pydantic import Field, field_validator, model_validator

from edged.base.errors import RowError
from edged.base.log import RateLimit
from edged.base.tasks import run_together
from edged.builtin.mqtt.formats import (
    Format,
    LayoutName,
    MessageParser,
    TopicRouter,
    check_template,
    make_decoder,
)
from edged.mqtt.link import BrokerConfig, BrokerLink, Received
from edged.plugin.components import BuildContext, Component, Emit, Readings
from edged.plugin.config import SourceConfig
from edged.plugin.rows import MESSAGE_REASONS, ROW_REASONS, check_turbine_id

log = structlog.get_logger("edged.mqtt")

# Taken from the inbox at a time, at most: parsed together, so this bounds what one
# parse holds (a burst of 64 KiB batches must not become one 100 MB string).
_TAKE = 2048  # messages
_TAKE_BYTES = 256 * 1024  # payload bytes (at least one message)
_LOG_EVENT = {"messages_rejected": "message_rejected", "rows_rejected": "row_rejected"}
#: messages_rejected reason of a message the parser failed on unforeseen (a bug).
DECODE_FAILED = "decode_failed"
#: What messages_rejected{source,reason} counts under.
REJECTED_MESSAGE_REASONS = (*MESSAGE_REASONS, DECODE_FAILED)


class MqttSourceConfig(SourceConfig):
    type: Literal["mqtt"]
    broker: BrokerConfig = Field(description="The broker to subscribe on.")
    topics: list[str] = Field(
        default_factory=lambda: ["turbines/{turbine}/raw"], min_length=1,
        description="Topic templates; {turbine} (a whole level) is subscribed as + and "
        "names the turbine. + and # match without naming it.",
    )
    turbine_field: str | None = Field(
        None, min_length=1,
        description="For topics without {turbine}: the JSON key (or the layout's column, "
        "for CSV) holding the turbine id, e.g. turbineId.",
    )
    turbine: str | None = Field(
        None, min_length=1, max_length=128,
        description="For topics without {turbine}: one fixed turbine id for every row "
        "(AWS's successor sample publishes one turbine on plain turbine/raw).",
    )
    turbine_pattern: str | None = Field(
        None, min_length=1, max_length=1000,
        description="Turbine ids this source accepts: a regular expression the whole id "
        "must match, e.g. '^T[0-9]{1,4}$'. Rows of other ids are rejected "
        "(turbine_not_allowed). None: any id of at most 128 characters.",
    )
    qos: Literal[0, 1] = Field(0, description="Subscription QoS. 1 with a persistent "
                               "session keeps rows across short outages.")
    format: Format = Field("auto", description="json, csv, or auto: JSON when the "
                           "message starts with { or [, CSV otherwise.")
    layout: LayoutName = Field(
        "dataset23",
        description="dataset23: the dataset's 23 columns (JSON keys are the column names); "
        "successor20: the 20-field CSV line of AWS's successor sample (and the same names "
        "as JSON keys); custom: give columns and/or keys.",
    )
    columns: list[str] | None = Field(
        None, min_length=1, description="layout custom: column names by CSV position "
        "(any name for columns edged does not use).")
    keys: dict[str, str] = Field(
        default_factory=dict,
        description="JSON key of each input that is not named like the input, e.g. "
        "{voltage: volts}.",
    )
    max_message_bytes: int = Field(65536, ge=64, le=16 * 1024 * 1024,
                                   description="Larger messages are rejected unread.")
    max_queued_messages: int = Field(
        100_000, ge=100, le=10_000_000,
        description="Messages received but not yet parsed; when full the oldest is "
        "dropped and counted (mqtt_messages_dropped).",
    )
    max_queued_bytes: int = Field(
        64 * 1024 * 1024, ge=64 * 1024, le=4 * 1024 * 1024 * 1024,
        description="Payload bytes of the messages received but not yet parsed; beyond "
        "it the oldest are dropped and counted (mqtt_messages_dropped).",
    )
    batch_rows: int = Field(2000, ge=1, le=100_000,
                            description="Most rows handed to the pipeline at once.")
    batch_ms: float = Field(5.0, ge=0, le=1000,
                            description="Longest a row waits to be batched with others "
                            "(it adds to the latency of every decision).")

    @field_validator("topics")
    @classmethod
    def _templates(cls, value: list[str]) -> list[str]:
        for template in value:
            check_template(template)
        return value

    @field_validator("turbine_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"turbine_pattern is not a regular expression: {exc}") \
                    from None
        return value

    @property
    def allowed_turbines(self) -> re.Pattern[str] | None:
        return None if self.turbine_pattern is None else re.compile(self.turbine_pattern)

    @model_validator(mode="after")
    def _turbine_source(self) -> MqttSourceConfig:
        without = [t for t in self.topics if "{turbine}" not in t]
        if self.turbine is not None and self.turbine_field is not None:
            raise ValueError("give turbine (one fixed id) or turbine_field (read from "
                             "each row), not both")
        if without and self.turbine is None and self.turbine_field is None:
            raise ValueError(f"topic(s) {without} have no {{turbine}}: say where the "
                             "turbine id is with turbine_field, or give a fixed turbine")
        if not without and (self.turbine is not None or self.turbine_field is not None):
            raise ValueError("turbine and turbine_field apply only to topics without "
                             "{turbine}, and every topic has it")
        if self.layout == "custom" and not self.columns and not self.keys:
            raise ValueError("layout custom needs columns (CSV positions) and/or keys "
                             "(JSON keys)")
        if self.layout != "custom" and self.columns:
            raise ValueError(f"columns are only for layout custom ({self.layout} has its "
                             "own)")
        if self.turbine is not None:
            try:
                check_turbine_id(self.turbine, "turbine", self.allowed_turbines)
            except RowError as exc:
                raise ValueError(exc.detail) from None
        if self.max_queued_bytes < self.max_message_bytes:
            raise ValueError("max_queued_bytes must hold at least one message of "
                             "max_message_bytes")
        return self


class MqttSource(Component):
    def __init__(self, config: MqttSourceConfig, ctx: BuildContext) -> None:
        self.config = config
        self.name = ctx.name
        self.counters = ctx.counters
        # Listed at 0 from the start (/metrics): a zero apart from a counter not wired.
        ctx.counters.declare("rows_rejected", {"reason": ROW_REASONS}, source=ctx.name)
        ctx.counters.declare("messages_rejected", {"reason": REJECTED_MESSAGE_REASONS},
                             source=ctx.name)
        allowed = config.allowed_turbines
        decoder = make_decoder(config.layout, ctx.inputs, columns=config.columns,
                               keys=config.keys, turbine_field=config.turbine_field,
                               turbine_pattern=allowed)
        self.router = TopicRouter(config.topics, pattern=allowed)
        self.parser = MessageParser(decoder, self.router, fmt=config.format,
                                    max_bytes=config.max_message_bytes,
                                    turbine=config.turbine)
        self.link = BrokerLink(config.broker, name=ctx.name, device_id=ctx.device_id,
                               counters=ctx.counters, kind="source",
                               inbox_size=config.max_queued_messages,
                               inbox_bytes=config.max_queued_bytes,
                               # Larger messages are refused: never held whole.
                               max_payload=config.max_message_bytes)
        self._width = len(ctx.inputs)
        self._rate_limit = RateLimit()
        self.rows_received = 0
        self.messages_received = 0

    async def __aenter__(self) -> MqttSource:
        await self.link.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.link.__aexit__(*exc)

    async def run(self, emit: Emit) -> None:
        await run_together([
            (f"edged[source.{self.name}].connection", self.link.run(self._subscribe)),
            (f"edged[source.{self.name}].receive", self._receive(emit)),
        ])

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        qos = self.config.qos
        granted = await client.subscribe([(t, qos) for t in self.router.subscriptions])
        refused = [topic for topic, code in zip(self.router.subscriptions, granted,
                                                strict=False)
                   if getattr(code, "value", code) >= 0x80]
        if refused:
            self.counters.inc("mqtt_subscriptions_refused", len(refused), source=self.name)
            log.error("mqtt_subscribe_refused", source=self.name, topics=refused)
        log.info("mqtt_subscribed", source=self.name, topics=list(self.router.subscriptions),
                 qos=qos)

    async def _receive(self, emit: Emit) -> None:
        inbox = self.link.inbox
        loop = asyncio.get_running_loop()
        batch_s = self.config.batch_ms / 1000
        limit = self.config.batch_rows
        while True:
            await inbox.wait()
            deadline = loop.time() + batch_s
            turbines: list[str] = []
            blocks: list[np.ndarray] = []
            while True:
                self._parse(inbox.take(max(1, min(_TAKE, limit - len(turbines))),
                                       _TAKE_BYTES), turbines, blocks)
                if len(turbines) >= limit:
                    break
                if not len(inbox):
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    # Let more messages arrive: one batch per burst, not per message.
                    await asyncio.sleep(remaining)
                    if not len(inbox):
                        break
            if turbines:
                self.rows_received += len(turbines)
                values = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
                await emit(Readings(tuple(turbines), values))

    def _parse(self, messages: list[Received], turbines: list[str],
               blocks: list[np.ndarray]) -> None:
        """Append the rows of ``messages`` to ``turbines`` and ``blocks`` (arrays of rows),
        in message order: plain CSV messages parsed together, the rest one by one."""
        if not messages:
            return
        topics, payloads, *_ = zip(*messages, strict=True)
        rest, names, values, ends = self.parser.parse_lines(topics, payloads)
        done = 0  # rows of names/values handed on
        for index in rest:
            upto = ends[index]  # the rows of the messages before it, parsed together
            if upto > done:
                turbines.extend(names[done:upto])
                blocks.append(values[done:upto])
                done = upto
            found_turbines: list[str] = []
            found: list[list[float]] = []
            self._parse_one(messages[index], found_turbines, found)
            if found:
                turbines.extend(found_turbines)
                blocks.append(self._array(found))
        if done < len(names):
            turbines.extend(names[done:])
            blocks.append(values[done:])
        self.messages_received += len(messages)

    def _array(self, values: list[list[float]]) -> np.ndarray:
        array = np.array(values, dtype=np.float64)
        return array.reshape(len(values), self._width)

    def _parse_one(self, message: Received, turbines: list[str],
                   values: list[list[float]]) -> None:
        rejected: list[RowError] = []
        topic = message.topic
        try:
            self.parser.parse(topic, message.payload, turbines, values, rejected)
        except RowError as exc:
            self._reject("messages_rejected", exc, topic)
        except Exception as exc:  # noqa: BLE001  (see the module docstring)
            # Rows come in (turbine, values) pairs; a failure between the two appends
            # must not shift every later row onto the wrong turbine.
            del turbines[len(values):], values[len(turbines):]
            self._reject("messages_rejected", RowError(
                DECODE_FAILED, f"{type(exc).__name__}: {str(exc)[:200]}"), topic)
        for exc in rejected:
            self._reject("rows_rejected", exc, topic)

    def _reject(self, counter: str, exc: RowError, topic: str) -> None:
        self.counters.inc(counter, source=self.name, reason=exc.reason)
        suppressed = self._rate_limit.allow(f"{counter}:{exc.reason}")
        if suppressed is not None:
            log.warning(_LOG_EVENT[counter], source=self.name, topic=topic[:200],
                        reason=exc.reason, detail=exc.detail,
                        suppressed_since_last=suppressed)
