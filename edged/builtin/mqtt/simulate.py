"""``edged simulate``: simulated turbines publishing their rows on an MQTT broker.

A test bench for the ``mqtt`` source (and anything else that reads a turbine bus): N
turbines of :class:`edged.windturbine.simulator.WindFarm`, one message per turbine per
tick (or ``--batch`` rows per message), faults by schedule and, while running, by JSON
messages on a control topic::

    {"turbine": 2, "kind": "vibration", "duration": 10}   # duration optional: until cleared
    {"turbine": 2, "clear": true}                          # "kind" optional: all kinds

A command-line tool rather than a daemon part, so it drives paho directly from one thread:
the messages of a tick are queued and written together (asyncio and aiomqtt would wait for
each publish), which keeps 1,000 turbines at 20 Hz within a fraction of one core.
"""

from __future__ import annotations

import argparse
import math
import re
import select
import signal
import sys
import time
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from edged.base import strict_json
from edged.base.log import RateLimit
from edged.builtin.mqtt.formats import LAYOUTS, PLACEHOLDER, check_template
from edged.plugin.registry import CliCommand
from edged.windturbine.layout import DATASET_COLUMNS, FAULT_KINDS
from edged.windturbine.simulator import Drift, Fault, WindFarm, parse_drifts, parse_schedule

log = structlog.get_logger("edged.simulate")

EX_OK = 0
EX_USAGE = 64
EX_UNAVAILABLE = 69  # sysexits.h: the broker cannot be reached
_TEXT_COLUMNS = frozenset({"nanoId", "turbineId", "eventTime"})
_HISTORY_CHUNK_TICKS = 100
_CONNECT_TIMEOUT_S = 10.0
_RECONNECT_S = 1.0


