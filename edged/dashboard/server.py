"""The dashboard's HTTP server (``dashboard: {listen: 127.0.0.1:8088}``; docs/dashboard.md):
``GET /api/state`` (the board, paged) and ``GET /events`` (the event feed as Server-Sent
Events), on aiohttp, the optional extra ``edged[dashboard]``.

A graph component like the watch socket: a port it cannot bind disables it, never the
daemon; a reload ends every stream and the browser's EventSource connects again. Nothing
a client does reaches detection: pages are bounded (:data:`MAX_PAGE` turbines), at most
``max_clients`` streams run at once (503 beyond), and a stream that falls ``queue``
events behind is dropped (:mod:`edged.watch.feed`). With a ``token`` every request needs
``Authorization: Bearer <token>``, compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import time

import orjson
import structlog
from aiohttp import web

from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.base.tasks import cancel_all
from edged.config import DashboardSpec, split_listen
from edged.dashboard.board import DEFAULT_PAGE, PageError, TurbineBoard
from edged.watch.feed import EventFeed, FeedFull, Interest, Overflowed, Subscription
from edged.watch.records import error_record, hello_record

log = structlog.get_logger("edged.dashboard")

#: Why a request was refused, as counted under dashboard_requests_refused{reason}.
REFUSE_REASONS = ("unauthorized", "bad_request", "too_many")
#: What ended a stream, as counted under dashboard_clients_dropped{reason}.
DROP_REASONS = ("too_slow",)
#: A stream with nothing to say sends a comment this often, so a client that went away
#: is noticed (its write fails) and a proxy does not time the stream out.
KEEPALIVE_S = 15.0
#: Longest query string read; the parameters are a few short numbers and names.
MAX_QUERY_BYTES = 1024
_INTERESTS: tuple[Interest, ...] = ("none", "anomalies", "all")


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
        token = spec.token.get_secret_value() if spec.token is not None else None
        self._token = None if token is None else token.encode()
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Task] = set()
        self._rate_limit = RateLimit()
        #: Where it listens once entered: (host, port), the port the system gave for 0.
        self.address: tuple[str, int] | None = None

    async def __aenter__(self) -> DashboardServer:
        app = web.Application(middlewares=[self._authorize])
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/events", self._events)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
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
                 token=self._token is not None, max_clients=self.spec.max_clients)
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
        if self._token is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    given.strip().encode(), self._token):
                self._refused("unauthorized", f"{request.path} without the bearer token")
                return web.json_response(
                    {"error": "this dashboard needs Authorization: Bearer <token>"},
                    status=401, headers={"WWW-Authenticate": 'Bearer realm="edged"'})
        if len(request.query_string) > MAX_QUERY_BYTES:
            return self._bad_request(f"a query over {MAX_QUERY_BYTES} bytes")
        return await handler(request)

    async def _state(self, request: web.Request) -> web.Response:
        try:
            offset = _integer(request, "offset", 0)
            limit = _integer(request, "limit", DEFAULT_PAGE)
            state = self.board.state(time.monotonic(), offset, limit)
        except PageError as exc:
            return self._bad_request(str(exc))
        return web.Response(body=orjson.dumps(state), content_type="application/json")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        decisions = request.query.get("decisions", "anomalies")
        if decisions not in _INTERESTS:
            return self._bad_request(f"decisions must be one of {', '.join(_INTERESTS)}, "
                                     f"not {decisions[:40]!r}")
        turbine = request.query.get("turbine") or None
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
            await response.write(_event(orjson.dumps(hello_record(
                self.feed.device, decisions, turbine))))
            log.info("dashboard_stream_started", decisions=decisions, turbine=turbine,
                     streams=self.feed.subscriptions)
            await self._pump(subscription, response)
        except ConnectionError:
            pass  # the client went away
        finally:
            self._streams.discard(task)
            subscription.close()
            log.info("dashboard_stream_ended", streams=self.feed.subscriptions)
        return response

    @staticmethod
    async def _pump(subscription: Subscription, response: web.StreamResponse) -> None:
        waiting: asyncio.Task | None = None
        try:
            while True:
                waiting = waiting or asyncio.ensure_future(subscription.next_lines())
                done, _ = await asyncio.wait([waiting], timeout=KEEPALIVE_S)
                if not done:
                    await response.write(b": keepalive\n\n")
                    continue
                lines, waiting = waiting.result(), None
                await response.write(b"".join(_event(line.rstrip(b"\n")) for line in lines))
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

    def _bad_request(self, detail: str) -> web.Response:
        self._refused("bad_request", detail)
        return web.json_response({"error": detail}, status=400)

    def _refused(self, reason: str, detail: str) -> None:
        self.counters.inc("dashboard_requests_refused", reason=reason)
        self._rate_limit.warning(log, "dashboard_refused", reason=reason, detail=detail)


def _event(data: bytes) -> bytes:
    """One Server-Sent Event: JSON has no raw newline, so one ``data:`` line."""
    return b"data: " + data + b"\n\n"


def _integer(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise PageError(f"{name} must be a whole number, not {text[:40]!r}")
    return int(text)
