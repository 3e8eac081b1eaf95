"""The watch socket in process, with real Unix-socket clients: the protocol, and what a
client cannot do to the daemon (refused requests, too many, too slow)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from pathlib import Path

import pytest

from edged.base.metrics import Counters
from edged.config import WatchSpec
from edged.watch.feed import EventFeed
from edged.watch.protocol import WatchRequest
from edged.watch.server import WatchServer
from tests.support.payloads import FEATURES, THRESHOLDS, assert_valid, decision, tracked_events
from tests.support.rounds import round_of


def serve(tmp_path: Path, counters: Counters | None = None, **spec) -> WatchServer:
    counters = counters or Counters()
    spec = WatchSpec(**spec)
    feed = EventFeed("gw-7", counters, spec.max_clients)
    return WatchServer(spec, tmp_path / "state" / "watch.sock", feed, counters)


async def connect(server: WatchServer, request: bytes | None = None):
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    writer.write(WatchRequest().line() if request is None else request)
    await writer.drain()
    return reader, writer


async def read_record(reader: asyncio.StreamReader) -> dict:
    line = await asyncio.wait_for(reader.readline(), 5)
    assert line.endswith(b"\n"), line
    return json.loads(line)


async def until(predicate, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110  (a condition on any state, polled)
            await asyncio.sleep(0.01)


async def test_a_watch_gets_hello_then_events_and_decisions_as_they_happen(tmp_path):
    async with serve(tmp_path) as server:
        mode = stat.S_IMODE(os.stat(server.path).st_mode)
        assert stat.S_ISSOCK(os.stat(server.path).st_mode) and mode == 0o660
        reader, writer = await connect(server, WatchRequest("all", "turbine-2").line())
        hello = await read_record(reader)
        assert hello["event"] == "hello" and (hello["decisions"], hello["turbine"]) == (
            "all", "turbine-2")
        await until(lambda: server.feed.subscriptions == 1)
        server.feed.on_round(round_of([decision("turbine-1"), decision("turbine-2")],
                                      FEATURES, THRESHOLDS))
        alarm = tracked_events()[0]
        server.feed.on_actuator_event(alarm)
        got = [hello, await read_record(reader), await read_record(reader)]
        assert [(r["event"], r.get("turbine")) for r in got[1:]] == [
            ("decision", "turbine-2"), ("alarm", "turbine-2")]
        for record in got:
            assert_valid(record)
        writer.close()
        # A watcher that hangs up leaves the feed.
        await until(lambda: server.feed.subscriptions == 0)
    assert not server.path.exists()


@pytest.mark.parametrize(("request_line", "reason"), [
    (b'{"decisions": "some"}\n', "bad_request"),
    (b'{"turbine": ""}\n', "bad_request"),
    (b'{"decision": "all"}\n', "bad_request"),
    (b"[1, 2]\n", "bad_request"),
    (b"hello\n", "bad_json"),
    (b'{"turbine": "' + b"x" * 2000 + b'"}\n', "too_large"),
], ids=["unknown mode", "empty turbine", "unknown key", "not an object", "not json",
        "too long"])
async def test_a_request_it_cannot_read_is_refused_with_the_reason(tmp_path, request_line,
                                                                   reason):
    counters = Counters()
    async with serve(tmp_path, counters) as server:
        reader, writer = await connect(server, request_line)
        refused = await read_record(reader)
        assert_valid(refused)
        assert (refused["event"], refused["reason"]) == ("error", reason)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and hung up
        writer.close()
        assert counters.get("watch_clients_refused", reason=reason) == 1
        assert server.feed.subscriptions == 0


async def test_no_more_than_max_clients(tmp_path):
    counters = Counters()
    async with serve(tmp_path, counters, max_clients=2) as server:
        watchers = [await connect(server) for _ in range(2)]
        for reader, _ in watchers:
            assert (await read_record(reader))["event"] == "hello"
        reader, writer = await connect(server)
        refused = await read_record(reader)
        assert (refused["event"], refused["reason"]) == ("error", "too_many")
        assert counters.get("watch_clients_refused", reason="too_many") == 1
        for _, w in [*watchers, (reader, writer)]:
            w.close()


async def test_a_watcher_that_does_not_read_is_dropped_and_the_rest_go_on(tmp_path):
    counters = Counters()
    async with serve(tmp_path, counters, queue=10) as server:
        # A raw socket with the smallest buffer, that asks for everything and never reads.
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        stuck.connect(str(server.path))
        stuck.sendall(WatchRequest("all").line())
        reader, writer = await connect(server, WatchRequest("all").line())
        await read_record(reader)
        await until(lambda: server.feed.subscriptions == 2)
        rounds = 0
        # Every round is published without waiting, as the decision path would; the
        # healthy watcher reads along (a round must fit in `queue` lines).
        while counters.get("watch_clients_dropped", reason="too_slow") == 0:
            server.feed.on_round(round_of([decision(f"t{i}") for i in range(5)],
                                          FEATURES, THRESHOLDS))
            rounds += 1
            assert rounds < 20_000, "the stuck watcher was never dropped"
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), 0.001)
                except TimeoutError:
                    break
                assert line, "the healthy watcher was hung up on"
        assert server.feed.subscriptions == 1
        server.feed.on_round(round_of([decision("t-after")], FEATURES, THRESHOLDS))
        async with asyncio.timeout(5):
            while (await read_record(reader))["turbine"] != "t-after":
                pass
        # The stuck one is hung up on (told why, if it reads within a second).
        stuck.setblocking(False)
        await asyncio.sleep(1.5)  # past the linger: its connection is gone
        data = b""
        while True:
            try:
                chunk = stuck.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.05)
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        stuck.close()
        writer.close()
    # It got what fitted in the buffers, then the connection ended.
    assert data.startswith(b'{"schema":1,"event":"hello"')
    assert counters.get("watch_clients_dropped", reason="too_slow") == 1


async def test_a_stale_socket_is_replaced_and_a_live_one_refused(tmp_path):
    path = tmp_path / "state" / "watch.sock"
    path.parent.mkdir()
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(path))
    left.close()  # a crash leaves the file, nobody listening
    async with serve(tmp_path) as server:
        reader, writer = await connect(server)
        assert (await read_record(reader))["event"] == "hello"
        with pytest.raises(FileExistsError, match="another process is serving"):
            async with serve(tmp_path):
                pass
        writer.close()
    path.write_text("not a socket")
    with pytest.raises(FileExistsError, match="not a socket"):
        async with serve(tmp_path):
            pass


async def test_leaving_disconnects_every_watcher(tmp_path):
    server = serve(tmp_path)
    async with server:
        reader, writer = await connect(server)
        await read_record(reader)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
