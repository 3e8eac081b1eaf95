"""Mutual TLS on a real mosquitto, as the device meets AWS IoT Core: the broker trusts one
CA, a client proves its thing with a certificate whose CN is the thing name, and the ACL
keeps a thing to its own ``$aws/things/<thing>/`` topics. Test peers use the plain port."""

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path

import aiomqtt
import pytest

from edged.base.metrics import Counters
from edged.mqtt.link import BrokerConfig, BrokerLink
from tests.support import Mosquitto, TestPki, make_pki

THING = "turbine-7"
NOTIFY = f"$aws/things/{THING}/jobs/notify-next"
START = f"$aws/things/{THING}/jobs/start-next"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(tmp_path, pki):
    """mosquitto with the plain listener (anonymous, every topic) and a mutual-TLS one
    on ``tls_port`` whose clients may use only their thing's topics."""
    with Mosquitto(tmp_path, pki=pki, acl=True) as broker:
        yield broker


def thing_config(broker: Mosquitto, pki: TestPki, thing: str = THING,
                 **fields: object) -> BrokerConfig:
    """How the device connects: the broker's CA, the thing's certificate and key."""
    cert, key = pki.client(thing)
    return BrokerConfig.model_validate({
        "host": "127.0.0.1", "port": broker.tls_port, "connect_timeout_s": 5,
        "tls": {"ca_file": pki.ca_file, "cert_file": cert, "key_file": key}} | fields)


def link(config: BrokerConfig) -> BrokerLink:
    return BrokerLink(config, name="jobs", device_id=THING, counters=Counters(),
                      kind="executor")


@contextlib.asynccontextmanager
async def peer(broker: Mosquitto, *topics: str):
    """A plain-port client (no certificate) subscribed to ``topics`` at QoS 1."""
    async with aiomqtt.Client(broker.host, broker.port, identifier="test-peer") as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        yield client


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(5):
        return await anext(aiter(client.messages))


async def taken(device: BrokerLink, count: int) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(5):
        while len(got) < count:
            await device.inbox.wait()
            got += device.inbox.take(count - len(got))
    return got


async def test_a_thing_with_its_certificate_round_trips_qos1_with_a_plain_peer(
        tls_broker, pki):
    # By name, as the device reaches its AWS endpoint: the broker's DNS name is checked.
    config = thing_config(tls_broker, pki, host="localhost")
    async with peer(tls_broker, START) as plain, link(config) as device:
        await device.client.subscribe(NOTIFY, qos=1)
        await plain.publish(NOTIFY, b'{"execution": null}', qos=1)
        [notified] = await taken(device, 1)
        assert (str(notified.topic), notified.payload, notified.qos) == (
            NOTIFY, b'{"execution": null}', 1)

        await device.publish(START, b'{"clientToken": "t1"}', qos=1)
        started = await next_message(plain)
        assert (str(started.topic), started.payload, started.qos) == (
            START, b'{"clientToken": "t1"}', 1)
    # The certificate's CN became the user name, as AWS IoT binds it to the thing.
    assert f"u'{THING}'" in tls_broker.log_file.read_text()


def tls_alert(broker: Mosquitto, tls: dict[str, Path]) -> str:
    """The reason the broker gives when it refuses this TLS client (an alert)."""
    context = ssl.create_default_context(cafile=tls["ca_file"])
    if "cert_file" in tls:
        context.load_cert_chain(tls["cert_file"], tls["key_file"])
    with pytest.raises(ssl.SSLError) as refused, \
            socket.create_connection((broker.host, broker.tls_port), timeout=3) as raw, \
            context.wrap_socket(raw, server_hostname=broker.host) as conn:
        # TLS 1.3: the client's handshake is done before the server checks its
        # certificate; the refusal is the server's answer to the client's last flight.
        conn.recv(1)
    return refused.value.reason


@pytest.mark.parametrize(("certificate", "alert"), [
    ("none", "TLSV13_ALERT_CERTIFICATE_REQUIRED"), ("another CA", "TLSV1_ALERT_UNKNOWN_CA")])
async def test_a_client_without_a_certificate_of_the_ca_is_refused(
        tls_broker, pki, tmp_path, certificate, alert):
    tls = {"ca_file": pki.ca_file}
    if certificate == "another CA":
        tls["cert_file"], tls["key_file"] = make_pki(tmp_path / "other").client(THING)
    assert await asyncio.to_thread(tls_alert, tls_broker, tls) == alert

    # The device's start fails. aiomqtt (2.5) ignores a connection lost before CONNACK,
    # so under TLS 1.3 that is BrokerLink's connect timeout, not an MqttError.
    config = thing_config(tls_broker, pki, tls=tls, connect_timeout_s=0.5)
    with pytest.raises((aiomqtt.MqttError, TimeoutError)):
        async with link(config):
            pass
    # The broker itself stays up for the thing that has a certificate.
    async with link(thing_config(tls_broker, pki)) as device:
        assert device.connected


async def test_a_persistent_session_over_tls_keeps_qos1_messages_while_offline(
        tls_broker, pki):
    config = thing_config(tls_broker, pki, client_id=f"edged-{THING}-jobs",
                          persistent_session=True)
    async with link(config) as device:
        await device.client.subscribe(NOTIFY, qos=1)
    async with peer(tls_broker) as plain:
        for n in range(3):
            await plain.publish(NOTIFY, f"offline {n}".encode(), qos=1)
    # A new process with the same client id: the broker delivers what it kept, with no
    # subscribe sent on this connection.
    async with link(config) as device:
        got = await taken(device, 3)
    assert [(m.payload, m.qos) for m in got] == [
        (b"offline 0", 1), (b"offline 1", 1), (b"offline 2", 1)]


async def test_a_thing_may_not_subscribe_to_another_things_topics(tls_broker, pki):
    other = "$aws/things/other/jobs/notify-next"
    async with peer(tls_broker) as plain, link(thing_config(tls_broker, pki)) as device:
        granted = [(await device.client.subscribe(topic, qos=1))[0].value
                   for topic in (other, f"$aws/things/{THING}/jobs/#")]
        # mosquitto 2.0.11 grants any subscription and applies acl_file to each message
        # it would deliver; a broker that refuses at once answers 0x80 (failure).
        assert granted[0] in (0x80, 1)
        assert granted[1] == 1
        # Delivered in the order published: once the own message is in, the other one
        # would have been too.
        await plain.publish(other, b"not yours", qos=1)
        await plain.publish(NOTIFY, b"yours", qos=1)
        [got] = await taken(device, 1)
        assert (str(got.topic), got.payload) == (NOTIFY, b"yours")
        assert device.inbox.take(10) == []


async def test_a_thing_may_not_publish_on_another_things_topics(tls_broker, pki):
    # The plain port's anonymous peer sees every thing, as the test jobs service must.
    async with peer(tls_broker, "$aws/things/+/jobs/#") as plain, \
            link(thing_config(tls_broker, pki)) as device:
        # MQTT 3.1.1 has no way to refuse a publish: the broker acknowledges and drops it.
        await device.publish("$aws/things/other/jobs/start-next", b"spoofed", qos=1)
        await device.publish(START, b"mine", qos=1)
        message = await next_message(plain)
        assert (str(message.topic), message.payload) == (START, b"mine")
