"""The mqtt source against a real mosquitto broker (the `mosquitto` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiomqtt
import numpy as np
import pytest
from structlog.testing import capture_logs

from edged.base.metrics import Counters
from edged.builtin.mqtt.source import MqttSource, MqttSourceConfig
from edged.plugin.components import BuildContext, Readings
from edged.windturbine import layout
from edged.windturbine.simulator import WindFarm

NAME = "bus"
LINK = "source.bus"  # the connection's component label
COL = {name: i for i, name in enumerate(layout.DATASET_COLUMNS)}


def make_source(mosquitto, tmp_path: Path, **overrides) -> tuple[MqttSource, Counters]:
    body = {"type": "mqtt", "broker": {"host": mosquitto.host, "port": mosquitto.port,
                                       "reconnect_min_s": 0.2, "reconnect_max_s": 1.0,
                                       "connect_timeout_s": 3}} | overrides
    counters = Counters()
    ctx = BuildContext(name=NAME, device_id="test", state_dir=tmp_path, counters=counters,
                       inputs=layout.INPUTS)
    return MqttSource(MqttSourceConfig.model_validate(body), ctx), counters


def farm_records(ticks: int, turbines: int, seed: int = 5) -> list[list[str]]:
    farm = WindFarm(turbines=turbines, rate_hz=20, seed=seed)
    return farm.records(farm.ticks(ticks), 1_700_000_000.0)


def expected(record: list[str]) -> list[float]:
    return [float(record[COL[c]]) for c in layout.INPUTS]


def as_json(record: list[str]) -> str:
    text = {"nanoId", "turbineId", "eventTime"}
    return json.dumps({c: v if c in text else float(v)
                       for c, v in zip(layout.DATASET_COLUMNS, record, strict=True)})


class Collector:
    """An emit that keeps every batch and can wait for a number of rows."""

    def __init__(self) -> None:
        self.batches: list[Readings] = []
        self._changed = asyncio.Event()

    async def __call__(self, readings: Readings) -> None:
        self.batches.append(readings)
        self._changed.set()

    @property
    def rows(self) -> int:
        return sum(len(b.turbines) for b in self.batches)

    def turbines(self) -> list[str]:
        return [t for b in self.batches for t in b.turbines]

    def values(self) -> np.ndarray:
        return np.concatenate([b.values for b in self.batches])

    async def wait_rows(self, rows: int, seconds: float = 10.0) -> None:
        async with asyncio.timeout(seconds):
            while self.rows < rows:
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def running(source: MqttSource, emit):
    async with source:
        task = asyncio.create_task(source.run(emit), name="test-source")
        try:
            yield task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def publisher(broker):
    async with aiomqtt.Client(broker.host, broker.port, identifier="test-publisher") as client:
        yield client


async def eventually(predicate, seconds: float = 10.0) -> None:
    """Until ``predicate()`` holds; TimeoutError after ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"still not true after {seconds} s")
        await asyncio.sleep(0.01)


async def subscribed(source: MqttSource) -> None:
    """Until the source's subscription is in place (the broker drops messages before)."""
    await eventually(lambda: source.link.client is not None, 5.0)
    await asyncio.sleep(0.2)


async def test_json_and_csv_messages_arrive_as_readings(mosquitto, tmp_path):
    source, counters = make_source(mosquitto, tmp_path)
    collect = Collector()
    recs = farm_records(ticks=4, turbines=3)
    async with running(source, collect), publisher(mosquitto) as pub:
        await subscribed(source)
        for i, record in enumerate(recs):
            turbine = record[COL["turbineId"]]
            payload = as_json(record) if i % 2 else ",".join(record)
            await pub.publish(f"turbines/{turbine}/raw", payload)
        await collect.wait_rows(len(recs))
    assert collect.turbines() == [r[COL["turbineId"]] for r in recs]
    np.testing.assert_array_equal(collect.values(), [expected(r) for r in recs])
    assert collect.values().shape == (12, len(layout.INPUTS))
    assert counters.total("rows_rejected") == counters.total("messages_rejected") == 0


