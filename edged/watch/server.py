"""The watch socket: the event feed served on a local Unix socket to ``edged watch``
(docs/watch.md; the protocol is :mod:`edged.watch.protocol`).

A graph component, entered with the graph (a socket it cannot open disables it, never
the daemon) and left at its shutdown, when every watcher is disconnected; a reload
therefore ends every watch, and ``edged watch`` connects again. The socket is mode 0660:
its owner and group may watch (under systemd: the ``edged`` user and group).

Nothing a watcher does reaches detection: a request is read under bounds, at most
``max_clients`` watch at once, and a watcher that reads too slowly to keep up is
disconnected once ``queue`` lines wait for it (:mod:`edged.watch.feed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import orjson
import structlog

from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.base.tasks import cancel_all
from edged.base.unix_socket import claim_socket_path
from edged.config import WatchSpec
from edged.watch.feed import EventFeed, FeedFull, Overflowed, Subscription
from edged.watch.protocol import (
    MAX_REQUEST_BYTES,
    REQUEST_REASONS,
    REQUEST_TIMEOUT_S,
    RequestError,
    WatchRequest,
    parse_request,
)
from edged.watch.records import error_record, hello_record

log = structlog.get_logger("edged.watch")

SOCKET_MODE = 0o660
#: After a watcher is dropped, how long its last line (the error) may take to leave.
_LINGER_S = 1.0


class WatchServer:
    """Serves ``feed`` on the Unix socket ``path`` while entered."""

    def __init__(self, spec: WatchSpec, path: Path, feed: EventFeed,
                 counters: Counters) -> None:
        self.spec = spec
        self.path = Path(path)
        self.feed = feed
        self.counters = counters
        counters.declare("watch_clients_refused", {"reason": REQUEST_REASONS})
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task] = set()
        self._rate_limit = RateLimit()

    async def __aenter__(self) -> WatchServer:
        if await asyncio.to_thread(claim_socket_path, self.path):
            log.info("stale_socket_removed", path=str(self.path))
        # The request line is read under the stream's limit: a longer one is refused.
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES)
        os.chmod(self.path, SOCKET_MODE)  # owner and group: who may watch
        log.info("watch_listening", socket=str(self.path), max_clients=self.spec.max_clients)
        return self

    async def __aexit__(self, *exc: object) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await cancel_all(list(self._clients))
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._watch(reader, writer)
        except (ConnectionError, BrokenPipeError):
            pass  # the watcher went away
        finally:
            self._clients.discard(task)
            writer.close()

    async def _watch(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            request = await self._request(reader)
        except RequestError as exc:
            self._refuse(writer, exc.reason, exc.detail)
            return
        if request is None:
            return  # connected and left (a probe for a stale socket, say)
        try:
            subscription = self.feed.subscribe(request.decisions, request.turbine,
                                               self.spec.queue)
        except FeedFull as exc:
            self._refuse(writer, "too_many", str(exc))
            return
        try:
            subscription.on_overflow = lambda: self._drop(writer)
            log.info("watch_started", decisions=request.decisions, turbine=request.turbine,
                     watchers=self.feed.subscriptions)
            writer.write(orjson.dumps(hello_record(self.feed.device, request.decisions,
                                                   request.turbine)) + b"\n")
            await _first_done(self._pump(subscription, writer), _hang_up(reader))
        finally:
            subscription.close()
            log.info("watch_ended", watchers=self.feed.subscriptions)

    async def _request(self, reader: asyncio.StreamReader) -> WatchRequest | None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                line = await reader.readline()
        except TimeoutError:
            raise RequestError("timeout", f"no request within {REQUEST_TIMEOUT_S} s") \
                from None
        except (ValueError, asyncio.LimitOverrunError):
            raise RequestError("too_large", f"a request line over {MAX_REQUEST_BYTES} "
                               "bytes") from None
        if not line:
            return None
        return parse_request(line)

    @staticmethod
    async def _pump(subscription: Subscription, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.writelines(await subscription.next_lines())
                await writer.drain()
        except Overflowed:
            return

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        """The watcher fell ``queue`` lines behind: tell it, and hang up."""
        log.warning("watch_dropped", reason="too_slow", queue=self.spec.queue)
        writer.write(orjson.dumps(error_record(
            "too_slow", f"fell {self.spec.queue} lines behind (watch.queue)")) + b"\n")
        writer.close()
        # A watcher that reads nothing more would keep the line (and the connection)
        # for good.
        asyncio.get_running_loop().call_later(_LINGER_S, writer.transport.abort)

    def _refuse(self, writer: asyncio.StreamWriter, reason: str, detail: str) -> None:
        self.counters.inc("watch_clients_refused", reason=reason)
        self._rate_limit.warning(log, "watch_refused", reason=reason, detail=detail)
        writer.write(orjson.dumps(error_record(reason, detail)) + b"\n")


async def _hang_up(reader: asyncio.StreamReader) -> None:
    """Returns when the watcher hangs up (or sends anything more: one request per
    connection)."""
    await reader.read(1)


async def _first_done(*coroutines) -> None:
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        await cancel_all(tasks)
