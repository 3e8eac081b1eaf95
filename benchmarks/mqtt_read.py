"""What reading the turbine bus costs, client by client: CPU per message received.

    .venv/bin/python benchmarks/mqtt_read.py [--turbines 1000] [--seconds 15]
                                             [--clients edged paho awscrt]

``edged simulate`` publishes N turbines at 20 Hz (one CSV row per message) through
mosquitto from CPU 0; a receiver on CPU 1 subscribes to ``turbines/+/raw`` and only
counts what it gets, so the figure is the read path alone (no parsing, no model):

* ``edged``: :class:`edged.mqtt.link.BrokerLink` as the mqtt source uses it (the burst
  reader, the inbox taken in bursts);
* ``paho``: the same link reading through paho and aiomqtt, a message object per message
  and up to 200 packets per readable event (what edged did before issue 20);
* ``awscrt``: the AWS Common Runtime's MQTT 5 client (``awsiotsdk``'s), which parses in C
  and calls Python once per message; only when ``awscrt`` is importable (it is no
  dependency of edged: ``pip install awscrt`` in a scratch environment and put it on
  PYTHONPATH).

Reported per client: messages/s received and CPU microseconds per message (utime + stime
of the receiver process over the window).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.turbine_bus import (  # noqa: E402
    DAEMON_CPU,
    REST_CPU,
    ROOT,
    pinning,
    process_cpu_seconds,
)
from tests.support import Mosquitto  # noqa: E402

TOPIC = "turbines/+/raw"


def receive_edged(port: int, seconds: float, burst_reader: bool = True) -> int:
    import aiomqtt
    import paho.mqtt.client as mqtt

    from edged.base.metrics import Counters
    from edged.mqtt import link as link_module
    from edged.mqtt.link import BrokerConfig, BrokerLink

    if not burst_reader:  # paho reads, as before: up to 200 packets per readable event
        def install(paho, deliver, max_payload=None):
            read_one = paho.loop_read

            def loop_read(max_packets: int = 1):
                for _ in range(200):
                    inbox = link.inbox
                    before = inbox.received
                    rc = read_one(max_packets)
                    if rc != mqtt.MQTT_ERR_SUCCESS or inbox.received == before:
                        return rc
                return rc

            paho.loop_read = loop_read

        link_module.reader.install = install  # type: ignore[assignment]

    link = BrokerLink(BrokerConfig(host="127.0.0.1", port=port), name="bench",
                      device_id="bench", counters=Counters(), kind="source")

    async def main() -> int:
        async def subscribe(client: aiomqtt.Client) -> None:
            await client.subscribe(TOPIC)

        count = 0
        async with link:
            task = asyncio.create_task(link.run(subscribe))
            end = asyncio.get_running_loop().time() + seconds
            while asyncio.get_running_loop().time() < end:
                try:
                    async with asyncio.timeout(0.5):
                        await link.inbox.wait()
                except TimeoutError:
                    continue
                count += len(link.inbox.take(100_000))
            task.cancel()
        return count

    return asyncio.run(main())


def receive_awscrt(port: int, seconds: float) -> int:
    from awscrt import mqtt5

    got: list[tuple[str, bytes]] = []
    connected = threading.Event()

    def on_publish(data: mqtt5.PublishReceivedData) -> None:
        got.append((data.publish_packet.topic, data.publish_packet.payload))

    client = mqtt5.Client(mqtt5.ClientOptions(
        host_name="127.0.0.1", port=port,
        connect_options=mqtt5.ConnectPacket(client_id="bench-awscrt"),
        on_publish_callback_fn=on_publish,
        on_lifecycle_event_connection_success_fn=lambda _: connected.set()))
    client.start()
    connected.wait(10)
    client.subscribe(mqtt5.SubscribePacket([mqtt5.Subscription(TOPIC)])).result(10)
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        time.sleep(0.05)
        taken, got[:] = len(got), []
        count += taken
    client.stop()
    return count


def child(client: str, port: int, seconds: float) -> None:
    receive = {"edged": receive_edged, "awscrt": receive_awscrt,
               "paho": lambda p, s: receive_edged(p, s, burst_reader=False)}[client]
    print(receive(port, seconds), flush=True)


def measure(client: str, turbines: int, seconds: float, pin: bool) -> dict:
    warm = 5.0
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as broker:
        prefix = ["taskset", "-c", str(DAEMON_CPU)] if pin else []
        receiver = subprocess.Popen(
            [*prefix, sys.executable, __file__, "--child", client, "--port",
             str(broker.port), "--seconds", str(seconds + warm + 2)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        time.sleep(2)  # subscribed
        publisher = subprocess.Popen(
            [sys.executable, "-m", "edged", "simulate", "--broker", broker.address,
             "--turbines", str(turbines), "--rate", "20", "--format", "csv",
             "--duration", str(seconds + warm + 4), "--control-topic", "", "--seed", "3"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(warm)
        cpu0, t0 = process_cpu_seconds(receiver.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = process_cpu_seconds(receiver.pid), time.monotonic()
        received = int(receiver.communicate(timeout=60)[0].split()[-1])
        publisher.wait(timeout=60)
    rate = turbines * 20.0
    cpu = (cpu1 - cpu0) / (t1 - t0)
    return {"client": client, "received": received, "cpu": cpu, "us_per_message": cpu / rate * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turbines", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", nargs="+", default=["edged", "paho", "awscrt"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.port, args.seconds)
        return 0
    why_not = pinning()
    if why_not is None:
        os.sched_setaffinity(0, {REST_CPU})
    print(f"{args.turbines} turbines x 20 Hz = {args.turbines * 20} messages/s; "
          + ("receiver on CPU 1, broker and publisher on CPU 0" if why_not is None
             else f"NOT pinned: {why_not}"))
    print(f"{'client':>8} {'received':>9} {'CPU':>5} {'us/message':>10}")
    for client in args.clients:
        if client == "awscrt":
            try:
                import awscrt  # noqa: F401
            except ImportError:
                print(f"{client:>8}  not installed (pip install awscrt, on PYTHONPATH)")
                continue
        r = measure(client, args.turbines, args.seconds, why_not is None)
        print(f"{r['client']:>8} {r['received']:>9} {r['cpu']:>5.2f} "
              f"{r['us_per_message']:>10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