async def test_batches_and_a_fixed_turbine_on_a_plain_topic(mosquitto, tmp_path):
    source, _ = make_source(mosquitto, tmp_path, topics=["turbine/raw"], turbine="mini",
                            layout="successor20", format="csv")
    collect = Collector()
    recs = farm_records(ticks=6, turbines=1)
    lines = [",".join(r[COL[c]] for c in layout.SUCCESSOR_COLUMNS) for r in recs]
    async with running(source, collect), publisher(mosquitto) as pub:
        await subscribed(source)
        await pub.publish("turbine/raw", lines[0])
        await pub.publish("turbine/raw", "\n".join(lines[1:]))
        await collect.wait_rows(6)
    assert collect.turbines() == ["mini"] * 6
    np.testing.assert_array_equal(collect.values(), [expected(r) for r in recs])


async def test_malformed_messages_are_counted_and_spare_other_turbines(mosquitto, tmp_path):
    source, counters = make_source(mosquitto, tmp_path, max_message_bytes=4096)
    collect = Collector()
    recs = farm_records(ticks=5, turbines=2)
    good = [r for r in recs if r[COL["turbineId"]] == "turbine-1"]
    spoiled = list(recs[0])
    spoiled[COL["voltage"]] = "lots"
    bad = [
        ("turbines/turbine-0/raw", b"{not json", "messages_rejected", "bad_json"),
        ("turbines/turbine-0/raw", b"\xff\xfe\xfd", "messages_rejected", "not_utf8"),
        ("turbines/turbine-0/raw", b"1," * 3000, "messages_rejected", "too_large"),
        ("turbines//raw", ",".join(recs[0]).encode(), "messages_rejected", "unknown_topic"),
        ("turbines/turbine-0/raw", b"", "messages_rejected", "empty"),
        ("turbines/turbine-0/raw", b"1,2,3", "rows_rejected", "wrong_width"),
        ("turbines/turbine-0/raw", ",".join(spoiled).encode(), "rows_rejected",
         "not_a_number"),
        ("turbines/turbine-0/raw", as_json(recs[0]).replace('"qx": ', '"qx": NaN, "x": ')
         .encode(), "rows_rejected", "not_finite"),
    ]
    with capture_logs() as logs:
        async with running(source, collect), publisher(mosquitto) as pub:
            await subscribed(source)
            for i, record in enumerate(good):
                topic, payload, _, _ = bad[i % len(bad)]
                await pub.publish(topic, payload)
                await pub.publish("turbines/turbine-1/raw", ",".join(record))
            for topic, payload, _, _ in bad[len(good):]:
                await pub.publish(topic, payload)
            await pub.publish("turbines/turbine-1/raw", ",".join(good[0]))
            await collect.wait_rows(len(good) + 1)
            await asyncio.sleep(0.3)  # anything bad still on its way is counted too
    assert collect.turbines() == ["turbine-1"] * (len(good) + 1)
    np.testing.assert_array_equal(collect.values()[:len(good)], [expected(r) for r in good])
    for _, _, counter, reason in bad:
        assert counters.get(counter, source=NAME, reason=reason) == 1, (counter, reason)
    assert counters.total("messages_rejected") == 5
    assert counters.total("rows_rejected") == 3
    warned = {(e["event"], e["reason"]) for e in logs if e["log_level"] == "warning"}
    assert ("message_rejected", "bad_json") in warned
    assert ("row_rejected", "not_a_number") in warned


async def test_a_burst_is_emitted_in_few_batches_with_nothing_dropped(mosquitto, tmp_path):
    source, counters = make_source(mosquitto, tmp_path, batch_rows=500)
    collect = Collector()
    lines = [",".join(r) for r in farm_records(ticks=500, turbines=1)]
    record = lines[-1]
    messages = 3000
    async with running(source, collect), publisher(mosquitto) as pub:
        await subscribed(source)
        await asyncio.gather(*(pub.publish(f"turbines/t{i % 50}/raw", record)
                               for i in range(messages)))
        await collect.wait_rows(messages, seconds=20)
    assert collect.rows == messages
    assert len(collect.batches) < messages / 10
    assert max(len(b.turbines) for b in collect.batches) <= 500 + 256
    assert counters.total("mqtt_messages_dropped") == 0
    assert source.link.inbox.dropped == 0