class UsageError(ValueError):
    """A bad command-line value; the message says which and why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", default="127.0.0.1:1883", metavar="HOST:PORT",
                        help="MQTT broker (default 127.0.0.1:1883)")
    parser.add_argument("--turbines", type=int, default=5, metavar="N",
                        help="turbines to simulate (default 5)")
    parser.add_argument("--rate", type=float, default=20.0, metavar="HZ",
                        help="rows per turbine per second (default 20)")
    parser.add_argument("--faults", default="", metavar="SCHEDULE",
                        help="e.g. '2:vibration@5-12,3:voltage@10+5' (seconds after start)")
    parser.add_argument("--drifts", default="", metavar="SCHEDULE",
                        help="slow drifts, like faults: '1:bias@60+600' (voltage sensor "
                        "bias), bearing (vibration growing), wind (wind regime shifting)")
    parser.add_argument("--format", choices=["json", "csv"], default="json")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="dataset23",
                        help="dataset23: the 23 dataset columns; successor20: the 20-field "
                        "line of AWS's successor sample (no turbine id)")
    parser.add_argument("--topic", default="turbines/{turbine}/raw",
                        help="topic template; {turbine} becomes turbine-0, turbine-1, ...")
    parser.add_argument("--batch", type=int, default=1, metavar="K",
                        help="rows per message (default 1)")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="stop after S seconds (default: run until SIGINT/SIGTERM)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--qos", type=int, choices=[0, 1], default=0)
    parser.add_argument("--control-topic", default="simulate/control",
                        help="JSON fault commands arrive here ('' to disable)")
    parser.add_argument("--history", type=float, default=0.0, metavar="S",
                        help="publish S seconds of past rows at once at start, so a "
                        "consumer can decide at once (25 s fills a 500-row buffer at 20 Hz)")
    parser.add_argument("--history-batch", type=int, default=50, metavar="K",
                        help="rows per message for the history (default 50)")
    parser.add_argument("--farm-id", default="farm", help="the rows' nanoId")
    parser.add_argument("--client-id", default=None, help="MQTT client id")


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    turbines: int
    rate: float
    faults: tuple[Fault, ...]
    format: str
    layout: str
    topic: str
    batch: int
    duration: float | None
    seed: int | None
    qos: int
    control_topic: str
    history: float
    history_batch: int
    farm_id: str
    client_id: str
    drifts: tuple[Drift, ...] = ()


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]\s/]+)(?::(\d+))?", text)
    if not match:
        raise UsageError(f"--broker {text!r}: expected HOST:PORT, like 127.0.0.1:1883")
    host = match[1] or match[3]
    port = int(match[2] or match[4] or 1883)
    if not 1 <= port <= 65535:
        raise UsageError(f"--broker {text!r}: port must be 1..65535")
    return host, port


def _schedule(option: str, parse, text: str, turbines: int) -> list:
    """A faults or drifts schedule given as ``option``, each entry on a turbine that
    exists; UsageError naming the option otherwise."""
    try:
        entries = parse(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
    for entry in entries:
        if entry.turbine >= turbines:
            raise UsageError(f"{option}: turbine {entry.turbine} does not exist (turbines "
                             f"0..{turbines - 1})")
    return entries


def options(args: argparse.Namespace) -> Options:
    """Validate the arguments; UsageError names the first bad one."""
    host, port = parse_broker(args.broker)
    if args.turbines < 1:
        raise UsageError(f"--turbines must be at least 1, got {args.turbines}")
    if not (math.isfinite(args.rate) and 0 < args.rate <= 1000):
        raise UsageError(f"--rate must be in (0, 1000] rows per second, got {args.rate}")
    if args.batch < 1 or args.history_batch < 1:
        raise UsageError("--batch and --history-batch must be at least 1")
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise UsageError(f"--duration must be positive seconds, got {args.duration}")
    if not (math.isfinite(args.history) and 0 <= args.history <= 3600):
        raise UsageError(f"--history must be 0..3600 seconds, got {args.history}")
    faults = _schedule("--faults", parse_schedule, args.faults, args.turbines)
    drifts = _schedule("--drifts", parse_drifts, args.drifts, args.turbines)
    try:
        check_template(args.topic)
    except ValueError as exc:
        raise UsageError(f"--topic: {exc}") from None
    if "+" in args.topic.split("/") or "#" in args.topic.split("/"):
        raise UsageError(f"--topic {args.topic!r}: wildcards cannot be published to")
    if (PLACEHOLDER not in args.topic and args.turbines > 1
            and "turbineId" not in LAYOUTS[args.layout]):
        raise UsageError(f"--topic {args.topic!r} has no {PLACEHOLDER} and layout "
                         f"{args.layout} carries no turbine id, so {args.turbines} "
                         "turbines would be indistinguishable")
    for topic in (args.topic, args.control_topic):
        if topic and any(c in topic for c in "\0"):
            raise UsageError(f"topic {topic!r} contains a NUL character")
    return Options(
        host=host, port=port, turbines=args.turbines, rate=float(args.rate),
        faults=tuple(faults), drifts=tuple(drifts), format=args.format, layout=args.layout,
        topic=args.topic,
        batch=args.batch, duration=args.duration, seed=args.seed, qos=args.qos,
        control_topic=args.control_topic, history=float(args.history),
        history_batch=args.history_batch, farm_id=args.farm_id,
        client_id=args.client_id or f"edged-simulate-{int(time.time() * 1000) % 10**9}",
    )


class Encoder:
    """Dataset records (23 strings each) -> message payloads in one format and layout."""

    def __init__(self, fmt: str, layout: str) -> None:
        columns = LAYOUTS[layout]
        self._pick = itemgetter(*(DATASET_COLUMNS.index(c) for c in columns))
        self.json = fmt == "json"
        # Numbers are written as the simulator formatted them, which is valid JSON.
        self._template = "{" + ",".join(
            f'"{c}":"%s"' if c in _TEXT_COLUMNS else f'"{c}":%s' for c in columns) + "}"

    def row(self, record: list[str]) -> str:
        fields = self._pick(record)
        return self._template % fields if self.json else ",".join(fields)

    def message(self, records: list[list[str]]) -> bytes:
        if len(records) == 1:
            return self.row(records[0]).encode()
        rows = [self.row(r) for r in records]
        text = "[" + ",".join(rows) + "]" if self.json else "\n".join(rows)
        return text.encode()


class Simulation:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        history_ticks = round(opts.history * opts.rate)
        self.history_ticks = history_ticks
        offset = history_ticks / opts.rate  # schedules count from the live start
        self.farm = WindFarm(
            turbines=opts.turbines, rate_hz=opts.rate, seed=opts.seed, farm_id=opts.farm_id,
            faults=[Fault(f.turbine, f.kind, f.start + offset, f.end + offset)
                    for f in opts.faults],
            drifts=[replace(d, start=d.start + offset, end=d.end + offset)
                    for d in opts.drifts],
        )
        self.topics = [opts.topic.replace(PLACEHOLDER, t) for t in self.farm.turbine_ids]
        self.encoder = Encoder(opts.format, opts.layout)
        self.stop = False
        self.published = 0
        self.rows = 0
        self.lost = 0  # rows that fell due while the broker was away
        self.late_ticks = 0
        self.reconnects = 0
        self.client = self._client()
        self._pending: list[list[str]] = []  # records waiting to fill a batch
        self._pending_ticks = 0
        self._retry_at = 0.0
        self._down_since: float | None = None
        self._rate_limit = RateLimit()

    # -- connection ----------------------------------------------------------------------

    def _client(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.opts.client_id)
        # Queue publishes instead of writing each at once; run() writes a tick's worth in
        # one go (paho calls this hook instead of writing when it is set).
        client.on_socket_register_write = lambda *_: None
        client.on_connect = self._on_connect
        client.on_message = self._on_control
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        return client

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any,
                    _properties: Any = None) -> None:
        if reason.is_failure:
            log.error("simulate_connect_refused", broker=self._address, reason=str(reason))
            return
        if self._down_since is not None:
            self.reconnects += 1
            log.info("simulate_reconnected", broker=self._address,
                     gap_s=round(time.monotonic() - self._down_since, 3))
            self._down_since = None
            self._retry_at = 0.0
        if self.opts.control_topic:
            client.subscribe(self.opts.control_topic, qos=1)

    @property
    def _address(self) -> str:
        return f"{self.opts.host}:{self.opts.port}"

    def connect(self) -> None:
        """First connection; OSError or TimeoutError if the broker cannot be reached."""
        self.client.connect(self.opts.host, self.opts.port, keepalive=30)
        deadline = time.monotonic() + _CONNECT_TIMEOUT_S
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no CONNACK from {self._address} within "
                                   f"{_CONNECT_TIMEOUT_S} s")
            self._network(0.05)
        self._network(0.0)
        log.info("simulate_connected", broker=self._address, turbines=self.opts.turbines,
                 rate_hz=self.opts.rate, format=self.opts.format, layout=self.opts.layout)

    def _network(self, timeout: float) -> None:
        """Write what is queued, read what arrived, wait up to ``timeout`` for either."""
        client = self.client
        sock = client.socket()
        if sock is None:
            time.sleep(max(0.0, timeout))
            return
        wants = [sock] if client.want_write() else []
        try:
            readable, writable, _ = select.select([sock], wants, [], max(0.0, timeout))
        except (OSError, ValueError):
            readable, writable = [], []
        if writable:
            client.loop_write()
        if readable:
            client.loop_read()
        client.loop_misc()

    def _flush(self) -> None:
        """Write everything queued, waiting while the socket is full (back-pressure)."""
        client = self.client
        client.loop_write()
        while client.want_write() and client.is_connected() and not self.stop:
            self._network(0.05)

    def _reconnect(self) -> None:
        """One reconnection attempt, at most every _RECONNECT_S while the broker is away."""
        now = time.monotonic()
        if now < self._retry_at:
            return
        if self._down_since is None:
            self._down_since = now
            log.warning("simulate_disconnected", broker=self._address)
        try:
            self.client.reconnect()
        except OSError as exc:
            self._retry_at = now + _RECONNECT_S
            suppressed = self._rate_limit.allow("reconnect")
            if suppressed is not None:
                log.warning("simulate_reconnect_failed", broker=self._address,
                            error=str(exc), suppressed_since_last=suppressed)
            return
        # Connected is only after the CONNACK (_on_connect): give it time before retrying.
        self._retry_at = now + _CONNECT_TIMEOUT_S

    # -- control -------------------------------------------------------------------------

    def _on_control(self, _client: mqtt.Client, _userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        try:
            # Anyone on the broker may publish here: bounded, or a nested message would
            # end the simulator (RecursionError) from inside paho's callback.
            self.control(strict_json.loads(message.payload, max_bytes=4096, max_depth=4))
        except (ValueError, TypeError, KeyError) as exc:  # JsonError is a ValueError
            log.warning("simulate_control_rejected", payload=message.payload[:200].decode(
                errors="replace"), error=str(exc)[:200])

    def control(self, command: dict) -> None:
        """Apply one control command (see the module docstring); ValueError if bad."""
        if not isinstance(command, dict):
            raise ValueError("a command is a JSON object")
        turbine = self._turbine_index(command.get("turbine"))
        kind = command.get("kind")
        if command.get("clear"):
            self.farm.clear(turbine, kind)
            log.info("fault_cleared", turbine=self.farm.turbine_ids[turbine], kind=kind)
            return
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        duration = command.get("duration")
        if duration is not None and (isinstance(duration, bool)
                                     or not isinstance(duration, int | float)):
            raise ValueError(f"duration must be seconds, got {duration!r}")
        self.farm.inject(turbine, kind, None if duration is None else float(duration))
        log.info("fault_injected", turbine=self.farm.turbine_ids[turbine], kind=kind,
                 duration_s=duration)

    def _turbine_index(self, value: object) -> int:
        if isinstance(value, str) and value in self.farm.turbine_ids:
            return self.farm.turbine_ids.index(value)
        if isinstance(value, str) and value.isdecimal():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"turbine must be an index or an id like turbine-2, got "
                             f"{value!r}")
        if not 0 <= value < self.farm.turbines:
            raise ValueError(f"turbine {value} out of range 0..{self.farm.turbines - 1}")
        return value

    # -- publishing ----------------------------------------------------------------------

    def _publish(self, records: list[list[str]], ticks: int, batch: int) -> None:
        """Publish ``ticks`` ticks of records (tick-major), ``batch`` rows per message."""
        n = self.farm.turbines
        client, topics, qos = self.client, self.topics, self.opts.qos
        if not client.is_connected():
            self.lost += len(records)
            return
        if batch == 1:
            row = self.encoder.row
            for i, record in enumerate(records):
                client.publish(topics[i % n], row(record).encode(), qos)
            self.published += len(records)
            self.rows += len(records)
            return
        encode = self.encoder.message
        for start in range(0, ticks, batch):
            stop = min(ticks, start + batch)
            for t in range(n):
                rows = records[start * n + t: stop * n: n]
                client.publish(topics[t], encode(rows), qos)
                self.published += 1
            self.rows += (stop - start) * n

    def _history(self, wall_start: float) -> None:
        remaining, done = self.history_ticks, 0
        first = wall_start - self.history_ticks / self.opts.rate
        while remaining > 0 and not self.stop:
            chunk = min(remaining, _HISTORY_CHUNK_TICKS)
            records = self.farm.records(self.farm.ticks(chunk), first + done / self.opts.rate)
            self._publish(records, chunk, self.opts.history_batch)
            self._flush()
            remaining -= chunk
            done += chunk

    def _tick(self, due: int, wall: float) -> None:
        records = self.farm.records(self.farm.ticks(due), wall)
        batch = self.opts.batch
        if batch == 1:
            self._publish(records, due, 1)
            return
        self._pending.extend(records)
        self._pending_ticks += due
        whole = self._pending_ticks // batch * batch
        if whole:
            n = self.farm.turbines
            self._publish(self._pending[:whole * n], whole, batch)
            del self._pending[:whole * n]
            self._pending_ticks -= whole

    def run(self) -> dict[str, float]:
        """Publish until stopped or ``duration`` is over; the run's statistics."""
        opts = self.opts
        wall_start = time.time()
        self._history(wall_start)
        history_rows, history_messages = self.rows, self.published
        start = time.monotonic()
        wall_start = time.time()
        period = 1.0 / opts.rate
        max_step = max(1, round(opts.rate / 10))
        done = 0
        while not self.stop:
            now = time.monotonic()
            elapsed = now - start
            if opts.duration is not None and elapsed >= opts.duration:
                break
            # Catch up on late ticks in one go, but in bounded steps, so stopping, the
            # network and the duration are looked at while behind too.
            due = min(int(elapsed * opts.rate) + 1 - done, max_step)
            if due > 0:
                self.late_ticks += due - 1  # ticks that came only as a catch-up
                self._tick(due, wall_start + done * period)
                done += due
                self.client.loop_write()
            if not self.client.is_connected():
                self._reconnect()
            self._network(start + done * period - time.monotonic())
        self._flush()
        elapsed = time.monotonic() - start
        live_rows = self.rows - history_rows
        live_messages = self.published - history_messages
        return {
            "messages_per_s": round(live_messages / elapsed, 1) if elapsed > 0 else 0.0,
            "published": self.published,
            "rows": self.rows,
            "history_rows": history_rows,
            "seconds": round(elapsed, 3),
            "rows_per_s": round(live_rows / elapsed, 1) if elapsed > 0 else 0.0,
            "target_rows_per_s": opts.rate * opts.turbines,
            "late_ticks": self.late_ticks,
            "lost_rows": self.lost,
            "reconnects": self.reconnects,
        }

    def close(self) -> None:
        if self.client.is_connected():
            self.client.disconnect()
            self._flush()
            self._network(0.05)


