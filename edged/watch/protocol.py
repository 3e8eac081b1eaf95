"""The watch socket's protocol, both ends of it (docs/watch.md).

A client connects to the daemon's Unix socket and sends one request line, a JSON object
``{"decisions": "none" | "anomalies" | "all", "turbine": ID or null}`` (both keys
optional). The daemon answers with newline-delimited JSON: a ``hello`` line, then every
alarm, clear and sensor event (alarm payloads) and the decisions asked for, as they
happen, until either end closes. A request the daemon cannot read is answered with one
``error`` line naming the reason, and the connection closed.

The request comes from any local user allowed on the socket, so it is read under bounds
(:data:`MAX_REQUEST_BYTES`, :data:`REQUEST_TIMEOUT_S`) and refused by reason
(:data:`REQUEST_REASONS`, counted as ``watch_clients_refused{reason}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from edged.base import strict_json
from edged.config import EdgedConfig
from edged.plugin.rows import MAX_TURBINE_ID
from edged.watch.feed import Interest

#: The longest request line, newline included.
MAX_REQUEST_BYTES = 1024
#: How long a client has to send its request after connecting.
REQUEST_TIMEOUT_S = 5.0
#: Why a request is refused: counted as watch_clients_refused{reason}.
REQUEST_REASONS = ("too_large", "timeout", "bad_json", "bad_request", "too_many")
SOCKET_NAME = "watch.sock"


class RequestError(ValueError):
    """A watch request refused; ``reason`` is one of :data:`REQUEST_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class WatchRequest:
    decisions: Interest = "anomalies"
    turbine: str | None = None

    def line(self) -> bytes:
        """The request as a client sends it."""
        # UTF-8 rather than escapes: the longest turbine id fits MAX_REQUEST_BYTES.
        return json.dumps({"decisions": self.decisions, "turbine": self.turbine},
                          ensure_ascii=False).encode() + b"\n"


def parse_request(line: bytes) -> WatchRequest:
    """A request line from a client, or :class:`RequestError` naming why not."""
    if len(line) > MAX_REQUEST_BYTES:
        raise RequestError("too_large", f"{len(line)} bytes > {MAX_REQUEST_BYTES}")
    try:
        body: Any = strict_json.loads(line, max_bytes=MAX_REQUEST_BYTES, max_depth=2)
    except strict_json.JsonError as exc:
        raise RequestError("bad_json", str(exc)) from None
    if not isinstance(body, dict):
        raise RequestError("bad_request", f"expected an object, got {type(body).__name__}")
    unknown = sorted(set(body) - {"decisions", "turbine"})
    if unknown:
        raise RequestError("bad_request", f"unknown key {unknown[0][:40]!r}")
    decisions = body.get("decisions", "anomalies")
    if decisions not in get_args(Interest):
        raise RequestError("bad_request", f"decisions must be one of {get_args(Interest)}, "
                           f"got {str(decisions)[:40]!r}")
    turbine = body.get("turbine")
    if turbine is not None and not (isinstance(turbine, str)
                                    and 0 < len(turbine) <= MAX_TURBINE_ID):
        raise RequestError("bad_request", f"turbine must be an id of 1 to {MAX_TURBINE_ID} "
                           "characters, or null")
    return WatchRequest(decisions, turbine)


def socket_path_of(state_dir: Path, socket: Path | None) -> Path:
    """The watch socket: ``watch.socket`` if set, else ``<state_dir>/watch.sock``. The
    daemon (:func:`socket_path`) and ``edged watch`` (from the raw file) both ask here."""
    return socket or state_dir / SOCKET_NAME


def socket_path(config: EdgedConfig) -> Path:
    """Where a daemon of ``config`` serves its watch socket."""
    return socket_path_of(config.state_dir, config.raw.watch.socket)