async def test_a_full_inbox_drops_the_oldest_and_counts(mosquitto, tmp_path):
    source, counters = make_source(mosquitto, tmp_path, max_queued_messages=100)
    release = asyncio.Event()
    received: list[Readings] = []

    async def stuck_emit(readings: Readings) -> None:
        received.append(readings)
        await release.wait()  # a pipeline that does not take anything for a while

    record = farm_records(ticks=1, turbines=1)[0]
    async with running(source, stuck_emit), publisher(mosquitto) as pub:
        await subscribed(source)
        await pub.publish("turbines/first/raw", ",".join(record))
        await eventually(lambda: received, 5)
        for i in range(400):
            await pub.publish(f"turbines/t{i}/raw", ",".join(record))
        await eventually(lambda: source.link.inbox.received >= 401, 5)
        release.set()
        await eventually(lambda: sum(len(r.turbines) for r in received) >= 101, 5)
    assert counters.get("mqtt_messages_dropped", component=LINK) == 300
    kept = [t for r in received[1:] for t in r.turbines]
    assert kept == [f"t{i}" for i in range(300, 400)]  # the newest survive


async def test_the_source_survives_a_broker_restart(mosquitto, tmp_path):
    source, counters = make_source(mosquitto, tmp_path)
    collect = Collector()
    recs = farm_records(ticks=2, turbines=2)
    with capture_logs() as logs:
        async with running(source, collect) as task:
            async with publisher(mosquitto) as pub:
                await subscribed(source)
                await pub.publish("turbines/a/raw", ",".join(recs[0]))
                await collect.wait_rows(1)
            await asyncio.to_thread(mosquitto.restart, 1.0)
            await eventually(lambda: counters.get("mqtt_reconnects", component=LINK) >= 1)
            await subscribed(source)
            async with publisher(mosquitto) as pub:
                for record in recs[1:]:
                    await pub.publish("turbines/b/raw", ",".join(record))
                await collect.wait_rows(len(recs))
            assert not task.done()
    assert collect.turbines() == ["a"] + ["b"] * (len(recs) - 1)
    assert counters.get("mqtt_disconnected_seconds", component=LINK) >= 1.0
    connected = [e for e in logs if e["event"] == "mqtt_connected"]
    assert [e["reconnect"] for e in connected] == [False, True]
    assert connected[1]["gap_s"] >= 1.0
    assert any(e["event"] == "mqtt_disconnected" for e in logs)
    assert sum(e["event"] == "mqtt_subscribed" for e in logs) == 2  # resubscribed


async def test_start_fails_when_the_broker_is_unreachable(mosquitto, tmp_path):
    source, _ = make_source(mosquitto, tmp_path)
    mosquitto.stop()
    with pytest.raises(aiomqtt.MqttError):
        async with source:
            pass


def test_config_rules():
    broker = {"host": "localhost"}
    ok = MqttSourceConfig.model_validate({"type": "mqtt", "broker": broker})
    assert ok.topics == ["turbines/{turbine}/raw"] and ok.qos == 0
    for bad in (
        {"topics": ["turbine/raw"]},  # no turbine id anywhere
        {"topics": ["turbine/raw"], "turbine": "a", "turbine_field": "turbineId"},
        {"turbine": "a"},  # every topic names the turbine already
        {"topics": ["turbines/x{turbine}"]},
        {"layout": "custom"},
        {"columns": ["a"]},
        {"qos": 2},
        {"format": "xml"},
        {"max_message_bytes": 10},
        {"broker": {"host": "h", "password": "${EDGED_NOT_SET_ANYWHERE}",
                    "username": "u"}},
        {"broker": {"host": "h", "tls": {"cert_file": "c.pem"}}},
        {"unknown": 1},
        {"turbine_pattern": "T[0-9"},  # not a regular expression
        {"topics": ["turbine/raw"], "turbine": "mini-1", "turbine_pattern": "T[0-9]+"},
        {"topics": ["turbine/raw"], "turbine": "t" * 129},
        {"max_message_bytes": 1024 * 1024, "max_queued_bytes": 512 * 1024},
    ):
        with pytest.raises(ValueError):
            MqttSourceConfig.model_validate({"type": "mqtt", "broker": broker} | bad)