def run(args: argparse.Namespace) -> int:
    try:
        opts = options(args)
    except UsageError as exc:
        _say(sys.stderr, f"edged simulate: {exc}")
        return EX_USAGE
    simulation = Simulation(opts)
    try:
        simulation.connect()
    except (OSError, TimeoutError) as exc:
        _say(sys.stderr, f"edged simulate: cannot connect to broker {opts.host}:{opts.port}: "
             f"{exc}")
        return EX_UNAVAILABLE

    def stop(_signum: int, _frame: object) -> None:
        simulation.stop = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stats = simulation.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        simulation.close()
    _say(sys.stdout, f"published {stats['published']} messages ({stats['rows']} rows, "
         f"{stats['history_rows']} of them history) in {stats['seconds']} s: "
         f"{stats['messages_per_s']} messages/s, {stats['rows_per_s']} rows/s live "
         f"(target {stats['target_rows_per_s']:g}), "
         f"late ticks {stats['late_ticks']}, lost rows {stats['lost_rows']}, "
         f"reconnects {stats['reconnects']}")
    return EX_OK


def _say(stream, line: str) -> None:
    """The command's own output (a CLI prints on purpose; logs go through structlog)."""
    stream.write(line + "\n")
    stream.flush()


COMMAND = CliCommand("simulate", "publish simulated turbines on an MQTT broker",
                     add_arguments, run)
