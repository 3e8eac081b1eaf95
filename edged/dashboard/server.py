"""The dashboard's HTTP server (``dashboard: {listen: 127.0.0.1:8088}``; docs/dashboard.md):
the page (``GET /``), ``GET /api/state`` (the board, paged), ``GET /events`` (the event
feed, and the board once a second, as Server-Sent Events) and the simulator's controls
(``POST /api/simulator/SOURCE/TURBINE``), on aiohttp, the optional extra
``edged[dashboard]``.

A graph component like the watch socket: a port it cannot bind disables it, never the
daemon; a reload ends every stream and the browser's EventSource connects again. Nothing
a client does reaches detection: pages are bounded (:data:`MAX_PAGE` turbines), at most
``max_clients`` streams run at once (503 beyond), a stream that falls ``queue``
events behind is dropped (:mod:`edged.watch.feed`), and a stream's board is built at
most once a second, on the loop between rounds. Who may ask is
:mod:`edged.dashboard.access`'s to say.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from importlib.resources import files

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.base.tasks import cancel_all
from edged.config import DashboardSpec, split_listen
from edged.dashboard.access import Access, same_origin_problem
from edged.dashboard.board import DEFAULT_PAGE, PageError, TurbineBoard
from edged.dashboard.controls import MAX_CONTROL_BYTES, farm_status, parse_control
from edged.dashboard.page import dashboard_page, login_page
from edged.watch.feed import EventFeed, FeedFull, Interest, Overflowed, Subscription
from edged.watch.records import error_record, hello_record

log = structlog.get_logger("edged.dashboard")

#: Why a request was refused, as counted under dashboard_requests_refused{reason}.
REFUSE_REASONS = ("unauthorized", "bad_request", "too_many", "wrong_host", "not_found")
#: What ended a stream, as counted under dashboard_clients_dropped{reason}.
DROP_REASONS = ("too_slow",)
#: A stream with nothing to say sends a comment this often, so a client that went away
#: is noticed (its write fails) and a proxy does not time the stream out.
KEEPALIVE_S = 15.0
#: A stream with ``board`` gets the board at most this often (when it changed).
BOARD_EVERY_S = 1.0
#: Longest query string read; the parameters are a few short numbers and names.
MAX_QUERY_BYTES = 1024
#: Largest request body read: a control or a login is a few dozen bytes.
MAX_BODY_BYTES = 4096
_INTERESTS: tuple[Interest, ...] = ("none", "anomalies", "all")
#: Served without the token: the login page, and what it is styled with.
_PUBLIC = ("/login", "/static/dashboard.css")
_STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
_NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True, slots=True)
class BoardQuery:
    """Which page of the board a request wants: ``offset``, ``limit``, turbines in
    ``state`` only, and the ``focus`` turbine (pipeline, name) with its history."""

    offset: int = 0
    limit: int = DEFAULT_PAGE
    state: str | None = None
    focus: tuple[str, str] | None = None

    @classmethod
    def of(cls, request: web.Request) -> BoardQuery:
        focus = request.query.get("focus") or None
        pipeline, slash, turbine = (focus or "").partition("/")
        if focus is not None and not (slash and pipeline and turbine):
            raise PageError(f"focus must be PIPELINE/TURBINE, not {focus[:40]!r}")
        return cls(_integer(request, "offset", 0), _integer(request, "limit", DEFAULT_PAGE),
                   request.query.get("state") or None,
                   (pipeline, turbine) if focus else None)

    def read(self, board: TurbineBoard) -> dict:
        return board.state(time.monotonic(), self.offset, self.limit, self.state, self.focus)


@functools.cache
def _static_text(name: str) -> str:
    """A file of ``static/`` (one of _STATIC), read from the package once."""
    return files("edged.dashboard").joinpath("static", name).read_text()


def _json(document: object) -> bytes:
    # The board's sparklines are float32 arrays, written by orjson in C.
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


class _ServerLog:
    """What aiohttp logs about requests (given to it as its ``logger``). A request it
    could not read (a bad request line, header or chunk) is the client's doing: counted
    as ``bad_request`` and logged in one line at a limited rate, never a traceback a
    request (anyone who reaches the port could fill the journal with them). Anything
    else is a fault of edged's: logged with its traceback, at a limited rate too."""

    def __init__(self, server: DashboardServer) -> None:
        self.server = server

    def debug(self, message: str, *args: object, exc_info: object = None,
              **kw: object) -> None:
        """aiohttp's notes: a client that went away early (nothing to say), or one
        that spoke no HTTP at all (a bad request like any other)."""
        if isinstance(exc_info, HttpProcessingError):
            self.exception(message, *args, exc_info=exc_info)

    def exception(self, message: str, *args: object, exc_info: object = None,
                  **kw: object) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.server._refused("bad_request", f"unreadable request: "
                                 f"{type(exc_info).__name__} {exc_info.message!s:.100}")
        elif self.server._rate_limit.allow("dashboard_request_failed") is not None:
            log.error("dashboard_request_failed", detail=message % args, exc_info=exc_info)


