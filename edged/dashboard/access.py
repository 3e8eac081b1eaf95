"""Who may use the dashboard: the bearer token (a header for scripts, a session cookie
for a browser, whose EventSource cannot send headers), and, without a token, only
addresses a DNS-rebinding page cannot name (docs/dashboard.md, "Access").

The cookie holds an HMAC of the token, never the token itself; it is HttpOnly and
SameSite=Strict, so another site's page can neither read it nor send it. A control
(POST) must be JSON from the page's own origin: a form on another site can send
neither.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

COOKIE = "edged_dashboard"


class Access:
    """The checks of one dashboard, for its ``token`` (None: no token)."""

    def __init__(self, token: str | None) -> None:
        self.token = None if token is None else token.encode()
        self.session = None if self.token is None else hmac.new(
            self.token, b"edged dashboard session", hashlib.sha256).hexdigest()

    def allows(self, request: web.Request) -> bool:
        """The request carries the token (header) or the session (cookie)."""
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.is_token(given.strip()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(_bytes(cookie), self.session.encode())

    def is_token(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(_bytes(given), self.token)

    def host_problem(self, request: web.Request) -> str | None:
        """Without a token, the Host must be an IP address or ``localhost``: a page
        that rebinds its own name to this address is then refused (with a token it
        could not log in)."""
        if self.token is not None:
            return None
        host = _hostname(request.host)
        if host == "localhost" or _is_ip(host):
            return None
        return (f"Host {request.host[:80]!r} is a name; without a dashboard token only an "
                "IP address or localhost is served (set dashboard.token to use names)")

    def log_in(self, response: web.StreamResponse, secure: bool) -> None:
        assert self.session is not None
        response.set_cookie(COOKIE, self.session, httponly=True, samesite="Strict",
                            path="/", secure=secure)


def same_origin_problem(request: web.Request) -> str | None:
    """Why a control request may come from another site's page; None if it cannot."""
    if request.content_type != "application/json":
        return "a control must be sent as Content-Type: application/json"
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        return f"a control from another origin ({origin[:80]!r}) is refused"
    return None


def _bytes(text: str) -> bytes:
    """A header value's bytes: aiohttp hands bytes that are not UTF-8 over
    surrogate-escaped, which a plain encode() refuses (a 500 instead of a 401)."""
    return text.encode("utf-8", "surrogatepass")


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