async def test_a_turbine_silent_on_the_bus_is_reported_with_its_gap(mosquitto, tmp_path):
    """Per-turbine silence is the pipeline's to report: sensor_stale, then
    sensor_recovered with ``gap_s``, the seconds the turbine was not heard."""
    from edged.builtin.onnx import OnnxBackend, OnnxConfig
    from edged.builtin.windturbine import WindTurbineConfig, WindTurbineStage, params_for
    from edged.config import PipelineSpec
    from edged.runtime.pipeline import Pipeline

    backend = OnnxBackend(OnnxConfig(type="onnx"))
    stage = WindTurbineStage(params_for(WindTurbineConfig(type="windturbine"),
                                        backend.manifest))
    spec = PipelineSpec(inputs=["bus"], preprocessor={"type": "windturbine"},
                        inference={"type": "onnx"}, stale_after_s=0.3)
    source, counters = make_source(mosquitto, tmp_path)
    pipeline = Pipeline("turbines", spec, stage, backend, counters)
    events = []
    pipeline.subscribers.append(type("Events", (), {
        "on_round": lambda self, round: None,
        "on_event": lambda self, event: events.append(event)})())
    lines = [",".join(r) for r in farm_records(ticks=500, turbines=1)]
    record = lines[-1]

    async def publish(pub: aiomqtt.Client, seconds: float) -> None:
        end = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < end:
            await pub.publish("turbines/quiet/raw", record)
            await asyncio.sleep(0.05)

    with capture_logs() as logs:
        async with running(source, pipeline.emit):
            loops = [asyncio.create_task(pipeline.ingest_loop()),
                     asyncio.create_task(pipeline.watch_loop())]
            try:
                async with publisher(mosquitto) as pub:
                    await subscribed(source)
                    # Only a turbine whose history filled is watched.
                    for batch in (lines[:250], lines[250:]):
                        await pub.publish("turbines/quiet/raw", "\n".join(batch))
                    await publish(pub, 0.3)
                    await asyncio.sleep(1.2)  # silence
                    await publish(pub, 0.6)
                await eventually(lambda: len(events) >= 2, 5)
            finally:
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
    assert [e.kind for e in events] == ["sensor_stale", "sensor_recovered"]
    assert events[0].detail["silent_s"] > 0.3
    assert 1.0 < events[1].detail["gap_s"] < 2.5
    recovered = [e for e in logs if e["event"] == "sensor_recovered"]
    assert recovered and recovered[0]["gap_s"] == events[1].detail["gap_s"]


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA and a broker certificate for 127.0.0.1 (openssl's command line)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ca_key, ca, key, csr, cert = (directory / n for n in (
        "ca.key", "ca.pem", "broker.key", "broker.csr", "broker.pem"))
    ext = directory / "san.cnf"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
        str(ca), "-days", "2", "-subj", "/CN=edged test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return {"ca": ca, "cert": cert, "key": key}


