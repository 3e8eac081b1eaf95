"""A device on a metered cloud link, all real parts: mosquitto, a daemon graph run
in-process, a recorder subscribed to what the device publishes, and a TCP forwarder
between device and broker that counts the device's bytes and can cut the link."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import aiomqtt

from edged.mqtt.link import publish_size
from edged.testing import (
    eventually,  # noqa: F401  (the tests import it from here)
    farm_config,
)
from edged.testing import running_graph as daemon  # noqa: F401
from tests.support import MqttPeer, free_port

THING = "turbine-gw-5"

def write_config(tmp: Path, port: int, cloud: str, faults: str = "") -> Path:
    """The daemon's config; ``cloud``: the cloud section's lines after ``broker``."""
    path = tmp / "edged.yaml"
    broker = (f"  broker: {{host: 127.0.0.1, port: {port}, reconnect_min_s: 0.1, "
              "reconnect_max_s: 0.5}")
    path.write_text(farm_config(THING, tmp / "state", faults=faults,
                                extra=f"cloud:\n{broker}\n{cloud}"))
    return path


class Recorder(MqttPeer):
    """Subscribed (QoS 1) to ``topics`` on the broker: every message as it arrived,
    topic and raw payload."""

    def __init__(self, host: str, port: int, topics: list[str]) -> None:
        super().__init__(host, port, topics, identifier="test-recorder")
        self.messages: list[tuple[str, bytes]] = []

    def on(self, topic: str) -> list[bytes]:
        return [payload for t, payload in self.messages if t == topic]

    def bytes_published(self, topic: str | None = None) -> int:
        """What the device was charged for the messages received (QoS 1 each)."""
        return sum(publish_size(t, payload, 1) for t, payload in self.messages
                   if topic is None or t == topic)

    async def handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))


class Forwarder:
    """127.0.0.1:``port`` forwarded to ``target_port``, counting the bytes clients send
    (``upstream``). ``cut()`` closes every connection and refuses new ones, as a lost
    cellular link looks to the device; ``restore()`` serves the port again."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.upstream = 0
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,),
                                           daemon=True, name=f"forward-{self.port}")
        self._accepting.start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._accepting is not None:
            self._accepting.join()
        with self._lock:
            connections, self._connections = self._connections, set()
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> Forwarder:
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(65536):
                if counted:  # before forwarding: once the broker has it, it is counted
                    with self._lock:
                        self.upstream += len(data)
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
