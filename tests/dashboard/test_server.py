"""The dashboard's server in process, with a real HTTP client over TCP: what a client
cannot do to the daemon (bad queries, too many streams, a stream that falls behind), the
page and its board stream on a real pipeline, and who may use it (token, login, session
cookie, Host)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.base.metrics import Counters
from edged.config import DashboardSpec
from edged.dashboard.board import TurbineBoard
from edged.dashboard.server import MAX_BODY_BYTES, DashboardServer
from edged.watch.feed import EventFeed
from tests.support.boards import FarmBoard, farm_board
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


# -- on a real pipeline: the page, the board's stream and its filter --------------------


def serve_board(farm: FarmBoard, **spec) -> DashboardServer:
    spec = DashboardSpec(listen="127.0.0.1:0", **spec)
    return DashboardServer(spec, farm.board, farm.feed, farm.counters)


@contextlib.asynccontextmanager
async def broken_farm(turbines: int = 4, **board):
    """A farm of ``turbines`` decided once, turbine-1 vibrating from the start."""
    async with farm_board(turbines, **board) as farm:
        farm.farm.farm.inject(1, "vibration")
        decisions = await farm.decide()
        assert [d.turbine for d in decisions if d.is_anomalous] == ["turbine-1"]
        yield farm


async def sse_lines(response: aiohttp.ClientResponse):
    """A stream's lines without their newline, comments left out."""
    async for line in response.content:
        if not line.startswith(b":"):
            yield line.rstrip(b"\n")


async def next_board(lines) -> dict:
    async for line in lines:
        if line.startswith(b"data: ") and b'"event":"board"' in line:
            return json.loads(line[len(b"data: "):])
    raise AssertionError("the stream ended")


