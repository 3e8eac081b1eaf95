"""The dashboard's server in process, with a real HTTP client over TCP: what a client
cannot do to the daemon (bad queries, too many streams, a stream that falls behind)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.base.metrics import Counters
from edged.config import DashboardSpec
from edged.dashboard.board import TurbineBoard
from edged.dashboard.server import DashboardServer
from edged.watch.feed import EventFeed
from tests.support.payloads import FEATURES, THRESHOLDS, decision
from tests.support.rounds import round_of


def serve(counters: Counters, **spec) -> DashboardServer:
    spec = DashboardSpec(listen="127.0.0.1:0", **spec)
    feed = EventFeed("gw-7", counters, spec.max_clients)
    return DashboardServer(spec, TurbineBoard("gw-7", {}), feed, counters)


def base(server: DashboardServer) -> str:
    return f"http://127.0.0.1:{server.address[1]}"


async def test_bad_queries_are_refused_by_name_and_counted():
    counters = Counters()
    async with serve(counters) as server, aiohttp.ClientSession() as http:
        for query, named in (("offset=-1", "offset"), ("limit=0", "limit"),
                             ("limit=1001", "limit"), ("offset=x", "offset"),
                             ("limit=" + "9" * 2000, "query")):
            async with http.get(f"{base(server)}/api/state?{query}") as response:
                assert response.status == 400, query
                assert named in (await response.json())["error"], query
        async with http.get(f"{base(server)}/events?decisions=some") as response:
            assert response.status == 400
        async with http.get(f"{base(server)}/api/state?limit=1000") as response:
            assert response.status == 200
            assert (await response.json())["turbines"]["total"] == 0
    assert counters.get("dashboard_requests_refused", reason="bad_request") == 6


async def test_streams_beyond_max_clients_get_503():
    counters = Counters()
    async with serve(counters, max_clients=1) as server, aiohttp.ClientSession() as http, \
            http.get(f"{base(server)}/events") as first:
        assert first.status == 200
        await first.content.readline()  # the hello: subscribed
        async with http.get(f"{base(server)}/events") as second:
            assert second.status == 503
    assert counters.get("dashboard_requests_refused", reason="too_many") == 1


async def test_a_stream_that_falls_behind_is_dropped_and_counted():
    counters = Counters()
    async with serve(counters, queue=10) as server, aiohttp.ClientSession() as http, \
            http.get(f"{base(server)}/events?decisions=all") as stream:
        assert await stream.content.readline() == b"retry: 2000\n"
        assert (await stream.content.readline()).startswith(b"data: ")
        # More lines in one round than the stream may fall behind: dropped at once.
        server.feed.on_round(round_of([decision(f"turbine-{i}") for i in range(20)],
                                      FEATURES, THRESHOLDS))
        assert server.feed.subscriptions == 0
        # Its connection is cut (a client that reads nothing would hold a write).
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(stream.content.read(), 10)
    assert counters.get("dashboard_clients_dropped", reason="too_slow") == 1
    assert counters.get("watch_clients_dropped", reason="too_slow") == 1


async def test_a_token_is_needed_for_every_path_when_set(monkeypatch):
    monkeypatch.setenv("EDGED_TEST_DASHBOARD_TOKEN", "t0ken")
    counters = Counters()
    async with serve(counters, token="${EDGED_TEST_DASHBOARD_TOKEN}") as server, \
            aiohttp.ClientSession() as http:
        for path in ("/api/state", "/events", "/nowhere"):
            async with http.get(base(server) + path,
                                headers={"Authorization": "Bearer t0ke"}) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(f"{base(server)}/api/state",
                            headers={"Authorization": "bearer t0ken"}) as response:
            assert response.status == 200
    assert counters.get("dashboard_requests_refused", reason="unauthorized") == 3


@pytest.mark.fuzz
@given(st.text(max_size=30))
def test_any_page_query_is_a_page_or_a_named_refusal(text):
    from edged.dashboard.board import PageError
    from edged.dashboard.server import _integer

    class Request:
        query = {"offset": text}

    board = TurbineBoard("gw-7", {})
    try:
        page = board.state(0.0, _integer(Request, "offset", 0))  # type: ignore[arg-type]
    except PageError as exc:
        assert "offset" in str(exc)
    else:
        assert page["turbines"]["offset"] == int(text)