@pytest.fixture
def cert_dir():
    """Readable by the broker: mosquitto started as root reads certificates as user
    mosquitto, and pytest's tmp_path is private to its owner."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="edged-tls-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


async def test_tls_with_a_private_ca(tmp_path, cert_dir):
    from tests.support import Mosquitto, free_port

    certs = make_certificates(cert_dir)
    for path in certs.values():
        path.chmod(0o644)
    tls_port = free_port()
    extra = (f"listener {tls_port} 127.0.0.1\ncertfile {certs['cert']}\n"
             f"keyfile {certs['key']}\n")
    with Mosquitto(tmp_path, extra_config=extra) as broker:
        tls_broker = {"host": "127.0.0.1", "port": tls_port, "connect_timeout_s": 5,
                      "tls": {"ca_file": str(certs["ca"])}}
        source, counters = make_source(broker, tmp_path, broker=tls_broker)
        collect = Collector()
        record = farm_records(ticks=1, turbines=1)[0]
        async with running(source, collect), publisher(broker) as pub:  # plain publisher
            await subscribed(source)
            await pub.publish("turbines/secure/raw", ",".join(record))
            await collect.wait_rows(1)
        assert collect.turbines() == ["secure"]
        # Without the CA the broker's certificate is not trusted: the start fails.
        untrusted = tls_broker | {"tls": {}}
        source, _ = make_source(broker, tmp_path, broker=untrusted)
        with pytest.raises(aiomqtt.MqttError):
            async with source:
                pass


async def test_a_persistent_session_keeps_qos1_rows_while_away(mosquitto, tmp_path):
    broker = {"host": mosquitto.host, "port": mosquitto.port, "client_id": "edged-persist",
              "persistent_session": True}
    record = farm_records(ticks=1, turbines=1)[0]
    source, _ = make_source(mosquitto, tmp_path, broker=broker, qos=1)
    async with running(source, Collector()):
        await subscribed(source)
    async with publisher(mosquitto) as pub:  # edged is away (restarting, say)
        for i in range(5):
            await pub.publish(f"turbines/t{i}/raw", ",".join(record), qos=1)
    source, _ = make_source(mosquitto, tmp_path, broker=broker, qos=1)
    collect = Collector()
    async with running(source, collect):
        await collect.wait_rows(5)
    assert collect.turbines() == [f"t{i}" for i in range(5)]


async def test_no_message_stops_the_receive_loop(mosquitto, tmp_path, monkeypatch):
    """Whatever a message makes the parser raise, it is one counted rejection and the
    next message is read: the source is never restarted for a bad message."""
    source, counters = make_source(mosquitto, tmp_path, turbine_pattern="t[0-9]+")
    parse = source.parser.parse

    def buggy(topic, payload, turbines, values, rejected):
        if payload == b"boom":
            turbines.append("t0")  # half a row, then a failure nobody foresaw
            raise KeyError("a bug")
        return parse(topic, payload, turbines, values, rejected)

    monkeypatch.setattr(source.parser, "parse", buggy)
    collect = Collector()
    record = ",".join(farm_records(ticks=1, turbines=1)[0])
    nested = '{"a":' * 2000 + "1" + "}" * 2000
    with capture_logs() as logs:
        async with running(source, collect) as task, publisher(mosquitto) as pub:
            await subscribed(source)
            for payload, topic in ((nested, "t1"), ("boom", "t1"), ("[" * 5000, "t1"),
                                   (record, "ghost"), (record, "t" * 5000), (record, "t2")):
                await pub.publish(f"turbines/{topic}/raw", payload)
            await collect.wait_rows(1)
            assert not task.done()
    assert collect.turbines() == ["t2"]
    assert {reason: counters.get("messages_rejected", source=NAME, reason=reason)
            for reason in ("too_deep", "decode_failed", "turbine_not_allowed",
                           "bad_turbine_id")} == {"too_deep": 2, "decode_failed": 1,
                                                  "turbine_not_allowed": 1,
                                                  "bad_turbine_id": 1}
    failed = [e for e in logs if e.get("reason") == "decode_failed"]
    assert failed[0]["detail"] == "KeyError: 'a bug'"
    assert max(len(str(e)) for e in logs) < 2000  # a 5,000-character id is not logged whole


def test_the_inbox_is_bounded_in_bytes():
    from edged.mqtt.link import Inbox

    dropped = []
    inbox = Inbox(100, on_drop=lambda: dropped.append(1), max_bytes=1000)
    message = type("Message", (), {})
    for size in (400, 400, 400, 100):
        item = message()
        item.payload = b"x" * size
        inbox.put_nowait(item)
    assert len(dropped) == 1 and len(inbox) == 3 and inbox.bytes == 900
    assert [len(m.payload) for m in inbox.take(2)] == [400, 400] and inbox.bytes == 100
    assert len(inbox.take(10)) == 1 and inbox.bytes == 0