async def test_the_page_names_the_device_its_models_and_the_counts():
    async with broken_farm(device='gw-7 & "co"') as farm, serve_board(farm) as server, \
            aiohttp.ClientSession() as http, http.get(base(server) + "/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert response.headers["Cache-Control"] == "no-store"
        page = await response.text()
    assert "<title>edged · gw-7 &amp; &quot;co&quot;</title>" in page
    assert '<span class="device" id="device">gw-7 &amp; &quot;co&quot;</span>' in page
    assert '<b>turbines</b> <span class="model">windturbine v1</span>' in page
    for state, count in (("turbines", 4), ("ok", 3), ("anomaly", 1), ("stale", 0),
                         ("no_model", 0)):
        assert f'<b data-count="{state}">{count}</b>' in page, state
    assert '<script src="/static/dashboard.js"></script>' in page


async def test_the_static_files_and_nothing_else():
    counters = Counters()
    async with serve(counters) as server, aiohttp.ClientSession() as http:
        for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            async with http.get(f"{base(server)}/static/{name}") as response:
                assert response.status == 200
                assert response.content_type == kind
                assert len(await response.text()) > 1000
        for name in ("other", "dashboard.html", "%2e%2e%2fserver.py", "..%2f__init__.py"):
            async with http.get(f"{base(server)}/static/{name}") as response:
                assert response.status == 404, name
                assert "no static file" in (await response.json())["error"]
    assert counters.get("dashboard_requests_refused", reason="not_found") == 4


async def test_a_stream_with_the_board_sends_it_at_once_then_as_it_moves():
    async with broken_farm() as farm, serve_board(farm) as server, \
            aiohttp.ClientSession() as http, http.get(
                f"{base(server)}/events?board=1&limit=2&focus=turbines/turbine-1") as stream:
        assert stream.status == 200
        lines = sse_lines(stream)
        assert await anext(lines) == b"retry: 2000"
        hello = json.loads((await anext(lines))[len(b"data: "):])
        assert (hello["event"], hello["device"]) == ("hello", "gw-7")
        assert await anext(lines) == b""
        # The board comes next, before any round.
        line = await anext(lines)
        assert line.startswith(b'data: {"event":"board"')
        board = json.loads(line[len(b"data: "):])
        assert [i["turbine"] for i in board["turbines"]["items"]] == ["turbine-0", "turbine-1"]
        assert (board["turbines"]["total"], board["turbines"]["limit"]) == (4, 2)
        focus = board["focus"]
        assert (focus["turbine"], focus["state"]) == ("turbine-1", "anomaly")
        assert [len(v) for v in focus["history"]["errors"].values()] == [1] * 6
        # More rounds move the board: it comes again (at most once a second).
        await farm.decide(3)
        board = await asyncio.wait_for(next_board(lines), 30)
        assert [len(v) for v in board["focus"]["history"]["errors"].values()] == [4] * 6
        assert board["summary"] == {"turbines": 4, "ok": 3, "anomaly": 1, "stale": 0,
                                    "no_model": 0}


async def test_a_bad_board_query_is_400_before_the_stream_starts():
    async with broken_farm() as farm, serve_board(farm) as server, \
            aiohttp.ClientSession() as http:
        for query, named in (("state=broken", "state must be one of ok, anomaly, stale, "
                                              "no_model, not 'broken'"),
                             ("focus=turbine-1", "focus must be PIPELINE/TURBINE"),
                             ("focus=turbines/", "focus must be PIPELINE/TURBINE"),
                             ("offset=-2", "offset must be a whole number"),
                             ("limit=5000", "limit must be from 1 to 1000")):
            async with http.get(f"{base(server)}/events?board=1&{query}") as response:
                assert response.status == 400, query
                assert response.content_type == "application/json"
                assert named in (await response.json())["error"], query
        assert server.feed.subscriptions == 0
    assert farm.counters.get("dashboard_requests_refused", reason="bad_request") == 5


async def test_a_state_filter_pages_its_own_turbines_and_the_summary_counts_all():
    async with broken_farm() as farm, serve_board(farm) as server, \
            aiohttp.ClientSession() as http:
        async def state(query: str) -> dict:
            async with http.get(f"{base(server)}/api/state?{query}") as response:
                assert response.status == 200, query
                return await response.json()

        everyone = {"turbines": 4, "ok": 3, "anomaly": 1, "stale": 0, "no_model": 0}
        page = await state("state=anomaly")
        assert page["summary"] == everyone
        assert page["turbines"]["state"] == "anomaly"
        assert page["turbines"]["total"] == 1
        assert [(i["turbine"], i["state"], i["primary"]) for i in page["turbines"]["items"]
                ] == [("turbine-1", "anomaly", "vibration")]
        page = await state("state=ok&limit=2")
        assert page["turbines"]["total"] == 3
        assert [i["turbine"] for i in page["turbines"]["items"]] == ["turbine-0", "turbine-2"]
        page = await state("state=ok&offset=2&limit=2")
        assert [i["turbine"] for i in page["turbines"]["items"]] == ["turbine-3"]
        page = await state("state=stale")
        assert (page["turbines"]["total"], page["turbines"]["items"]) == (0, [])
        assert page["summary"] == everyone


# -- access: the token, the login, the session cookie, the Host ----------------------------


@pytest.fixture
def token(monkeypatch) -> str:
    monkeypatch.setenv("EDGED_TEST_DASHBOARD_TOKEN", "s3cret-t0ken")
    return "s3cret-t0ken"


def with_token(counters: Counters) -> DashboardServer:
    return serve(counters, token="${EDGED_TEST_DASHBOARD_TOKEN}")


async def test_a_browser_logs_in_with_the_token_and_holds_a_session_cookie(token):
    counters = Counters()
    # The jar keeps cookies for IP addresses when told to (the dashboard at 127.0.0.1).
    jar = aiohttp.CookieJar(unsafe=True)
    async with with_token(counters) as server, aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.get(base(server) + "/", allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/login"
        async with http.get(base(server) + "/login") as response:
            assert response.status == 200 and response.content_type == "text/html"
            form = await response.text()
            assert '<form id="login" class="login" method="post" action="/login">' in form
            assert 'name="token" type="password"' in form
        async with http.get(base(server) + "/static/dashboard.css") as response:
            assert response.status == 200  # the login page is styled
        async with http.get(base(server) + "/static/dashboard.js") as response:
            assert response.status == 401
        assert counters.get("dashboard_requests_refused", reason="unauthorized") == 2

        async with http.post(base(server) + "/login", data={"token": token[:-1]},
                             allow_redirects=False) as response:
            assert response.status == 401
            assert "That is not the token." in await response.text()
        assert counters.get("dashboard_requests_refused", reason="unauthorized") == 3
        assert len(jar) == 0

        async with http.post(base(server) + "/login", data={"token": token},
                             allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/"
            set_cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
        assert "Path=/" in set_cookie
        assert token not in set_cookie  # the cookie holds a MAC of the token
        (cookie,) = jar
        assert cookie.key == "edged_dashboard" and len(cookie.value) == 64

        async with http.get(base(server) + "/api/state") as response:
            assert response.status == 200
        async with http.get(base(server) + "/") as response:
            assert response.status == 200 and "edged · gw-7" in await response.text()
        async with http.get(base(server) + "/events") as stream:
            assert stream.status == 200
            assert await stream.content.readline() == b"retry: 2000\n"
    assert counters.get("dashboard_requests_refused", reason="unauthorized") == 3


async def test_only_the_session_cookie_or_the_bearer_token_open_it(token):
    counters = Counters()
    async with with_token(counters) as server, aiohttp.ClientSession() as http:
        for cookie in (token, "0" * 64, ""):
            async with http.get(base(server) + "/api/state",
                                headers={"Cookie": f"edged_dashboard={cookie}"}) as response:
                assert response.status == 401, cookie
        async with http.get(base(server) + "/api/state",
                            headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200
        # A login body over the bound is refused before it is read.
        async with http.post(base(server) + "/login",
                             data={"token": "x" * MAX_BODY_BYTES}) as response:
            assert response.status == 413
    assert counters.get("dashboard_requests_refused", reason="unauthorized") == 3


async def test_without_a_token_only_ip_addresses_and_localhost_are_served():
    """A DNS-rebinding page reaches the dashboard under its own name: without a token,
    a Host that is a name (other than localhost) is refused, 421, counted."""
    counters = Counters()
    async with serve(counters) as server, aiohttp.ClientSession() as http:
        port = server.address[1]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "127.0.0.1",
                     f"[::1]:{port}", "localhost"):
            async with http.get(base(server) + "/api/state",
                                headers={"Host": host}) as response:
                assert response.status == 200, host
        for host in (f"evil.example:{port}", "evil.example", f"localhost.evil.example:{port}",
                     f"127.0.0.1.nip.io:{port}"):
            async with http.get(base(server) + "/", headers={"Host": host}) as response:
                assert response.status == 421, host
                assert "is a name" in (await response.json())["error"]
        async with http.get(base(server) + "/login", allow_redirects=False) as response:
            assert response.status == 303  # no token: nothing to log in with
    assert counters.get("dashboard_requests_refused", reason="wrong_host") == 4


async def test_with_a_token_a_named_host_is_served_to_who_has_it(token):
    counters = Counters()
    async with with_token(counters) as server, aiohttp.ClientSession() as http:
        host = {"Host": f"dashboard.example:{server.address[1]}"}
        async with http.get(base(server) + "/api/state", headers=host) as response:
            assert response.status == 401
        async with http.get(base(server) + "/api/state", headers={
                **host, "Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200
    assert counters.get("dashboard_requests_refused", reason="wrong_host") == 0


@pytest.mark.fuzz
@given(st.text(max_size=40))
def test_any_host_is_served_or_refused_by_name(host):
    from edged.dashboard.access import Access

    class Request:
        pass

    Request.host = host
    problem = Access(None).host_problem(Request)  # type: ignore[arg-type]
    assert problem is None or problem.startswith("Host ")
    assert Access("t").host_problem(Request) is None  # type: ignore[arg-type]


async def test_credentials_that_are_not_utf8_are_refused_not_a_server_error(token):
    """Header bytes that are not UTF-8 (aiohttp hands them over surrogate-escaped) in
    the Authorization header or the cookie: 401, counted, like any wrong token."""
    counters = Counters()
    async with with_token(counters) as server:
        for header in (b"Authorization: Bearer \xff\xfe", b"Cookie: edged_dashboard=\xff\xfe",
                       b"Authorization: Bearer " + token.encode() + b"\xff"):
            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header
                         + b"\r\nConnection: close\r\n\r\n")
            status = (await reader.readline()).split(b" ")[1]
            writer.close()
            assert status == b"401", header
    assert counters.get("dashboard_requests_refused", reason="unauthorized") == 3


async def test_a_login_that_is_not_a_form_is_400_not_a_server_error(token):
    counters = Counters()
    async with with_token(counters) as server, aiohttp.ClientSession() as http:
        for content_type, body in (
                ("application/x-www-form-urlencoded", b"token=\xff\xfe"),
                ("application/x-www-form-urlencoded; charset=no-such-charset", b"token=x"),
                ("multipart/form-data", b"no boundary"),
                ("multipart/form-data; boundary=x",
                 b'--x\r\nContent-Disposition: form-data; name="token"\r\n\r\n\xff\r\n--x--\r\n')):
            async with http.post(base(server) + "/login", data=body,
                                 headers={"Content-Type": content_type}) as response:
                assert response.status == 400, content_type
                assert "a login is a form with the token" in (await response.json())["error"]
        # Over the body's bound: 413, counted.
        async with http.post(base(server) + "/login", data={"token": "x" * 5000}) as response:
            assert response.status == 413
        # A well-formed form is read: the token is checked.
        form = aiohttp.FormData({"token": token})
        async with http.post(base(server) + "/login", data=form,
                             allow_redirects=False) as response:
            assert response.status == 303
    assert counters.get("dashboard_requests_refused", reason="bad_request") == 5


async def test_requests_aiohttp_cannot_read_are_counted_without_a_traceback(capfd):
    counters = Counters()
    unreadable = (b"GET /api/state?\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                  b"GARBAGE\r\n\r\n",
                  b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n")
    async with serve(counters) as server:
        for raw in unreadable:
            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(raw)
            await writer.drain()
            assert (await reader.read(100)).startswith(b"HTTP/1.0 400"), raw
            writer.close()
        async with aiohttp.ClientSession() as http, \
                http.get(f"{base(server)}/api/state") as response:
            assert response.status == 200  # and it serves on
    assert counters.get("dashboard_requests_refused", reason="bad_request") == 3
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert (out + err).count("dashboard_refused") == 1  # the rest within the rate limit