class DashboardServer:
    """Serves ``board`` and ``feed`` over HTTP while entered."""

    def __init__(self, spec: DashboardSpec, board: TurbineBoard, feed: EventFeed,
                 counters: Counters) -> None:
        self.spec = spec
        self.board = board
        self.feed = feed
        self.counters = counters
        counters.declare("dashboard_requests_refused", {"reason": REFUSE_REASONS})
        counters.declare("dashboard_clients_dropped", {"reason": DROP_REASONS})
        counters.declare("dashboard_controls", {"what": ("running", "fault", "drift")})
        self.access = Access(spec.token.get_secret_value() if spec.token else None)
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Task] = set()
        self._rate_limit = RateLimit()
        #: Where it listens once entered: (host, port), the port the system gave for 0.
        self.address: tuple[str, int] | None = None

    async def __aenter__(self) -> DashboardServer:
        app = web.Application(middlewares=[self._authorize], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/", self._page)
        app.router.add_get("/login", self._login_form)
        app.router.add_post("/login", self._login)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/state", self._state)
        app.router.add_post("/api/simulator/{source}/{turbine}", self._control)
        app.router.add_get("/events", self._events)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               logger=_ServerLog(self))
        await runner.setup()
        host, port = split_listen(self.spec.listen)
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.address = runner.addresses[0][:2]
        log.info("dashboard_listening", host=self.address[0], port=self.address[1],
                 token=self.access.token is not None, max_clients=self.spec.max_clients)
        return self

    async def __aexit__(self, *exc: object) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Streams never end by themselves: ended here, before aiohttp waits for them.
        await cancel_all(list(self._streams))
        await runner.cleanup()

    # -- requests ---------------------------------------------------------------------

    @web.middleware
    async def _authorize(self, request: web.Request, handler) -> web.StreamResponse:
        problem = self.access.host_problem(request)
        if problem is not None:
            self._refused("wrong_host", problem)
            return web.json_response({"error": problem}, status=421)
        if request.path not in _PUBLIC and not self.access.allows(request):
            self._refused("unauthorized", f"{request.path} without the token")
            if request.path == "/":
                raise web.HTTPSeeOther("/login")
            return web.json_response(
                {"error": "this dashboard needs Authorization: Bearer <token>"},
                status=401, headers={"WWW-Authenticate": 'Bearer realm="edged"'})
        if len(request.query_string) > MAX_QUERY_BYTES:
            return self._bad_request(f"a query over {MAX_QUERY_BYTES} bytes")
        return await handler(request)

    async def _page(self, request: web.Request) -> web.Response:
        page = dashboard_page(self.board.state(time.monotonic(), limit=1))
        return web.Response(text=page, content_type="text/html", headers=_NO_STORE)

    async def _login_form(self, request: web.Request) -> web.StreamResponse:
        if self.access.token is None:
            raise web.HTTPSeeOther("/")
        return web.Response(text=login_page(self.board.device), content_type="text/html")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        try:
            form = await request.post()
        except (ValueError, LookupError) as exc:  # bytes not of its charset, no boundary
            return self._bad_request(f"a login is a form with the token ({str(exc)[:80]})")
        except web.HTTPRequestEntityTooLarge:
            self._refused("bad_request", f"a login over {MAX_BODY_BYTES} bytes")
            raise
        if self.access.token is None:
            raise web.HTTPSeeOther("/")
        if not self.access.is_token(str(form.get("token", ""))):
            self._refused("unauthorized", "a login with the wrong token")
            return web.Response(text=login_page(self.board.device, "That is not the token."),
                                content_type="text/html", status=401)
        response = web.HTTPSeeOther("/")
        self.access.log_in(response, secure=request.secure)
        log.info("dashboard_login", peer=request.remote)
        raise response

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = _STATIC.get(name)
        if kind is None:
            return self._not_found(f"no static file {name[:40]!r}")
        return web.Response(text=_static_text(name), content_type=kind,
                            headers={"Cache-Control": "no-cache"})

    async def _state(self, request: web.Request) -> web.Response:
        try:
            state = BoardQuery.of(request).read(self.board)
        except PageError as exc:
            return self._bad_request(str(exc))
        return web.Response(body=_json(state), content_type="application/json")

    async def _control(self, request: web.Request) -> web.Response:
        problem = same_origin_problem(request)
        if problem is not None:
            self._refused("unauthorized", problem)
            return web.json_response({"error": problem}, status=403)
        source, turbine = request.match_info["source"], request.match_info["turbine"]
        control = self.board.controls.get(source)
        if control is None:
            return self._not_found(f"no simulator source {source[:40]!r}")
        if turbine not in control.turbine_ids():
            return self._not_found(f"no turbine {turbine[:60]!r} in source {source!r}")
        try:
            body = await _body(request, MAX_CONTROL_BYTES + 1)
            command = parse_control(body)
            command.apply(control, turbine)
        except ValueError as exc:
            return self._bad_request(f"control of {turbine[:60]}: {exc}")
        log.info("dashboard_control", source=source, turbine=turbine, what=command.what,
                 kind=command.kind or None, on=command.on, peer=request.remote)
        # Spelt out: a label value is one of those declared at 0 for /metrics, as
        # tests/test_counters_declared.py reads from the source.
        self.counters.inc("dashboard_controls", what="running" if command.what == "running"
                          else "fault" if command.what == "fault" else "drift")
        self.board.version += 1
        return web.json_response(farm_status(source, control, turbine))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        decisions = request.query.get("decisions", "anomalies")
        if decisions not in _INTERESTS:
            return self._bad_request(f"decisions must be one of {', '.join(_INTERESTS)}, "
                                     f"not {decisions[:40]!r}")
        turbine = request.query.get("turbine") or None
        board = None
        if request.query.get("board") == "1":
            try:
                board = BoardQuery.of(request)
                first = board.read(self.board)  # checks the query before anything starts
            except PageError as exc:
                return self._bad_request(str(exc))
        try:
            subscription = self.feed.subscribe(decisions, turbine, self.spec.queue)  # type: ignore[arg-type]
        except FeedFull as exc:
            self._refused("too_many", str(exc))
            return web.json_response({"error": f"too many streams: {exc}"}, status=503)
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            subscription.on_overflow = lambda: self._drop(request)
            response = web.StreamResponse(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"})
            await response.prepare(request)
            # A browser's EventSource connects again after a reload ends the stream.
            await response.write(b"retry: 2000\n" + _event(orjson.dumps(hello_record(
                self.feed.device, decisions, turbine))))
            if board is not None:
                await response.write(_event(_json({"event": "board", **first})))
            log.info("dashboard_stream_started", decisions=decisions, turbine=turbine,
                     board=board is not None, streams=self.feed.subscriptions)
            await self._pump(subscription, response, board)
        except ConnectionError:
            pass  # the client went away
        finally:
            self._streams.discard(task)
            subscription.close()
            log.info("dashboard_stream_ended", streams=self.feed.subscriptions)
        return response

    async def _pump(self, subscription: Subscription, response: web.StreamResponse,
                    board: BoardQuery | None) -> None:
        """Feed lines as they come; the board, if asked for, once a second when it
        moved; a keepalive after KEEPALIVE_S of silence."""
        loop = asyncio.get_running_loop()
        waiting: asyncio.Task | None = None
        version, wrote = self.board.version, loop.time()
        next_board = wrote + BOARD_EVERY_S
        try:
            while True:
                waiting = waiting or asyncio.ensure_future(subscription.next_lines())
                wake = wrote + KEEPALIVE_S if board is None else min(
                    wrote + KEEPALIVE_S, next_board)
                done, _ = await asyncio.wait([waiting], timeout=max(0.0, wake - loop.time()))
                if done:
                    lines, waiting = waiting.result(), None
                    await response.write(
                        b"".join(_event(line.rstrip(b"\n")) for line in lines))
                    wrote = loop.time()
                now = loop.time()
                if board is not None and now >= next_board:
                    next_board = now + BOARD_EVERY_S
                    if self.board.version != version:
                        version = self.board.version
                        await response.write(_event(_json(
                            {"event": "board", **board.read(self.board)})))
                        wrote = now
                if now - wrote >= KEEPALIVE_S:
                    await response.write(b": keepalive\n\n")
                    wrote = now
        except Overflowed:
            await response.write(_event(orjson.dumps(error_record(
                "too_slow", "fell behind the feed (dashboard.queue)"))))
        finally:
            if waiting is not None:
                await cancel_all([waiting])

    def _drop(self, request: web.Request) -> None:
        """The stream fell ``queue`` events behind: counted, and its connection ended (a
        client that reads nothing would keep a write waiting for good)."""
        self.counters.inc("dashboard_clients_dropped", reason="too_slow")
        self._rate_limit.warning(log, "dashboard_stream_dropped", reason="too_slow",
                                 queue=self.spec.queue)
        if request.transport is not None:
            request.transport.abort()

    def _not_found(self, detail: str) -> web.Response:
        self._refused("not_found", detail)
        return web.json_response({"error": detail}, status=404)

    def _bad_request(self, detail: str) -> web.Response:
        self._refused("bad_request", detail)
        return web.json_response({"error": detail}, status=400)

    def _refused(self, reason: str, detail: str) -> None:
        self.counters.inc("dashboard_requests_refused", reason=reason)
        self._rate_limit.warning(log, "dashboard_refused", reason=reason, detail=detail)


def _event(data: bytes) -> bytes:
    """One Server-Sent Event: JSON has no raw newline, so one ``data:`` line."""
    return b"data: " + data + b"\n\n"


async def _body(request: web.Request, limit: int) -> bytes:
    """The body, or its first ``limit`` bytes: a read returns what has arrived, so a
    body that comes in parts (TCP segments, chunks) is read until it ends."""
    parts, size = [], 0
    while size < limit and (part := await request.content.read(limit - size)):
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def _integer(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise PageError(f"{name} must be a whole number, not {text[:40]!r}")
    return int(text)
